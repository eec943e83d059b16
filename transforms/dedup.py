"""Duplicate ids: find them without a per-record shuffle, so that only one record per id is embedded.

Ids are the join key users load embeddings by, so two records with one id would make the output
ambiguous. The first occurrence in (source, line) order is embedded; every later one goes to the
dead letters as `DuplicateId`, naming the occurrence that was kept.

Finding them scales like a shuffle but costs like a batch job: every batch of ids is split into
`buckets` columnar slices by a hash of the id, the slices are grouped by bucket, and each bucket is
searched for repeats with pyarrow. Beam handles (batches x buckets) elements, not one per record.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["FindDuplicateIds", "duplicate_reason", "OccurrenceKey"]

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
