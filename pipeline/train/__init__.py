"""The two trainers whose models the job embeds with.

- `text` (`train-text`): the Embedding-layer text model, trained on labelled records (sentiment is
  the reference task); the job pools its word vectors per record.
- `image` (`train-image`): a transfer-learned image classifier whose `embedding` layer the job cuts at.
"""
