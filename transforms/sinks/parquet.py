"""The Parquet sink: pyarrow tables to `FOLDER/part-SSSSS-of-NNNNN.parquet` on Beam's file sink,
and dead letters (`ErrorRecord`s, or `ErrorBatch`es of them: `BatchErrors`) to `errors/` the same way.

Row groups of a useful size, dictionary encoding only where it pays, snappy pages. The run's
manifest is `transforms.sinks.manifest`; the job's output folder (claim, clear, discard) is
`transforms.sinks.folder`; reading a finished run is `transforms.results`.
"""

from __future__ import annotations

from typing import Iterator, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.utils.windowed_value import WindowedValue

from transforms.io import fileio
from transforms.records import ERROR_SCHEMA, ErrorBatch

__all__ = ["WriteTables", "WriteErrors", "BatchErrors"]


class _BufferedWriter:
    """A ParquetWriter that gathers small tables into row groups of about `row_group_rows` rows."""

    def __init__(self, writer: pq.ParquetWriter, row_group_rows: int):
        self.writer = writer
        self.row_group_rows = row_group_rows
        self.pending: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=max(self.rows, 1))
            self.pending, self.rows = [], 0


class _EmbeddingParquetSink(filebasedsink.FileBasedSink):
    """Parquet files from pyarrow tables on Beam's public file sink (temp files, then finalised
    under their shard names), with row groups of a useful size and dictionary encoding only where
    it pays (ids, paths and model names repeat; float vectors and hashes do not). Snappy
    compression inside the file, as Beam's own `WriteToParquetBatched`."""

    def __init__(self, file_path_prefix: str, schema: pa.Schema, row_group_rows: int):
        super().__init__(
            file_path_prefix,
            coder=None,
            file_name_suffix=".parquet",
            num_shards=0,
            shard_name_template=None,
            mime_type="application/x-parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,  # Parquet compresses its pages
            triggering_frequency=60,
        )
        self._schema = schema
        self._row_group_rows = row_group_rows
        self._dictionary_columns = [f.name for f in schema if pa.types.is_string(f.type) and f.name != "content_sha256"]
        self._file_handle = None

    def open(self, temp_path):
        self._file_handle = super().open(temp_path)
        writer = pq.ParquetWriter(self._file_handle, self._schema, compression="snappy", use_dictionary=self._dictionary_columns)
        return _BufferedWriter(writer, self._row_group_rows)

    def display_data(self):
        return {**super().display_data(), "codec": "snappy", "schema": str(self._schema)}

    def write_record(self, writer: _BufferedWriter, table: pa.Table):
        writer.add(table)

    def close(self, writer: _BufferedWriter):
        writer.flush()
        writer.writer.close()
        if self._file_handle:
            self._file_handle.close()
            self._file_handle = None


class WriteTables(beam.PTransform):
    """pyarrow tables of one schema to `folder/part-SSSSS-of-NNNNN.parquet`; emits the file names.

    Row groups hold about `row_group_rows` rows (64k: 16 MB of 64-d float32 vectors), whatever
    the size of the batches that arrive.
    """

    def __init__(self, folder: str, schema: pa.Schema, row_group_rows: int = 65536, prefix: str = "part"):
        super().__init__()
        self._folder = folder
        self._schema = schema
        self._row_group_rows = row_group_rows
        self._prefix = prefix  # file names: PREFIX-SSSSS-of-NNNNN.parquet (carry-over: a second sink, "carried")

    def expand(self, tables):
        sink = _EmbeddingParquetSink(fileio.join(self._folder, self._prefix), self._schema, self._row_group_rows)
        return tables | "WriteParquet" >> beam.io.iobase.Write(sink)


class _BatchErrorsFn(beam.DoFn):
    """Gathers the ErrorRecords of a bundle (per window) into ErrorBatches of at most `max_rows`;
    ErrorBatches pass as they are."""

    def __init__(self, max_rows: int):
        self._max_rows = max_rows

    def start_bundle(self):
        self._pending: dict = {}

    def process(self, error, window=beam.DoFn.WindowParam) -> Iterator:
        if isinstance(error, ErrorBatch):
            yield error
            return
        pending = self._pending.setdefault(window, [])
        pending.append(error)
        if len(pending) >= self._max_rows:
            del self._pending[window]
            yield ErrorBatch.from_records(pending)

    def finish_bundle(self) -> Iterator:
        for window, pending in self._pending.items():
            yield WindowedValue(ErrorBatch.from_records(pending), window.max_timestamp(), [window])
        self._pending = {}


class BatchErrors(beam.PTransform):
    """Dead letters (`ErrorRecord`s or `ErrorBatch`es) in, `ErrorBatch`es out: the records of each
    bundle gathered into batches of at most `max_rows` rows.

    Applied right after the steps that make dead letters (it fuses with them), so that what
    crosses a stage boundary (a Flatten, the sink, the manifest's counts) is a few compressed
    batches, never one pickled record each: a runner that holds a PCollection between stages (the
    local one does) then holds a few bytes a dead letter (issue 19 (6))."""

    def __init__(self, max_rows: int = 8192, label: Optional[str] = None):
        super().__init__(label)
        self._max_rows = max_rows

    def expand(self, errors):
        return errors | "GatherErrors" >> beam.ParDo(_BatchErrorsFn(self._max_rows))


class WriteErrors(beam.PTransform):
    """Dead letters (`ErrorRecord`s or `ErrorBatch`es) to `errors/` as Parquet (an empty file when
    the run had none)."""

    def __init__(self, folder: str):
        super().__init__()
        self._folder = folder

    def expand(self, errors):
        return (
            errors
            | "BatchErrors" >> BatchErrors(max_rows=4096)
            | "ToTable" >> beam.Map(lambda batch: batch.table)
            | "WriteErrorParquet" >> WriteTables(self._folder, ERROR_SCHEMA)
        )
