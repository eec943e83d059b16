"""Reading text records from files into columnar batches (pyarrow tables), with dead letters."""

from __future__ import annotations

import hashlib
import json
from typing import Iterator, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.records import TEXT, ErrorRecord
from transforms.text_formats import RecordError, detect_format, iter_records

__all__ = ["ReadTextFileFn", "text_batch_schema", "passthrough_value"]

ERRORS = "errors"


def passthrough_value(value) -> Optional[str]:
    """A passthrough field as the string stored in the output (JSON for non-strings, None stays null)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def text_batch_schema(passthrough: Sequence[str]) -> pa.Schema:
    """The columns a text batch carries from the reader to the embedder."""
    fields = [
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("text", pa.string()),
        pa.field("content_sha256", pa.string()),
    ]
    fields += [pa.field(name, pa.string()) for name in passthrough]
    return pa.schema(fields)


class ReadTextFileFn(beam.DoFn):
    """One file path in; tables of up to `batch_rows` records out, and an ErrorRecord per bad line.

    The id is the `id_field` value, or `file:line` (Parquet: `file:row`) where the record has none.
    """

    def __init__(
        self,
        text_field: str = "text",
        id_field: str = "id",
        passthrough: Sequence[str] = (),
        encoding: str = "utf-8",
        batch_rows: int = 4096,
    ):
        self._text_field = text_field
        self._id_field = id_field
        self._passthrough = tuple(passthrough)
        self._encoding = encoding
        self._batch_rows = batch_rows
        self._schema = text_batch_schema(self._passthrough)
        self._read = beam.metrics.Metrics.counter("embeddings", "text_read")

    def _table(self, columns: dict) -> pa.Table:
        return pa.Table.from_pydict(columns, schema=self._schema)

    def _empty(self) -> dict:
        return {name: [] for name in self._schema.names}

    def process(self, path: str) -> Iterator:
        fmt = detect_format(path)
        columns = self._empty()
        count = 0
        try:
            handle = FileSystems.open(path)  # compression from the extension (.gz, .bz2, ...)
        except Exception as exc:  # noqa: BLE001 - a file that vanished between match and read
            self._read.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, ErrorRecord.from_exception(path, TEXT, path, "read", exc))
            return
        with handle:
            try:
                for parsed in iter_records(handle, fmt, self._encoding, self._text_field):
                    count += 1
                    line_id = f"{path}:{parsed.line}"
                    if parsed.error is not None:
                        yield beam.pvalue.TaggedOutput(
                            ERRORS, ErrorRecord.from_exception(line_id, TEXT, line_id, "read", parsed.error)
                        )
                        continue
                    record = parsed.record
                    raw_id = record.get(self._id_field)
                    record_id = line_id if raw_id is None or raw_id == "" else passthrough_value(raw_id)
                    text = record.get(self._text_field)
                    problem = None
                    if self._text_field not in record:
                        problem = f"record has no {self._text_field!r} field (set --text-field)"
                    elif text is None:
                        problem = f"{self._text_field!r} is null"
                    elif not isinstance(text, str):
                        problem = f"{self._text_field!r} is a {type(text).__name__}, not a string"
                    elif "\x00" in text:
                        problem = f"{self._text_field!r} contains NUL characters"
                    if problem:
                        yield beam.pvalue.TaggedOutput(
                            ERRORS, ErrorRecord(record_id, TEXT, line_id, "read", "InvalidTextField", problem)
                        )
                        continue
                    columns["id"].append(record_id)
                    columns["source"].append(path)
                    columns["line"].append(parsed.line)
                    columns["text"].append(text)
                    columns["content_sha256"].append(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
                    for name in self._passthrough:
                        columns[name].append(passthrough_value(record.get(name)))
                    if len(columns["id"]) >= self._batch_rows:
                        yield self._table(columns)
                        columns = self._empty()
            except Exception as exc:  # noqa: BLE001 - the rest of the file is unreadable (bad Parquet, gzip)
                count += 1
                yield beam.pvalue.TaggedOutput(
                    ERRORS, ErrorRecord.from_exception(f"{path}:*", TEXT, path, "read", exc)
                )
        if columns["id"]:
            yield self._table(columns)
        self._read.inc(count)
