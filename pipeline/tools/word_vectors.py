"""Word vectors of a `train-text` model, and the `export-word-vectors` command.

A text model's `embedding` layer holds one learnt vector per token of its `vectorize`
(TextVectorization) vocabulary (the layer names of `transforms.embed.models`' text-model contract): row i is the vector of vocabulary entry i. Row 0 is the padding
token (masked, never learnt) and is left out; row 1 is `[UNK]`, the vector shared by every word
outside the vocabulary. Rows past the end of the vocabulary (when `--vocab-size` was larger than
the words seen) are never used and are left out too.

The vocabulary size is reported the same way everywhere (`train-text`'s report, `export-word-vectors`,
`similar-words`): `words`, the vocabulary entries without padding and `[UNK]` (`word_count`).

A model trained with `train-text --ngrams 2` also has a vector per pair of adjacent words, a
vocabulary entry holding a space ("the movie", `is_pair`). They are not words: `WordVectors`
tells them apart (`word_rows`, `pairs`), and every word-vector tool uses words only: `export-word-vectors`
leaves the pairs out and says how many (the word2vec text format could not hold a token with a
space anyway), `similar-words` never answers a pair, `evaluate --word-similarity` looks up words only.
`words` counts the words, not the pairs.

`export-word-vectors` writes them as Parquet: `token` (string), `index` (int32, the token's id
in the model, i.e. its row of the Embedding weights) and `vector` (fixed_size_list<float32>[d]);
with pairs left out, the indices have gaps (they stay the model's own ids).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.command_flags import add_flags
from pipeline.tools.common import ToolError, format_fields, print_json, write_bytes
from pipeline.tools.flags import TEXT_MODEL_FLAG, UNSAFE_MODEL_LOADING_FLAG, json_flag, output_flag

__all__ = [
    "PADDING_INDEX",
    "OOV_INDEX",
    "WordVectors",
    "word_count",
    "is_pair",
    "word_rows",
    "load_word_vectors",
    "word_vector_schema",
    "word_vector_table",
    "FLAGS",
    "add_arguments",
    "main_from_args",
]

PADDING_INDEX = 0
OOV_INDEX = 1
PAIR_SEPARATOR = " "  # TextVectorization's ngram separator; a word never holds one (the split is on whitespace)


def word_count(vocabulary_size: int) -> int:
    """The vocabulary's words: its entries (a TextVectorization `vocabulary_size()`) less padding and [UNK]."""
    return max(int(vocabulary_size) - 2, 0)


def is_pair(token: str) -> bool:
    """Whether a vocabulary entry is a pair of words (`train-text --ngrams 2`), not a word."""
    return PAIR_SEPARATOR in token


def word_rows(vocabulary: Sequence[str]) -> np.ndarray:
    """(len(vocabulary),) bool: the entries that are words (padding, [UNK] and pairs are not)."""
    rows = np.asarray([not is_pair(str(token)) for token in vocabulary], dtype=bool)
    rows[: OOV_INDEX + 1] = False
    return rows


@dataclasses.dataclass(frozen=True)
class WordVectors:
    """A text model's vocabulary and the matching rows of its Embedding weights."""

    model_path: str
    model_sha256: str
    vocabulary: list[str]  # index -> token, padding ("") and "[UNK]" included
    vectors: np.ndarray  # (len(vocabulary), d) float32: row i is token i
    vectorize: object  # the model's TextVectorization layer, to tokenise a query word the same way

    @property
    def words(self) -> int:
        """How many words the vocabulary holds, padding, [UNK] and pairs left out (`word_count`)."""
        return word_count(len(self.vocabulary)) - self.pairs

    @property
    def pairs(self) -> int:
        """How many entries are pairs of words (`--ngrams 2` models; 0 otherwise)."""
        return sum(is_pair(token) for token in self.vocabulary)

    @property
    def word_rows(self) -> np.ndarray:
        """(len(vocabulary),) bool: the rows that are words (`word_rows`)."""
        return word_rows(self.vocabulary)

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def token_ids(self, text: str) -> list[int]:
        """The ids the model gives the words of `text` (after its own standardisation), padding dropped;
        the words only with an `--ngrams 2` model (its layer gives the n words, then the n - 1 pairs)."""
        import tensorflow as tf

        ids = np.asarray(self.vectorize(tf.constant([text]))).reshape(-1)
        ids = [int(i) for i in ids if i != PADDING_INDEX]
        if getattr(self.vectorize, "get_config", dict)().get("ngrams") == 2:
            ids = ids[: (len(ids) + 1) // 2]
        return ids


def _contract_layer(model, name: str):
    """The text model's layer called `name` by the contract (transforms.embed.models), or a ToolError."""
    from transforms.embed.models import TEXT_MODEL_LAYER_TYPES, text_model_layer

    layer = text_model_layer(model, name)
    if layer is None:
        raise ToolError(f"--text-model: the model has no {TEXT_MODEL_LAYER_TYPES[name]} layer (looked for one named {name!r})")
    return layer


def load_word_vectors(model_path: str, unsafe: bool = False) -> WordVectors:
    """The vocabulary and word vectors of a `train-text` model (local or gs://)."""
    from transforms.embed.models import TEXT_VECTORIZE_LAYER, WORD_EMBEDDING_LAYER, TextModelSpec, load_text_embedder

    embedder = load_text_embedder(TextModelSpec(model_path, batch_size=1, unsafe_loading=unsafe))
    model = embedder.full_model
    vectorize = _contract_layer(model, TEXT_VECTORIZE_LAYER)
    embedding = _contract_layer(model, WORD_EMBEDDING_LAYER)
    vocabulary = [str(t) for t in vectorize.get_vocabulary()]
    weights = np.asarray(embedding.embeddings.numpy(), dtype=np.float32)
    rows = min(len(vocabulary), weights.shape[0])
    return WordVectors(model_path, embedder.model_sha256, vocabulary[:rows], weights[:rows], vectorize)


def word_vector_schema(dimension: int, metadata: dict | None = None) -> pa.Schema:
    """The Parquet schema of exported word vectors."""
    return pa.schema(
        [
            pa.field("token", pa.string(), nullable=False),
            pa.field("index", pa.int32(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dimension), nullable=False),
        ],
        metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()} or None,
    )


def word_vector_table(words: WordVectors) -> pa.Table:
    """[UNK] and every word (pairs left out), with its index and vector, in index order."""
    rows = words.word_rows
    rows[OOV_INDEX] = True
    indices = np.flatnonzero(rows).astype(np.int32)
    flat = pa.array(words.vectors[indices].reshape(-1), type=pa.float32())
    schema = word_vector_schema(
        words.dimension,
        {"model": words.model_path, "model_sha256": words.model_sha256, "dimension": str(words.dimension)},
    )
    return pa.Table.from_arrays(
        [
            pa.array([words.vocabulary[i] for i in indices], type=pa.string()),
            pa.array(indices, type=pa.int32()),
            pa.FixedSizeListArray.from_arrays(flat, words.dimension),
        ],
        schema=schema,
    )


# ---------------------------------------------------------------------------------------------
# Command line


FLAGS = (
    TEXT_MODEL_FLAG,
    output_flag("FILE.parquet", "Where to write the word vectors (local or gs://)."),
    UNSAFE_MODEL_LOADING_FLAG,
    json_flag("the summary"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline export-word-vectors`: its `FLAGS`."""
    add_flags(parser, FLAGS)


def main_from_args(args: argparse.Namespace) -> int:
    """Run `export-word-vectors`: a summary on stdout (`--json` for scripts)."""
    if not args.out.endswith(".parquet"):
        raise ToolError(f"--output must end in .parquet, got {args.out!r}")
    words = load_word_vectors(args.text_model, args.unsafe_model_loading)
    table = word_vector_table(words)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    write_bytes(args.out, buffer.getvalue())
    summary = {
        "out": args.out,
        "words": words.words,
        "rows": table.num_rows,  # the words and [UNK]
        "pairs_left_out": words.pairs,  # --ngrams 2 models: the pairs of words are not word vectors
        "dimension": words.dimension,
        "model": args.text_model,
        "model_sha256": words.model_sha256,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            format_fields(
                [
                    ("wrote", args.out),
                    ("words", f"{summary['words']:,} (and a row for [UNK])"),
                    *([("pairs left out", f"{words.pairs:,} (pairs of words of an --ngrams 2 model)")] if words.pairs else []),
                    ("dimension", summary["dimension"]),
                    ("model", f"{args.text_model} (sha256 {words.model_sha256[:12]})"),
                ]
            )
        )
    return 0
