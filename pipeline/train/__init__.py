"""The two trainers whose models the job embeds with.

- `text` (`train-text`): the Embedding-layer text model, trained on labelled records (sentiment is
  the reference task); the job pools its word vectors per record. Its layer names are the contract
  defined in `transforms.embed.models`.
- `image` (`train-image`): a transfer-learned image classifier whose `embedding` layer the job cuts
  at; its base network is built by `transforms.embed.models.build_base_network`, as the job builds one.
- `common`: what both share (flag checks, saving the model and its `MODEL.training.json` report).
"""
