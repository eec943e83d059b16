"""Duplicate ids: find them without a per-record shuffle, so that only one record per id is embedded.

Ids are the join key users load embeddings by, so two records with one id would make the output
ambiguous. The first occurrence in (source, line) order is embedded; every later one goes to the
dead letters as `DuplicateId`, naming the occurrence that was kept.

Finding them scales like a shuffle but costs like a batch job: every batch of ids is split into
`buckets` columnar slices by a hash of the id, the slices are grouped by bucket, and each bucket is
searched for repeats with pyarrow. Beam handles (batches x buckets) elements, not one per record.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "FindDuplicateIds",
    "FindDuplicateIdHashes",
    "duplicate_reason",
    "id_hashes",
    "occurrences",
    "split_occurrence",
    "OccurrenceKey",
]

OccurrenceKey = tuple  # (source, line): where a record was read


def _bucket_of(ids: Sequence[str], buckets: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(i.encode("utf-8", "surrogatepass")) % buckets for i in ids), dtype=np.int64, count=len(ids))


def _split(occurrences: tuple[list, list, list], buckets: int) -> Iterator[tuple[int, pa.Table]]:
    ids, sources, lines = occurrences
    if not ids:
        return
    table = pa.table({"id": pa.array(ids, pa.string()), "source": pa.array(sources, pa.string()), "line": pa.array(lines, pa.int64())})
    keys = _bucket_of(ids, buckets)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
    for part in np.split(np.arange(len(order)), bounds):
        yield int(sorted_keys[part[0]]), table.take(pa.array(order[part]))


def _repeats(bucket: tuple[int, Iterable[pa.Table]]) -> Iterator[tuple[str, OccurrenceKey]]:
    """(id, first occurrence) for every id that occurs more than once in this bucket."""
    _, tables = bucket
    table = pa.concat_tables(list(tables))
    counts = table.group_by("id").aggregate([("id", "count")])
    repeated = counts.filter(pc.greater(counts.column("id_count"), 1)).column("id")
    if len(repeated) == 0:
        return
    rows = table.filter(pc.is_in(table.column("id"), value_set=repeated)).sort_by([("id", "ascending"), ("source", "ascending"), ("line", "ascending")])
    previous = None
    for row in rows.to_pylist():
        if row["id"] != previous:
            previous = row["id"]
            yield row["id"], (row["source"], row["line"])


class FindDuplicateIds(beam.PTransform):
    """Occurrence batches `(ids, sources, lines)` in; `(id, first occurrence)` out for repeated ids only."""

    def __init__(self, buckets: int = 64):
        super().__init__()
        self._buckets = buckets

    def expand(self, occurrences):
        return (
            occurrences
            | "SplitIdsByHash" >> beam.FlatMap(_split, self._buckets)
            | "GroupIdBuckets" >> beam.GroupByKey()
            | "FindRepeats" >> beam.FlatMap(_repeats)
        )


def duplicate_reason(record_id: str, key: OccurrenceKey, duplicates: dict) -> str | None:
    """Why a record is a duplicate (it is not the first occurrence of its id), or None."""
    first = duplicates.get(record_id)
    if first is None or tuple(first) == tuple(key):
        return None
    source, line = first
    where = source if line is None else f"{source}:{line}"
    return f"id {record_id!r} was already used at {where}; the first occurrence is embedded"


# --- Text: 64-bit id hashes, so that the check costs 16 bytes a record and no shuffle ----------

_LINE_BITS = 40  # an occurrence is (file index << 40) | line: a trillion lines per file


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each id (BLAKE2b; the same in every worker process)."""
    return np.frombuffer(
        b"".join(hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=8).digest() for i in ids),
        dtype=np.uint64,
    )


def occurrences(file_index: int, lines: Sequence[int]) -> np.ndarray:
    """Where records were read, as sortable integers: file index first, then line."""
    return (np.uint64(file_index) << np.uint64(_LINE_BITS)) | np.asarray(lines, dtype=np.uint64)


def split_occurrence(occurrence: int) -> tuple[int, int]:
    """(file index, line) of an occurrence."""
    return occurrence >> _LINE_BITS, occurrence & ((1 << _LINE_BITS) - 1)


class _FirstOccurrenceOfRepeatedHashes(beam.CombineFn):
    """(hashes, occurrences) arrays in; {hash: first occurrence} for hashes seen more than once."""

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, batch):
        accumulator.append(batch)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = [b for acc in accumulators for b in acc]
        return [self._compact(merged)] if merged else []

    @staticmethod
    def _compact(batches):
        hashes = np.concatenate([b[0] for b in batches])
        places = np.concatenate([b[1] for b in batches])
        return hashes, places

    def extract_output(self, accumulator):
        if not accumulator:
            return {}
        hashes, places = self._compact(accumulator)
        order = np.lexsort((places, hashes))
        hashes, places = hashes[order], places[order]
        repeated = np.flatnonzero(hashes[1:] == hashes[:-1]) + 1  # every later occurrence
        firsts = {}
        for index in repeated:
            h = int(hashes[index])
            if h not in firsts:
                start = index - 1
                firsts[h] = int(places[start])
        return firsts


class FindDuplicateIdHashes(beam.PTransform):
    """(id hashes, occurrences) batches in; a singleton {hash: first occurrence} of repeated ids.

    A hash collision between two different ids (about one in 10^7 for a billion ids) would make
    the later one a `DuplicateId` dead letter: visible, never silent.
    """

    def expand(self, batches):
        return batches | "FirstOccurrences" >> beam.CombineGlobally(_FirstOccurrenceOfRepeatedHashes())
