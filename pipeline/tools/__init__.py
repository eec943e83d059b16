"""Commands that read a finished run's embeddings (or a text model's word vectors): search, evaluate, visualise.

One module per command, each exposing `add_arguments(parser)` and `main_from_args(args) -> int`
for `pipeline.cli` (0, or a `transforms.errors.UserError` raised for `pipeline.cli.exit_status`):

- `neighbors` (`neighbors`): nearest neighbours of an id, a text or an image, streamed over the Parquet output.
- `index` (`build-index`): a FAISS index of a run's embeddings, which `neighbors` then uses.
- `evaluate` (`evaluate`): leave-one-out precision@k and a linear probe against a label column.
- `projector` (`export-projector`): TensorBoard Embedding Projector files and a 2-D PCA plot.
- `word_vectors` (`export-word-vectors`) and `similar_words` (`similar-words`): the text model's word vectors.

Each declares its flags in a `FLAGS` table (`pipeline.command_flags.CommandFlag`); `report` (`report`) too.
Shared pieces: `store` (streaming a run's Parquet), `knn` (cosine top-k arithmetic), `flags` (the flags
the tools share, declared once), `common`.
"""

__all__ = ["TOOL_COMMANDS"]

# command -> (module, one-line help), in the shape of `pipeline.cli.COMMANDS`.
TOOL_COMMANDS = {
    "neighbors": ("pipeline.tools.neighbors", "Nearest neighbours (cosine) of an id, a text or an image in a run's embeddings."),
    "build-index": ("pipeline.tools.index", "Build a FAISS index of a run's embeddings for `neighbors`."),
    "evaluate": ("pipeline.tools.evaluate", "Leave-one-out kNN precision@1/@k and a linear probe against a label column."),
    "export-projector": ("pipeline.tools.projector", "Export TensorBoard Embedding Projector files and a 2-D PCA plot (PNG)."),
    "export-word-vectors": ("pipeline.tools.word_vectors", "Write a text model's word vectors (Embedding layer) to Parquet."),
    "similar-words": ("pipeline.tools.similar_words", "Words closest (cosine) to a word in a text model's Embedding layer."),
}
