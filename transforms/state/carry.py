"""Carry-over: copy the earlier embeddings of unchanged records into this run's output.

An incremental run (`--incremental-from`) skips the records an earlier run embedded with the same
id, content and model. With `--carry-over` it also copies those earlier rows into its own output,
so that its folder is a complete snapshot of the current input: one row per current record,
records that left the input absent, changed records with their new vector.

How it scales (no earlier row is broadcast, no per-row side input):

1. `transforms.state.incremental.ReadPriorKeys(positions=True)` reads the earlier files' key columns by
   row group and sends, per earlier row, its position (file, row group, row: 8 bytes) beside its
   keys into the hash-bucket join of `transforms.state.dedup.CheckTextRecords`.
2. Each bucket picks, for every unchanged record it carries, ONE earlier row and emits it, a
   `CarrySlice` keyed by (earlier file, row group), with the record's current source and line
   (about 4 + 2..8 bytes a carried record, shuffled).
3. `CarryRows` groups those by earlier row group and reads each group once, with seeks, all columns
   (`read_row_group`), keeps the chosen rows and casts them to this run's schema: `source` and
   `line` are the current ones, passthrough columns the earlier run's (null where it had none),
   `embedded_run_id` the earlier row's own (a snapshot carried again keeps it) or the earlier
   run's id.

Images: `transforms.state.incremental.AttachPriorKeys(positions=True)` attaches to each image ref the
earlier `ckey`s of its id with the position of each one's first earlier row; the embedding step,
which learns an image is unchanged only after hashing its bytes, emits that position (CARRIED,
the same shape as step 2) and `CarryRows` copies the rows in the same way (no `line`).

A worker holds one earlier row group at a time (~65k rows, the size this job writes).
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.records import TEXT

__all__ = [
    "CARRIED",
    "PROVENANCE_COLUMN",
    "CarryRows",
    "CarrySlice",
    "carried_table",
    "with_run_id",
    "without_provenance",
]

PROVENANCE_COLUMN = "embedded_run_id"
CARRIED = "carried"  # tagged output of the image embedding step: ((earlier file, row group), CarrySlice)


class CarrySlice(NamedTuple):
    """Earlier rows to copy from one earlier row group, the value of `CarryRows`' input keyed by
    (earlier file index, row group): from the text check (`dedup.CheckTextRecords`' `carry`) and
    from the image embedding step (its CARRIED output, one image each)."""

    rows: np.ndarray  # uint32: the rows in the earlier row group
    paths: list  # the current sources of the records they stand for ...
    path_of_row: np.ndarray  # ... the index in `paths` of each row (smallest unsigned type)
    lines: np.ndarray  # the current line of each row (images: zeros, not written)


def without_provenance(schema: pa.Schema) -> pa.Schema:
    """The schema the embedding step writes: `schema` without `embedded_run_id` (added afterwards)."""
    return pa.schema([f for f in schema if f.name != PROVENANCE_COLUMN], metadata=schema.metadata)


def with_run_id(table: pa.Table, run_id: str, schema: pa.Schema) -> pa.Table:
    """A newly embedded table, with this run's id as its `embedded_run_id` (in `schema`)."""
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, np.int32)), pa.array([run_id])).dictionary_decode()
    columns = [column if f.name == PROVENANCE_COLUMN else table.column(f.name) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def carried_table(
    earlier: pa.Table,
    rows: np.ndarray,
    paths: Sequence[str],
    path_of_row: np.ndarray,
    lines: np.ndarray,
    run_id: str,
    schema: pa.Schema,
) -> pa.Table:
    """Rows `rows` of an earlier row group, in this run's `schema`, with the current source and line."""
    picked = earlier.take(pa.array(np.asarray(rows, dtype=np.int64)))
    n = picked.num_rows
    columns = []
    for field in schema:
        if field.name == "source":
            columns.append(pa.array(paths, pa.string()).take(pa.array(np.asarray(path_of_row, dtype=np.int64))))
        elif field.name == "line":
            columns.append(pa.array(np.asarray(lines, dtype=np.int64), pa.int64()))
        elif field.name == PROVENANCE_COLUMN and (field.name not in picked.column_names):
            columns.append(pa.array([run_id] * n, pa.string()))
        elif field.name in picked.column_names:
            column = picked.column(field.name)
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            columns.append(column.cast(field.type))
        else:  # a passthrough column the earlier run did not have
            columns.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class _CarryRowGroupFn(beam.DoFn):
    """One earlier row group's chosen rows, read once (all columns, with seeks), in this run's schema."""

    def __init__(self, files: Sequence[tuple[str, str]], schema: pa.Schema, modality: str = TEXT):
        self._files = list(files)
        self._schema = schema
        self._carried = beam.metrics.Metrics.counter("embeddings", f"{modality}_carried")

    def process(self, item: tuple[tuple[int, int], Iterable[CarrySlice]]) -> Iterator[pa.Table]:
        (file_index, group), parts = item
        path, run_id = self._files[file_index]
        rows, paths, path_of_row, lines = [], [], [], []
        for part in parts:
            rows.append(part.rows.astype(np.int64))
            path_of_row.append(part.path_of_row.astype(np.int64) + len(paths))
            paths += list(part.paths)
            lines.append(part.lines)
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            parquet = pq.ParquetFile(handle)
            try:
                earlier = parquet.read_row_group(group)
            finally:
                parquet.close()
        table = carried_table(
            earlier, np.concatenate(rows), paths, np.concatenate(path_of_row), np.concatenate(lines), run_id, self._schema
        )
        self._carried.inc(table.num_rows)
        yield table


class CarryRows(beam.PTransform):
    """`carry` of CheckTextRecords (text) or the CARRIED output of the image embedding step in;
    tables of carried rows (this run's schema) out. `files`: [(earlier Parquet file, its run id)]."""

    def __init__(self, files: Sequence[tuple[str, str]], schema: pa.Schema, modality: str = TEXT):
        super().__init__()
        self._files = list(files)
        self._schema = schema
        self._modality = modality

    def expand(self, carry):
        return (
            carry
            | "GroupCarryRowGroups" >> beam.GroupByKey()
            | "ReadCarriedRows" >> beam.ParDo(_CarryRowGroupFn(self._files, self._schema, self._modality))
        )
