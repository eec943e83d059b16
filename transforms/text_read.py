"""Reading text records from files into columnar batches (pyarrow tables), with dead letters."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Iterator, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.records import ERRORS, TEXT, ErrorRecord
from transforms.text_formats import detect_format, iter_records

__all__ = ["ReadTextFileFn", "text_batch_schema", "passthrough_value"]



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


_FAST_TYPES = (pa.string(), pa.large_string(), pa.int64(), pa.bool_())
_BLOCK_BYTES = 1 << 20


def _jsonl_blocks(handle, block_bytes: int = _BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(first line number, bytes of whole lines) blocks of a JSONL file, about `block_bytes` each."""
    line, pending, first = 1, b"", True
    while True:
        chunk = handle.read(block_bytes)
        if first and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]  # a UTF-8 byte-order mark
        first = False
        if not chunk:
            if pending:
                yield line, pending
            return
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            pending = data
            continue
        block, pending = data[:cut], data[cut:]
        yield line, block
        line += block.count(b"\n")


def fast_jsonl_columns(block: bytes, first_line: int, path: str, text_field: str, id_field: str,
                       passthrough: Sequence[str]) -> Optional[dict]:
    """The columns of a block of clean JSONL lines parsed by pyarrow in C++, or None when the block
    needs the line-by-line parser (any malformed, blank, null, non-string or NUL-bearing line;
    nested or float id/passthrough values). Both give identical rows for the blocks accepted here."""
    import pyarrow.compute as pc
    import pyarrow.json as pajson

    lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
    try:
        table = pajson.read_json(
            pa.BufferReader(block), read_options=pajson.ReadOptions(use_threads=False, block_size=len(block) + 64)
        )
    except Exception:  # noqa: BLE001 - malformed somewhere in the block: parse it line by line
        return None
    if table.num_rows != lines or text_field not in table.column_names:
        return None
    text = table.column(text_field)
    if text.type not in (pa.string(), pa.large_string()) or text.null_count or pc.any(pc.match_substring(text, "\x00")).as_py():
        return None
    line_numbers = pa.array(range(first_line, first_line + lines), pa.int64())
    line_ids = pc.binary_join_element_wise(pa.scalar(path), pc.cast(line_numbers, pa.string()), ":")
    columns = {"line": line_numbers, "text": text.combine_chunks().cast(pa.string())}
    if id_field in table.column_names:
        raw = table.column(id_field)
        if raw.type == pa.null():
            columns["id"] = line_ids
        elif raw.type not in _FAST_TYPES:
            return None
        else:
            ids = raw.combine_chunks().cast(pa.string())
            columns["id"] = pc.if_else(pc.or_kleene(pc.is_null(ids), pc.equal(ids, "")), line_ids, ids)
    else:
        columns["id"] = line_ids
    for name in passthrough:
        if name not in table.column_names or table.column(name).type == pa.null():
            columns[name] = pa.nulls(lines, pa.string())
        elif table.column(name).type not in _FAST_TYPES:
            return None
        else:
            columns[name] = table.column(name).combine_chunks().cast(pa.string())
    return columns


class ReadTextFileFn(beam.DoFn):
    """One file path in; tables of up to `batch_rows` records out, and an ErrorRecord per bad line.

    The id is the `id_field` value, or `file:line` (Parquet: `file:row`) where the record has none.
    UTF-8 JSONL is parsed in ~1 MB blocks by pyarrow (`fast_jsonl_columns`); a block with any
    problem, and every other format, goes through the line-by-line parser of `text_formats`.
    """

    def __init__(
        self,
        text_field: str = "text",
        id_field: str = "id",
        passthrough: Sequence[str] = (),
        encoding: str = "utf-8",
        batch_rows: int = 4096,
        fast_jsonl: bool = True,
        ids_only: bool = False,
    ):
        self._text_field = text_field
        self._id_field = id_field
        self._passthrough = tuple(passthrough)
        self._encoding = encoding
        self._batch_rows = batch_rows
        self._fast_jsonl = fast_jsonl
        self._ids_only = ids_only  # a first pass for the duplicate-id check: (ids, sources, lines) only
        self._schema = text_batch_schema(self._passthrough)
        self._read = beam.metrics.Metrics.counter("embeddings", "text_read")

    def _empty(self) -> dict:
        return {name: [] for name in self._schema.names}

    def _records(self, parsed_lines, path: str, line_offset: int = 0) -> Iterator:
        """Tables and TaggedOutput errors from parsed lines; the last item yielded is the count read."""
        columns = self._empty()
        count = 0
        for parsed in parsed_lines:
            count += 1
            line = parsed.line + line_offset
            line_id = f"{path}:{line}"
            if parsed.error is not None:
                yield beam.pvalue.TaggedOutput(ERRORS, ErrorRecord.from_exception(line_id, TEXT, line_id, "read", parsed.error))
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
                yield beam.pvalue.TaggedOutput(ERRORS, ErrorRecord(record_id, TEXT, line_id, "read", "InvalidTextField", problem))
                continue
            columns["id"].append(record_id)
            columns["source"].append(path)
            columns["line"].append(line)
            columns["text"].append(text)
            columns["content_sha256"].append(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
            for name in self._passthrough:
                columns[name].append(passthrough_value(record.get(name)))
            if len(columns["id"]) >= self._batch_rows:
                yield pa.Table.from_pydict(columns, schema=self._schema)
                columns = self._empty()
        if columns["id"]:
            yield pa.Table.from_pydict(columns, schema=self._schema)
        yield count

    block_bytes = _BLOCK_BYTES

    def _jsonl_fast(self, handle, path: str) -> Iterator:
        for first_line, block in _jsonl_blocks(handle, self.block_bytes):
            columns = fast_jsonl_columns(block, first_line, path, self._text_field, self._id_field, self._passthrough)
            if columns is None:
                yield from self._records(iter_records(io.BytesIO(block), "jsonl", "utf-8", self._text_field), path, first_line - 1)
                continue
            if self._ids_only:
                ids = columns["id"].to_pylist()
                yield (ids, [path] * len(ids), columns["line"].to_pylist())
                continue
            texts = columns["text"].to_pylist()
            columns["content_sha256"] = pa.array(
                [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts], pa.string()
            )
            columns["source"] = pa.array([path] * len(texts), pa.string())
            yield pa.Table.from_pydict({name: columns[name] for name in self._schema.names}, schema=self._schema)
            yield len(texts)

    def process(self, path: str) -> Iterator:
        fmt = detect_format(path)
        try:
            handle = FileSystems.open(path)  # compression from the extension (.gz, .bz2, ...)
        except Exception as exc:  # noqa: BLE001 - a file that vanished between match and read
            self._read.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, ErrorRecord.from_exception(path, TEXT, path, "read", exc))
            return
        fast = self._fast_jsonl and fmt == "jsonl" and self._encoding.lower().replace("-", "").replace("_", "") == "utf8"
        count = 0
        with handle:
            try:
                items = self._jsonl_fast(handle, path) if fast else self._records(
                    iter_records(handle, fmt, self._encoding, self._text_field), path
                )
                for item in items:
                    if isinstance(item, int):
                        count += item
                    elif not self._ids_only:
                        yield item
                    elif isinstance(item, pa.Table):
                        yield (item.column("id").to_pylist(), item.column("source").to_pylist(), item.column("line").to_pylist())
                    elif isinstance(item, tuple):
                        yield item
            except Exception as exc:  # noqa: BLE001 - the rest of the file is unreadable (bad Parquet, gzip)
                count += 1
                if not self._ids_only:
                    yield beam.pvalue.TaggedOutput(ERRORS, ErrorRecord.from_exception(f"{path}:*", TEXT, path, "read", exc))
        if not self._ids_only:
            self._read.inc(count)
