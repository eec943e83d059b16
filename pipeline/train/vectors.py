"""Pretrained word vectors for `train-text --init-vectors FILE`, and the SIF pooling weights.

Word-vector files accepted:

- the word2vec text format: one `word v1 v2 ... vd` per line, separated by spaces; an optional
  first line `count dimension` (word2vec, fastText `.vec`); none in GloVe `.txt`. Optionally gzipped
  (`.gz`). Local or gs://.
- Parquet with `token` and `vector` columns: what `export-word-vectors` writes.

The model's vocabulary is lower-cased and stripped of punctuation, so a file word is matched in
lower case; when a file holds several spellings of one word (`Apple`, `apple`), the first one wins
(files are usually sorted by frequency). Every bad line is an error naming the file and the line:
a value that is not a number, a line with another number of values than the first vector (or than
the header says). A file that covers no word of the vocabulary is an error too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
from typing import Sequence

import numpy as np
from apache_beam.io.filesystems import CompressionTypes, FileSystems

from pipeline.tools.word_vectors import word_rows
from transforms.errors import UserError

__all__ = ["VectorFileError", "PretrainedVectors", "read_word_vectors", "initial_embeddings", "random_rows", "sif_weights"]


class VectorFileError(UserError, ValueError):
    """An `--init-vectors` file that cannot be used; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class PretrainedVectors:
    path: str
    words: dict[str, int]  # lower-cased word -> row of `matrix` (first spelling wins)
    matrix: np.ndarray  # (rows, dimension) float32
    lines: int  # vectors read

    @property
    def dimension(self) -> int:
        return int(self.matrix.shape[1])


def _read_parquet(path: str) -> PretrainedVectors:
    import pyarrow.parquet as pq

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        table = pq.read_table(io.BytesIO(handle.read()))
    missing = {"token", "vector"} - set(table.column_names)
    if missing:
        raise VectorFileError(
            f"--init-vectors {path}: a Parquet file needs the columns token and vector (as export-word-vectors writes); "
            f"missing {', '.join(sorted(missing))}"
        )
    tokens = table.column("token").to_pylist()
    vectors = table.column("vector").to_pylist()
    if not vectors:
        raise VectorFileError(f"--init-vectors {path}: the file holds no vector")
    dimension = len(vectors[0])
    words: dict[str, int] = {}
    for row, (token, vector) in enumerate(zip(tokens, vectors)):
        if vector is None or len(vector) != dimension:
            raise VectorFileError(f"--init-vectors {path}: row {row + 1} ({token!r}) has no vector of {dimension} values")
        words.setdefault(str(token).lower(), row)
    return PretrainedVectors(path, words, np.asarray(vectors, dtype=np.float32), len(vectors))


def read_word_vectors(path: str) -> PretrainedVectors:
    """Every vector of a word2vec-text-format (optionally .gz) or Parquet file; VectorFileError on a bad line."""
    try:
        if path.endswith(".parquet"):
            return _read_parquet(path)
        raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except VectorFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing file, no permission
        raise VectorFileError(f"--init-vectors {path}: cannot read the file ({type(exc).__name__}: {exc})") from exc
    words: dict[str, int] = {}
    rows: list[np.ndarray] = []
    dimension = None
    with raw, gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else contextlib.nullcontext(raw) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", errors="strict")
        number = 0
        try:
            for number, line in enumerate(text, start=1):
                parts = line.rstrip("\r\n").rstrip(" ").split(" ")
                if not line.strip():
                    continue
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    dimension = int(parts[1])  # the `count dimension` header
                    continue
                word, values = parts[0], parts[1:]
                if dimension is None:
                    dimension = len(values)
                    if dimension == 0:
                        raise VectorFileError(f"--init-vectors {path}:{number}: the line has a word and no vector")
                if len(values) != dimension:
                    raise VectorFileError(
                        f"--init-vectors {path}:{number}: {word!r} has {len(values)} values, expected {dimension} "
                        f"(the dimension of the {'header' if rows or number > 1 else 'first vector'})"
                    )
                try:
                    vector = np.asarray(values, dtype=np.float32)
                except ValueError:
                    bad = next(v for v in values if not _is_number(v))
                    raise VectorFileError(
                        f"--init-vectors {path}:{number}: {word!r} has a value that is not a number: {bad!r}"
                    ) from None
                words.setdefault(word.lower(), len(rows))
                rows.append(vector)
        except UnicodeDecodeError as exc:
            raise VectorFileError(f"--init-vectors {path}:{number + 1}: not UTF-8 text ({exc.reason})") from None
        except (OSError, EOFError) as exc:
            raise VectorFileError(f"--init-vectors {path}: cannot read the file ({type(exc).__name__}: {exc})") from exc
    if not rows:
        raise VectorFileError(f"--init-vectors {path}: the file holds no vector")
    return PretrainedVectors(path, words, np.stack(rows), len(rows))


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def random_rows(rows: int, dimension: int, seed: int) -> np.ndarray:
    """Rows that start at random as the Embedding layer's own ("uniform": in [-0.05, 0.05]), seeded: the
    tokens a word-vector file lacks, and skipgram+classify's pairs."""
    return np.random.default_rng(seed).uniform(-0.05, 0.05, size=(rows, dimension)).astype(np.float32)


def initial_embeddings(
    vocabulary: Sequence[str], pretrained: PretrainedVectors, dimension: int, seed: int, counts: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The Embedding weights to start from: the file's vector for each covered word, small random
    vectors (Keras' default, uniform +-0.05) for the others; (weights, covered rows, coverage report).

    The pairs of words of an `--ngrams 2` vocabulary ("the movie") are never looked up (a word-vector
    file holds words): they start random, and the coverage figures count words only (`pairs`: how many
    entries were left out of them)."""
    if pretrained.dimension != dimension:
        raise VectorFileError(
            f"--init-vectors {pretrained.path}:1: the vectors have {pretrained.dimension} dimensions but --embedding-dim is "
            f"{dimension}; pass --embedding-dim {pretrained.dimension}"
        )
    weights = random_rows(len(vocabulary), dimension, seed)
    covered = np.zeros(len(vocabulary), dtype=bool)
    is_word = word_rows(vocabulary)
    for index, word in enumerate(vocabulary):
        if not is_word[index]:
            continue  # padding, [UNK] and pairs
        row = pretrained.words.get(word)
        if row is not None:
            weights[index] = pretrained.matrix[row]
            covered[index] = True
    words = int(is_word.sum())
    if not covered.any():
        raise VectorFileError(
            f"--init-vectors {pretrained.path}: none of its {pretrained.lines:,} words is in the model's vocabulary of {words:,} "
            f"(e.g. {', '.join([w for i, w in enumerate(vocabulary) if is_word[i]][:5])}); is it a word-vector file for this language?"
        )
    missing = [w for i, w in enumerate(vocabulary) if is_word[i] and not covered[i]]
    report = {
        "file": pretrained.path,
        "file_vectors": pretrained.lines,
        "dimension": dimension,
        "vocabulary_words": words,
        "covered_words": int(covered.sum()),
        "covered_fraction": round(float(covered.sum()) / max(words, 1), 4),
        "missing_examples": missing[:20],  # the most frequent words without a vector
    }
    pairs = len(vocabulary) - 2 - words
    if pairs:
        report["pairs"] = pairs  # --ngrams 2: pairs of words, not in any word-vector file: random start
    if counts is not None:
        counts = np.asarray(counts, dtype=np.float64)
        total = counts[is_word].sum()
        report["covered_token_fraction"] = round(float(counts[covered].sum() / total), 4) if total else 0.0
    return weights, covered, report


def sif_weights(counts: Sequence[int], a: float) -> np.ndarray:
    """SIF weight a / (a + p(w)) per token id (p: the word's share of the training tokens); padding 0."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts[1:].sum()
    p = counts / total if total else np.zeros_like(counts)
    weights = a / (a + p)
    weights[0] = 0.0
    return weights.astype(np.float32)
