"""Reading text records from files into columnar batches (pyarrow tables), with dead letters.

Files are read in splittable ranges (`transforms.io.splits`): one big file is spread over many
workers, with line numbers exactly those of the whole file.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRestrictionTracker

from transforms.io import fileio
from transforms.io.splits import (
    DEFAULT_MAX_TEXT_BYTES,
    DEFAULT_SPLIT_BYTES,
    LINE_FORMATS,
    FilePlan,
    FileRestrictions,
    MatchFiles,
    PlanFiles,
    RangeLines,
    is_compressed,
    line_blocks,
    plan_file,
    range_blocks,
    range_lines,
    range_row_groups,
    range_start,
)
from transforms.io.text_formats import ParsedLine, RecordError, iter_records, nesting_exceeds
from transforms.records import ERRORS, TEXT, ErrorRecord

__all__ = [
    "LINES",
    "LineTally",
    "add_tallies",
    "reconcile_file",
    "ReadTextFileFn",
    "ReadTextFiles",
    "read_text_file",
    "text_batch_schema",
    "TextBatchBuilder",
    "text_field_problem",
    "passthrough_value",
    "fast_jsonl_columns",
]


def passthrough_value(value) -> Optional[str]:
    """A passthrough field as the string stored in the output (JSON for non-strings, None stays null)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def text_field_problem(record: Mapping, text_field: str, setting: str) -> Optional[str]:
    """Why `record[text_field]` is no text to embed (None when it is one): missing, null, not a
    string, or holding NUL characters. `setting` names what picks the field (a flag or an argument)."""
    if text_field not in record:
        return f"record has no {text_field!r} field (set {setting})"
    text = record[text_field]
    if text is None:
        return f"{text_field!r} is null"
    if not isinstance(text, str):
        return f"{text_field!r} is a {type(text).__name__}, not a string"
    if "\x00" in text:
        return f"{text_field!r} contains NUL characters"
    return None


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


class TextBatchBuilder:
    """A text batch (`text_batch_schema`) gathered one record at a time: the reader's and the dict API's
    (`transforms.embed.api.EmbedText`), so that both hash and store a record the same way."""

    def __init__(self, passthrough: Sequence[str]):
        self._passthrough = tuple(passthrough)
        self.schema = text_batch_schema(self._passthrough)
        self._columns: dict[str, list] = {name: [] for name in self.schema.names}

    def __len__(self) -> int:
        return len(self._columns["id"])

    def add(self, record_id: str, source: Optional[str], line: Optional[int], text: str, record: Mapping) -> None:
        """One record: its text's sha256 (of its UTF-8 bytes) and its passthrough fields as strings."""
        columns = self._columns
        columns["id"].append(record_id)
        columns["source"].append(source)
        columns["line"].append(line)
        columns["text"].append(text)
        columns["content_sha256"].append(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
        for name in self._passthrough:
            columns[name].append(passthrough_value(record.get(name)))

    def take(self) -> pa.Table:
        """The records added so far, as one table; the builder starts afresh."""
        table = pa.Table.from_pydict(self._columns, schema=self.schema)
        self._columns = {name: [] for name in self.schema.names}
        return table


_FAST_TYPES = (pa.string(), pa.large_string(), pa.int64(), pa.bool_())
_BLOCK_BYTES = 1 << 20


def fast_jsonl_columns(
    block: bytes,
    first_line: int,
    path: str,
    text_field: str,
    id_field: str,
    passthrough: Sequence[str],
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
    stats: Optional[tuple[int, int]] = None,
) -> Optional[dict]:
    """The columns of a block of clean JSONL lines parsed by pyarrow in C++, or None when the block
    needs the line-by-line parser (any malformed, blank, null, non-string or NUL-bearing line;
    bytes that are not UTF-8, which pyarrow's reader lets through; nested or float id/passthrough
    values; JSON nested deeper than 1,000 levels, on which pyarrow's reader would crash). Both give
    identical rows for the blocks accepted here. `path` is the id part that records without an id
    get (`path:line`); `stats`: the block's `_line_stats` when the caller has them."""
    import pyarrow.json as pajson

    lines, longest = stats or _line_stats(block)
    if longest > _NESTING_LIMIT and _may_nest_too_deep(block, lines):  # a line nested D deep is >= D bytes
        return None
    if not _valid_utf8(block):  # one bad byte: the line parser makes it one dead letter, that line only
        return None
    try:
        table = pajson.read_json(
            pa.BufferReader(block), read_options=pajson.ReadOptions(use_threads=False, block_size=len(block) + 64)
        )
    except Exception:  # noqa: BLE001 - malformed somewhere in the block: parse it line by line
        return None
    if table.num_rows != lines:
        return None
    return _table_columns(table, first_line, path, text_field, id_field, passthrough, max_text_bytes)


_NESTING_LIMIT = 1000


def _valid_utf8(data: bytes) -> bool:
    """Whether `data` is valid UTF-8, checked by Arrow in place (no copy, no str built)."""
    import numpy as np

    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    array = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        array.view(pa.large_string()).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _string_columns_valid(columns: dict, names: Iterable[str]) -> bool:
    """Whether the string columns `names` hold valid UTF-8 (Parquet files can hold bytes that are not)."""
    try:
        for name in names:
            columns[name].validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _line_stats(block: bytes) -> tuple[int, int]:
    """(number of lines, length of the longest line) of a block, in one vectorised pass."""
    import numpy as np

    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
    if not len(ends):
        return (1 if block else 0), len(block)
    longest = max(int(ends[0]) + 1, len(block) - int(ends[-1]) - 1)
    if len(ends) > 1:
        longest = max(longest, int(np.diff(ends).max()))
    return len(ends) + (0 if block.endswith(b"\n") else 1), longest


def _may_nest_too_deep(block: bytes, lines: int) -> bool:
    """Whether a block with a line longer than 1,000 bytes may hold a line nested deeper than
    1,000 levels (pyarrow's JSON reader segfaults at ~20,000). A line's depth is at most its number
    of `{`/`[`: when every line starts with `{`, no line holds more than (all openers - lines + 1).
    Otherwise `text_formats.nesting_exceeds` decides (it may over-count, never under-count; an
    over-count only sends the block to the line parser)."""
    openers = block.count(b"{") + block.count(b"[")
    if openers <= _NESTING_LIMIT:
        return False
    if openers - lines < _NESTING_LIMIT and block.count(b"\n{") + block.startswith(b"{") >= lines:
        return False
    return nesting_exceeds(block, _NESTING_LIMIT)


def _table_columns(
    table: pa.Table,
    first_line: int,
    id_part: str,
    text_field: str,
    id_field: str,
    passthrough: Sequence[str],
    max_text_bytes: int,
    check_utf8: bool = False,
) -> Optional[dict]:
    """The batch columns of a parsed table whose every row is a clean record, else None.
    `check_utf8`: also None when a string column used holds bytes that are not UTF-8 (Parquet)."""
    import pyarrow.compute as pc

    rows = table.num_rows
    if text_field not in table.column_names:
        return None
    text = table.column(text_field)
    if text.type not in (pa.string(), pa.large_string()) or text.null_count or pc.any(pc.match_substring(text, "\x00")).as_py():
        return None
    if rows and pc.max(pc.binary_length(text)).as_py() > max_text_bytes:
        return None
    line_numbers = pa.array(range(first_line, first_line + rows), pa.int64())
    line_ids = pc.binary_join_element_wise(pa.scalar(id_part), pc.cast(line_numbers, pa.string()), ":")
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
            columns[name] = pa.nulls(rows, pa.string())
        elif table.column(name).type not in _FAST_TYPES:
            return None
        else:
            columns[name] = table.column(name).combine_chunks().cast(pa.string())
    if check_utf8 and not _string_columns_valid(columns, ("id", "text", *passthrough)):
        return None
    return columns


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("-", "").replace("_", "") == "utf8"


LINES = "lines"  # the reader's tagged output of `(path, LineTally)`, one per range read


class LineTally(NamedTuple):
    """Where the lines (Parquet: rows) of one range of a file went: the accounting of issue 19.

    `seen` is counted by the byte layer (the lines the range's bytes hold, as it hands them on),
    the rest by the parsers, so a record the parsers lose shows as a difference. `planned` is the
    file's count made before reading (the split pass's newline count, or the Parquet footer's rows),
    carried by the range that starts the file; -1 when the file was not counted before."""

    unit: str = "lines"  # "lines", or "rows" for Parquet
    seen: int = 0
    planned: int = -1
    records: int = 0  # read as a record or a dead letter (a multi-line CSV record: its first line)
    blank: int = 0
    header: int = 0  # CSV/TSV header rows
    continuation: int = 0  # the lines of multi-line CSV records after their first
    stopped: int = 0  # `path:*` dead letters: the rest of a range was unreadable (truncated, corrupt)

    @property
    def accounted(self) -> int:
        return self.records + self.blank + self.header + self.continuation

    @property
    def total(self) -> int:
        """The file's lines (rows): counted before reading where the plan did, else as read."""
        return self.planned if self.planned >= 0 else self.seen


def add_tallies(tallies: Iterable[LineTally]) -> LineTally:
    """The tally of a whole file from those of its ranges (a CombinePerKey function)."""
    tallies = list(tallies)
    if not tallies:
        return LineTally()
    fields = LineTally._fields[3:]
    return LineTally(
        tallies[0].unit,
        sum(t.seen for t in tallies),
        max(t.planned for t in tallies),
        *(sum(getattr(t, f) for t in tallies) for f in fields),
    )


def reconcile_file(path: str, tally: LineTally) -> Optional[str]:
    """Why a file's lines (rows) do not reconcile, or None when every one is accounted for."""
    total, accounted = tally.total, tally.accounted
    if total == accounted:
        return None
    unit = tally.unit
    parts = f"{tally.records} in records or dead letters"
    if unit == "lines":
        parts += f", {tally.blank} blank, {tally.header} header, {tally.continuation} continuation"
    gap = f"{total - accounted} {unit} unaccounted" if total > accounted else f"{accounted - total} {unit} counted twice"
    where = " (reading stopped early: see its `:*` dead letter)" if tally.stopped else ""
    return f"{path}: {total} {unit}, {accounted} accounted for ({parts}): {gap}{where}"


def _has_surrogates(value: str) -> bool:
    """Whether a parsed string holds unpaired surrogates (a JSON escape like \\ud800): no valid Unicode."""
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class ReadTextFileFn(beam.DoFn):
    """A splittable DoFn: one `FilePlan` in, read range by range (`transforms.io.splits`); tables of up
    to `batch_rows` records out, an ErrorRecord per bad line, and (`LINES`) the range's `LineTally`.

    The id is the `id_field` value, or `<path id>:<line>` (Parquet: `<path id>:<row>`, from 0) where
    the record has none; the path id is the file's path relative to its glob's fixed folder
    (`fileio.path_id`). A record's line is its first line. UTF-8 JSONL is parsed in ~1 MB blocks by
    pyarrow (`fast_jsonl_columns`); a block with any problem (a bad byte, a bad escape, a bad id) is
    re-read by the line-by-line parser of `text_formats`, as is every other format, so a problem
    costs one dead letter, that line only. A line longer than `max_text_bytes` is a `RecordTooLarge`
    dead letter, skipped without being held; a truncated compressed file gives its complete records
    and one dead letter (`<path id>:*`, `TruncatedInput`).

    Every line of a range is counted once by the byte layer and once where it went (a record, a dead
    letter, a blank, header or continuation line): the `LineTally` per range, which the job sums per
    file and reconciles (`reconcile_file`) before calling a run complete.

    With `ids_only` (a first pass for the duplicate-id check) it yields `(ids, sources, lines)`
    lists per batch instead of tables, and no errors and no tallies; `tally=False` leaves out the
    tallies (a second pass over the same records).
    """

    block_bytes = _BLOCK_BYTES

    def __init__(
        self,
        text_field: str = "text",
        id_field: str = "id",
        passthrough: Sequence[str] = (),
        encoding: str = "utf-8",
        batch_rows: int = 4096,
        fast_jsonl: bool = True,
        ids_only: bool = False,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        tally: bool = True,
    ):
        self._text_field = text_field
        self._id_field = id_field
        self._passthrough = tuple(passthrough)
        self._encoding = encoding
        self._batch_rows = batch_rows
        self._fast_jsonl = fast_jsonl
        self._ids_only = ids_only
        self._max_bytes = max_text_bytes
        self._tally = tally and not ids_only
        self._schema = text_batch_schema(self._passthrough)
        self._read = beam.metrics.Metrics.counter("embeddings", "text_read")

    def _too_large(self, plan: FilePlan, id_part: str, line: int, seen: int) -> beam.pvalue.TaggedOutput:
        return beam.pvalue.TaggedOutput(
            ERRORS,
            ErrorRecord(
                f"{id_part}:{line}",
                TEXT,
                f"{plan.path}:{line}",
                "read",
                "RecordTooLarge",
                f"line is at least {seen:,} bytes, longer than --max-text-bytes ({self._max_bytes:,}); not read",
            ),
        )

    def _records(
        self, parsed_lines, plan: FilePlan, id_part: str, line_offset: int = 0, too_large: Optional[dict] = None
    ) -> Iterator:
        """Tables and TaggedOutput errors from parsed lines, then the count read (an int)."""
        state = {"batch": TextBatchBuilder(self._passthrough), "count": 0}
        try:
            yield from self._parsed_records(parsed_lines, plan, id_part, line_offset, too_large, state)
        except Exception:  # noqa: BLE001 - e.g. a truncated stream: what was read before it comes out first
            if len(state["batch"]):
                yield state["batch"].take()
            yield state["count"]
            raise
        if len(state["batch"]):
            yield state["batch"].take()
        yield state["count"]

    def _problem(self, record: Mapping, raw_id) -> tuple[Optional[str], str]:
        """(why a parsed record is no text to embed, the error type), or (None, "") for a good one."""
        text = record.get(self._text_field)
        problem = text_field_problem(record, self._text_field, "--text-field")
        if problem:
            return problem, "InvalidTextField"
        if len(text) * 4 > self._max_bytes and len(text.encode("utf-8", "surrogatepass")) > self._max_bytes:
            return f"{self._text_field!r} is longer than --max-text-bytes ({self._max_bytes:,})", "RecordTooLarge"
        if _has_surrogates(text):
            return (
                f"{self._text_field!r} holds an unpaired surrogate escape (e.g. \\ud800): not valid Unicode",
                "InvalidTextField",
            )
        if isinstance(raw_id, str) and _has_surrogates(raw_id):
            return f"{self._id_field!r} holds an unpaired surrogate escape (e.g. \\ud800): not valid Unicode", "InvalidId"
        for name in self._passthrough:
            value = record.get(name)
            if isinstance(value, str) and _has_surrogates(value):
                return f"{name!r} holds an unpaired surrogate escape (e.g. \\ud800): not valid Unicode", "InvalidTextField"
        return None, ""

    def _parsed_records(
        self, parsed_lines, plan: FilePlan, id_part: str, line_offset: int, too_large: Optional[dict], state: dict
    ) -> Iterator:
        path = plan.path
        for parsed in parsed_lines:
            batch = state["batch"]
            state["count"] += 1
            line = parsed.line + line_offset
            line_id = f"{id_part}:{line}"
            if parsed.error is not None:
                if too_large and parsed.line in too_large:
                    yield self._too_large(plan, id_part, line, too_large[parsed.line])
                else:
                    yield beam.pvalue.TaggedOutput(
                        ERRORS, ErrorRecord.from_exception(line_id, TEXT, f"{path}:{line}", "read", parsed.error)
                    )
                continue
            record = parsed.record
            raw_id = record.get(self._id_field)
            unusable_id = raw_id is None or raw_id == "" or (isinstance(raw_id, str) and _has_surrogates(raw_id))
            record_id = line_id if unusable_id else passthrough_value(raw_id)
            problem, kind = self._problem(record, raw_id)
            if problem:
                yield beam.pvalue.TaggedOutput(ERRORS, ErrorRecord(record_id, TEXT, f"{path}:{line}", "read", kind, problem))
                continue
            batch.add(record_id, path, line, record[self._text_field], record)
            if len(batch) >= self._batch_rows:
                yield batch.take()

    def _columns_out(self, columns: dict, path: str) -> Iterator:
        """A clean batch (from pyarrow) as a table or an ids batch, then its count."""
        rows = len(columns["line"])
        if self._ids_only:
            yield (columns["id"].to_pylist(), [path] * rows, columns["line"].to_pylist())
            yield rows
            return
        texts = columns["text"].to_pylist()
        columns["content_sha256"] = pa.array(
            [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts], pa.string()
        )
        columns["source"] = pa.array([path] * rows, pa.string())
        yield pa.Table.from_pydict({name: columns[name] for name in self._schema.names}, schema=self._schema)
        yield rows

    def _jsonl_fast(self, blocks, plan: FilePlan, id_part: str, tally: dict) -> Iterator:
        for kind, first_line, payload in blocks:
            if kind == "too_large":
                tally["seen"] += 1
                yield self._too_large(plan, id_part, first_line, payload)
                yield 1
                continue
            stats = _line_stats(payload)
            tally["seen"] += stats[0]
            columns = fast_jsonl_columns(
                payload, first_line, id_part, self._text_field, self._id_field, self._passthrough, self._max_bytes, stats
            )
            if columns is None:  # re-read line by line: each bad line is one dead letter
                yield from self._records(
                    iter_records(io.BytesIO(payload), "jsonl", "utf-8", self._text_field, tally), plan, id_part, first_line - 1
                )
                continue
            yield from self._columns_out(columns, plan.path)

    def _lines(self, plan: FilePlan, tracker, id_part: str, handle, tally: dict) -> Iterator:
        start = range_start(plan, tracker, handle)
        if start is None:
            return
        position, first_line = start
        if self._fast_jsonl and plan.fmt == "jsonl" and _is_utf8(self._encoding):
            if is_compressed(plan.path):
                blocks = line_blocks(RangeLines(handle, tracker, 0, self._max_bytes, claim=False), 1, self.block_bytes)
            else:
                blocks = range_blocks(handle, tracker, position, first_line, self._max_bytes, self.block_bytes)
            yield from self._jsonl_fast(blocks, plan, id_part, tally)
            return
        lines, offset = range_lines(plan, tracker, handle, position, first_line, self._max_bytes)
        try:
            yield from self._records(
                iter_records(lines, plan.fmt, self._encoding, self._text_field, tally), plan, id_part, offset, lines.too_large
            )
        finally:
            tally["seen"] += lines.physical
            if lines.prepended and lines.lines_out:  # the copy of the header is no line of this range
                tally["header"] -= 1

    def _parquet_rows(self, part: pa.Table, first_row: int) -> Iterator[ParsedLine]:
        """The rows of a Parquet slice as parsed lines; a row holding bytes that are not UTF-8 is an error."""
        try:
            rows = part.to_pylist()
        except UnicodeDecodeError:  # some row holds a bad string: find it, row by row
            for i in range(part.num_rows):
                try:
                    [row] = part.slice(i, 1).to_pylist()
                except UnicodeDecodeError as exc:
                    yield ParsedLine(first_row + i, None, RecordError(f"row holds bytes that are not UTF-8 ({exc.reason})"))
                    continue
                yield ParsedLine(first_row + i, row)
            return
        for i, row in enumerate(rows):
            yield ParsedLine(first_row + i, row)

    def _parquet(self, plan: FilePlan, tracker, id_part: str, handle, tally: dict) -> Iterator:
        wanted = (self._text_field, self._id_field) + self._passthrough
        for first_row, table in range_row_groups(plan, tracker, handle, columns=wanted):
            tally["seen"] += table.num_rows
            for offset in range(0, table.num_rows, self._batch_rows):
                part = table.slice(offset, self._batch_rows)
                columns = _table_columns(
                    part,
                    first_row + offset,
                    id_part,
                    self._text_field,
                    self._id_field,
                    self._passthrough,
                    self._max_bytes,
                    check_utf8=True,
                )
                if columns is not None:
                    yield from self._columns_out(columns, plan.path)
                    continue
                yield from self._records(self._parquet_rows(part, first_row + offset), plan, id_part)

    def _items(self, plan: FilePlan, tracker, id_part: str, tally: dict) -> Iterator:
        with fileio.open_input(plan.path) as handle:
            if plan.fmt == "parquet":
                yield from self._parquet(plan, tracker, id_part, handle, tally)
            else:
                yield from self._lines(plan, tracker, id_part, handle, tally)

    @staticmethod
    def _planned(plan: FilePlan) -> int:
        """The file's lines (rows) as counted before reading, or -1."""
        if plan.error:
            return -1
        if plan.fmt == "parquet":
            return sum(plan.row_groups) if not is_compressed(plan.path) else -1
        return plan.lines if plan.fmt in LINE_FORMATS else -1

    def process(self, plan: FilePlan, tracker=beam.DoFn.RestrictionParam(FileRestrictions())) -> Iterator:  # noqa: B008 - Beam's restriction idiom
        if not isinstance(plan, FilePlan):
            raise TypeError(
                f"ReadTextFileFn reads FilePlans (from PlanFiles), not {type(plan).__name__}: use "
                "ReadTextFiles(patterns, ...) so that files are split and ids derive from their glob"
            )
        id_part = plan.id_part
        starts_file = tracker.current_restriction().start == 0
        tally = {"seen": 0, "records": 0, "blank": 0, "header": 0, "continuation": 0, "stopped": 0}
        count = 0
        if plan.error:  # the file could not be planned: one dead letter, no line read
            if tracker.try_claim(tracker.current_restriction().start):
                kind, _, message = plan.error.partition(": ")
                count, tally["stopped"] = 1, 1
                if not self._ids_only:
                    yield beam.pvalue.TaggedOutput(
                        ERRORS, ErrorRecord(f"{id_part}:*", TEXT, plan.path, "read", kind, message or kind)
                    )
        else:
            try:
                for item in self._items(plan, tracker, id_part, tally):
                    if isinstance(item, int):
                        tally["records"] += item
                    elif not self._ids_only:
                        yield item
                    elif isinstance(item, pa.Table):
                        yield (item.column("id").to_pylist(), item.column("source").to_pylist(), item.column("line").to_pylist())
                    elif isinstance(item, tuple):
                        yield item
            except Exception as exc:  # noqa: BLE001 - the rest of the range is unreadable (truncated gzip, bad Parquet)
                if fileio.is_transient_storage_error(exc):
                    raise  # storage is down, not this file: the run fails (issue 12) instead of dead-lettering it
                count += 1
                tally["stopped"] += 1
                _give_up(tracker)
                if not self._ids_only:
                    yield beam.pvalue.TaggedOutput(
                        ERRORS, ErrorRecord.from_exception(f"{id_part}:*", TEXT, plan.path, "read", exc)
                    )
        count += tally["records"]
        if not self._ids_only:
            self._read.inc(count)
        if self._tally:
            planned = self._planned(plan) if starts_file else -1
            unit = "rows" if plan.fmt == "parquet" else "lines"
            yield beam.pvalue.TaggedOutput(LINES, (plan.path, LineTally(unit, planned=planned, **tally)))


def _give_up(tracker) -> None:
    """Mark a range as done after an error (its unread rest is covered by the dead letter)."""
    try:
        tracker.try_claim(tracker.current_restriction().stop)
    except ValueError:  # already attempted there or beyond
        pass


class _Uncounted:
    """Stands in for the `text_read` counter where a pass re-reads records already counted."""

    def inc(self, n: int = 1) -> None:
        pass


class ReadTextFiles(beam.PTransform):
    """Globs in (as the pipeline's root); text batches out (tagged `records`, with the `errors`
    output and the `lines` output of `(path, LineTally)` per range), or with `ids_only` a
    PCollection of `(ids, sources, lines)` batches.

    Every matched file is read once (the first pattern matching it gives its path id), split into
    ranges of about `split_bytes` (default 64 MiB) that any worker can read (`transforms.io.splits`).
    `counted=False` leaves the `text_read` counter alone (a second pass over the same records)."""

    def __init__(
        self,
        patterns: Sequence[str],
        text_field: str = "text",
        id_field: str = "id",
        passthrough: Sequence[str] = (),
        encoding: str = "utf-8",
        batch_rows: int = 4096,
        ids_only: bool = False,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        split_bytes: int = DEFAULT_SPLIT_BYTES,
        fast_jsonl: bool = True,
        counted: bool = True,
    ):
        super().__init__()
        self._patterns = list(patterns)
        self._split_bytes = split_bytes
        self._ids_only = ids_only
        self._fn = ReadTextFileFn(
            text_field, id_field, tuple(passthrough), encoding, batch_rows, fast_jsonl, ids_only, max_text_bytes, tally=counted
        )
        if not counted:  # a second pass over the same records (an incremental run's key pass)
            self._fn._read = _Uncounted()

    def expand(self, pbegin):
        plans = pbegin | "MatchFiles" >> MatchFiles(self._patterns) | "PlanReads" >> PlanFiles(self._split_bytes)
        if self._ids_only:
            return plans | "ReadRanges" >> beam.ParDo(self._fn)
        return plans | "ReadRanges" >> beam.ParDo(self._fn).with_outputs(ERRORS, LINES, main="records")


def read_text_file(
    path: str,
    pattern: Optional[str] = None,
    split_bytes: Optional[int] = None,
    accounting: Optional[list] = None,
    **kwargs,
) -> Iterator:
    """Everything `ReadTextFileFn(**kwargs)` yields for one file, without Beam (tests, tools):
    read whole, or, with `split_bytes`, range by range as a runner would after splitting it. The
    ranges' `LineTally`s go into the list `accounting` when one is given (dropped otherwise)."""
    from transforms.io.splits import counted_plan

    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    plan = plan_file(pattern or path, path, size, split_bytes or DEFAULT_SPLIT_BYTES)
    if split_bytes:
        plan = counted_plan(plan)
    fn = ReadTextFileFn(**kwargs)
    provider = FileRestrictions()
    ranges = provider.split(plan, provider.initial_restriction(plan)) if split_bytes else [provider.initial_restriction(plan)]
    for restriction in ranges:
        tracker = OffsetRestrictionTracker(restriction)
        for item in fn.process(plan, tracker):
            if isinstance(item, beam.pvalue.TaggedOutput) and item.tag == LINES:
                if accounting is not None:
                    accounting.append(item.value[1])
                continue
            yield item
        tracker.check_done()
