"""The job's text checks applied before embedding: what `dedup.CheckTextRecords` found, per table.

The public `EmbedTextTables` embeds every table it is given; the job first passes its tables
through `ScreenTextTables`, with the check's side inputs (`beam.pvalue.AsMultiMap` views keyed by
(path, chunk), read through `dedup.LineFlags`):

* `skips` (incremental runs): records an earlier run embedded with the same id, content and model
  are dropped and counted (`SKIPPED`);
* `duplicates`: a later occurrence of an id becomes a `DuplicateId` dead letter naming the first.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms import progress
from transforms.records import ERRORS, TEXT, ErrorRecord
from transforms.state.dedup import LineFlags, later_occurrence_reason
from transforms.state.incremental import SKIPPED

__all__ = ["ScreenTextTables", "ScreenedTables"]


class ScreenedTables(NamedTuple):
    """What `ScreenTextTables` returns."""

    tables: beam.PCollection  # the tables less the skipped and duplicate records (none empty)
    errors: beam.PCollection  # DuplicateId dead letters (records.ErrorRecord)
    skipped: beam.PCollection  # ints: records an earlier run already embedded, per table


class _ScreenTextTablesFn(beam.DoFn):
    def __init__(self):
        self._failed = beam.metrics.Metrics.counter("embeddings", f"{TEXT}_failed")  # as the embedding step's

    def process(self, table: pa.Table, skips=None, duplicates=None) -> Iterator:
        flags = LineFlags(skips, duplicates)
        skipped = 0
        if skips is not None:
            unchanged = flags.skipped(table)
            if unchanged.any():
                table, skipped = table.filter(pa.array(~unchanged)), int(unchanged.sum())
                yield beam.pvalue.TaggedOutput(SKIPPED, skipped)
        rejected = _later_occurrences(table, flags) if duplicates is not None else []
        if rejected:
            keep = np.ones(table.num_rows, dtype=bool)
            keep[[row for row, _ in rejected]] = False
            table = table.filter(pa.array(keep))
            self._failed.inc(len(rejected))
            for _, error in rejected:
                yield beam.pvalue.TaggedOutput(ERRORS, error)
        if skipped or rejected:
            progress.add(TEXT, failed=len(rejected), skipped=skipped)
        if table.num_rows:
            yield table


def _later_occurrences(table: pa.Table, flags: LineFlags) -> list[tuple[int, ErrorRecord]]:
    """(row, DuplicateId dead letter) of each row whose id occurred earlier, in row order."""
    firsts = flags.first_occurrences(table)
    if not firsts:
        return []
    ids, sources, lines = (table.column(name).to_pylist() for name in ("id", "source", "line"))
    rejected = []
    for row in sorted(firsts):
        first = firsts[row]
        if tuple(first) != (sources[row], lines[row]):
            reason = later_occurrence_reason(ids[row], *first)
            rejected.append((row, ErrorRecord(ids[row], TEXT, f"{sources[row]}:{lines[row]}", "read", "DuplicateId", reason)))
    return rejected


class ScreenTextTables(beam.PTransform):
    """Tables of text records in (`text_read.text_batch_schema`); `ScreenedTables` out.

    `duplicates` and `skips`: the side inputs of `dedup.CheckTextRecords` as `beam.pvalue.AsMultiMap`
    views (either may be None)."""

    def __init__(
        self,
        duplicates: Optional[beam.pvalue.AsSideInput] = None,
        skips: Optional[beam.pvalue.AsSideInput] = None,
        label: Optional[str] = None,
    ):
        super().__init__(label)
        self._side = {name: view for name, view in (("skips", skips), ("duplicates", duplicates)) if view is not None}

    def expand(self, tables: beam.PCollection) -> ScreenedTables:
        out = tables | "ScreenTextTables" >> beam.ParDo(_ScreenTextTablesFn(), **self._side).with_outputs(
            ERRORS, SKIPPED, main="tables"
        )
        return ScreenedTables(out.tables, out[ERRORS], out[SKIPPED])
