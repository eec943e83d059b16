"""Incremental runs: skip records whose id, content and model are unchanged since an earlier run.

A record is unchanged when an earlier output holds a row with the same `id`, `content_sha256`
and `model_sha256`. The three are folded into one 16-byte key (BLAKE2b), the earlier keys are
gathered into one sorted NumPy array (16 bytes a record: 16 MB per million), and each batch is
checked against it with a vectorised search.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

__all__ = ["record_key", "record_keys", "ReadPriorKeys", "contains", "EMPTY_KEYS"]

KEY_DTYPE = np.dtype("V16")
EMPTY_KEYS = np.empty(0, dtype=KEY_DTYPE)


def record_key(record_id: str, content_sha256: str, model_sha256: str) -> bytes:
    """The 16-byte identity of one embedding: which record, which content, which model."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (record_id, content_sha256, model_sha256):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.digest()


def record_keys(ids: Sequence[str], contents: Sequence[str], model_sha256: str) -> np.ndarray:
    """Keys of a batch, as an array of V16."""
    return np.frombuffer(b"".join(record_key(i, c, model_sha256) for i, c in zip(ids, contents)), dtype=KEY_DTYPE)


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which `keys` are in `sorted_keys` (sorted, unique)."""
    if len(sorted_keys) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    positions = np.searchsorted(sorted_keys, keys)
    positions[positions == len(sorted_keys)] = 0
    return sorted_keys[positions] == keys


def _keys_of_file(path: str) -> np.ndarray:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        table = pq.read_table(pa.BufferReader(handle.read()), columns=["id", "content_sha256", "model_sha256"])
    keys = [record_key(i, c, m) for i, c, m in zip(*(table.column(n).to_pylist() for n in table.column_names))]
    return np.frombuffer(b"".join(keys), dtype=KEY_DTYPE)


class _UnionKeys(beam.CombineFn):
    def create_accumulator(self):
        return []

    def add_input(self, accumulator, keys):
        accumulator.append(keys)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable):
        return [np.unique(np.concatenate([k for acc in accumulators for k in acc] or [EMPTY_KEYS]))]

    def extract_output(self, accumulator):
        return np.unique(np.concatenate(accumulator or [EMPTY_KEYS]))


class ReadPriorKeys(beam.PTransform):
    """Earlier runs' Parquet files in; one sorted array of their record keys out (a singleton)."""

    def __init__(self, files: Sequence[str]):
        super().__init__()
        self._files = list(files)

    def expand(self, pbegin):
        return (
            pbegin
            | "PriorFiles" >> beam.Create(self._files)
            | "PriorKeys" >> beam.Map(_keys_of_file)
            | "UnionPriorKeys" >> beam.CombineGlobally(_UnionKeys())
        )
