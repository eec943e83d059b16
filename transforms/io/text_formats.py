"""Parsing of text-record files: JSONL, CSV, TSV, Parquet and plain text, one record at a time.

Shared by the Beam reader (`transforms.io.text_read`) and by `train-text`, so that a file the job
reads is read the same way for training. A bad line never stops a file: it comes out as a
`ParsedLine` with `error` set, and the caller decides what to do with it.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
from typing import IO, Iterator, Optional

__all__ = [
    "FORMATS",
    "ParsedLine",
    "RecordError",
    "UnclosedQuote",
    "MAX_RECORD_LINES",
    "MAX_RECORD_CHARS",
    "new_tally",
    "detect_format",
    "iter_records",
    "nesting_exceeds",
]

FORMATS = ("jsonl", "csv", "tsv", "parquet", "lines")

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSED = (".gz", ".bz2", ".zst", ".deflate", ".lzma", ".xz")


class RecordError(ValueError):
    """A line or row that cannot be read as a record."""


class UnclosedQuote(RecordError):
    """A CSV quoted field that does not close within the bounds of a record (`MAX_RECORD_LINES`,
    `MAX_RECORD_CHARS`) or before the end of the input: its first line is the dead letter."""


MAX_RECORD_LINES = 100  # a CSV record (quoted fields with newlines) spans at most this many lines
MAX_RECORD_CHARS = 1 << 20  # ... and this many characters (about 1 MiB) once it spans more than one line


@dataclasses.dataclass(frozen=True)
class ParsedLine:
    """One input line/row: `record` on success, `error` otherwise. `line` is 1-based (Parquet: row, 0-based)."""

    line: int
    record: Optional[dict]
    error: Optional[Exception] = None


def nesting_exceeds(data: bytes, limit: int = 1000) -> bool:
    """Whether JSON text may nest deeper than `limit` (`{`/`[` minus `}`/`]`, counted over the whole
    buffer, strings included): a cheap, vectorised pre-screen before a C++ parser that crashes on deep
    nesting (pyarrow's JSON reader segfaults at ~20,000 levels). It can over-count (brackets inside
    strings, unbalanced lines), never under-count; an over-count only sends a block to the careful
    line-by-line parser."""
    import numpy as np

    if len(data) <= limit:
        return False
    codes = np.frombuffer(data, dtype=np.uint8)
    step = (codes == 0x7B).astype(np.int32) + (codes == 0x5B)
    step -= (codes == 0x7D).astype(np.int32) + (codes == 0x5D)
    return bool(np.cumsum(step).max(initial=0) > limit)


def detect_format(path: str) -> str:
    """The format of a file from its extension (after any compression suffix); plain lines otherwise."""
    name = path.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return "lines"


def _raw_lines(binary: IO[bytes]) -> Iterator[bytes]:
    """Lines of a binary file by `readline`, which every handle has (Beam's CompressedFile for .gz
    and friends has no `__iter__`)."""
    return iter(binary.readline, b"")


def _decoded_lines(binary: IO[bytes], encoding: str) -> Iterator[tuple[int, Optional[str], Optional[Exception]]]:
    """(line number, text, error) for each line; a line that does not decode is an error, not a stop.

    A UTF-8 byte-order mark at the start of the file is dropped (spreadsheet exports often have one).
    """
    for number, raw in enumerate(_raw_lines(binary), start=1):
        if (
            number == 1
            and raw.startswith(b"\xef\xbb\xbf")
            and encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")
        ):
            raw = raw[3:]
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            yield (
                number,
                None,
                RecordError(
                    f"line is not valid {encoding} (byte {exc.start}: {raw[exc.start : exc.start + 4]!r}); "
                    f"is the file in another encoding? (see the encoding flag)"
                ),
            )
            continue
        if "\x00" in text:
            yield number, None, RecordError("line contains NUL bytes")
            continue
        yield number, text, None


def _iter_jsonl(binary: IO[bytes], encoding: str, text_field: str, tally: dict) -> Iterator[ParsedLine]:
    for number, text, error in _decoded_lines(binary, encoding):
        if error is not None:
            yield ParsedLine(number, None, error)
            continue
        if not text.strip():
            tally["blank"] += 1
            continue  # blank lines between JSON records are not records
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield ParsedLine(number, None, RecordError(f"malformed JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"))
            continue
        except RecursionError:  # nested deeper than Python's parser goes: this line only
            yield ParsedLine(number, None, RecordError("JSON nested too deeply to parse"))
            continue
        if not isinstance(value, dict):
            yield ParsedLine(number, None, RecordError(f"JSON line is a {type(value).__name__}, not an object"))
            continue
        yield ParsedLine(number, value)


class _QuoteRunsOn(Exception):
    """Raised into the CSV reader when a record has run past the bounds of a quoted field."""


def _iter_delimited(
    binary: IO[bytes], encoding: str, delimiter: str, tally: dict, max_lines: int, max_chars: int
) -> Iterator[ParsedLine]:
    """CSV/TSV with a header row; rows with the wrong number of fields are errors.

    A record is numbered by its first line. A record spanning several lines (a quoted field with
    newlines) may span at most `max_lines` lines and `max_chars` characters, and its quote must
    close before the end of the input: otherwise its first line is one `UnclosedQuote` dead letter
    and reading resumes at the line after it (so one stray quote costs one line, not the rest of
    the file). The lines of a multi-line record after its first are counted in
    `tally["continuation"]`, the header row in `tally["header"]`, blank lines in `tally["blank"]`."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    decoded = _decoded_lines(binary, encoding)
    pending: list[ParsedLine] = []  # lines that do not decode, met while reading a row: reported before it
    replay: collections.deque = collections.deque()  # lines to read again after an unclosed quote
    row: list = []  # (number, text) of the lines of the row being read
    state = {"chars": 0, "ended": False}

    def lines() -> Iterator[str]:
        while True:
            if replay:
                number, text = replay.popleft()
            else:
                item = next(decoded, None)
                if item is None:
                    state["ended"] = True
                    return
                number, text, error = item
                if error is not None:
                    pending.append(ParsedLine(number, None, error))
                    continue
            row.append((number, text))
            state["chars"] += len(text)
            if len(row) > 1 and (len(row) > max_lines or state["chars"] > max_chars):
                raise _QuoteRunsOn
            yield text

    def unclosed(why: str) -> ParsedLine:
        """The dead letter of a row whose quoted field does not close; its other lines are read again."""
        replay.extendleft(reversed(row[1:]))
        return ParsedLine(row[0][0], None, UnclosedQuote(f"unclosed quote: the quoted field that starts on this line {why}"))

    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
    header: Optional[list[str]] = None
    while True:
        row.clear()
        state["chars"], state["ended"] = 0, False
        try:
            fields = next(reader)
        except StopIteration:
            break
        except _QuoteRunsOn:  # the reader is left inside the field: a new one reads on from the replayed lines
            yield from pending
            pending.clear()
            yield unclosed(f"runs past {max_lines} lines or {max_chars:,} characters without closing; the record is not read")
            reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
            continue
        except csv.Error as exc:
            yield from pending
            pending.clear()
            tally["continuation"] += max(len(row) - 1, 0)
            yield ParsedLine(row[0][0] if row else 0, None, RecordError(f"malformed {kind}: {exc}"))
            continue
        yield from pending
        pending.clear()
        if state["ended"] and row:  # the input ended inside a quoted field (the reader asked for more)
            yield unclosed("does not close before the end of the input; the record is not read")
            reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
            continue
        tally["continuation"] += len(row) - 1
        if header is None:
            tally["header"] += 1
            header = [name.strip() for name in fields]
            if "\x00" in "".join(header):
                raise RecordError("header row contains NUL bytes")
            continue
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            tally["blank"] += 1
            continue  # blank line
        if len(fields) != len(header):
            yield ParsedLine(row[0][0], None, RecordError(f"row has {len(fields)} fields, the header has {len(header)}"))
            continue
        yield ParsedLine(row[0][0], dict(zip(header, fields)))
    yield from pending


def _iter_lines(binary: IO[bytes], encoding: str, text_field: str) -> Iterator[ParsedLine]:
    for number, text, error in _decoded_lines(binary, encoding):
        if error is not None:
            yield ParsedLine(number, None, error)
            continue
        yield ParsedLine(number, {text_field: text.rstrip("\r\n")})


def _iter_parquet(binary: IO[bytes]) -> Iterator[ParsedLine]:
    import pyarrow.parquet as pq

    from transforms.io import fileio

    data = binary.read()  # Parquet needs random access; Beam's GCS reader seeks, but a buffer is simplest
    parquet = pq.ParquetFile(io.BytesIO(data))
    row = 0
    for batch in fileio.parquet_batches(parquet, 8192):
        for record in batch.to_pylist():
            yield ParsedLine(row, record)
            row += 1


def new_tally() -> dict:
    """The counters `iter_records` keeps of the lines that are no record: blank lines, header rows,
    and the lines of multi-line CSV records after their first."""
    return {"blank": 0, "header": 0, "continuation": 0}


def iter_records(
    binary: IO[bytes],
    fmt: str,
    encoding: str = "utf-8",
    text_field: str = "text",
    tally: Optional[dict] = None,
    max_record_lines: int = MAX_RECORD_LINES,
    max_record_chars: int = MAX_RECORD_CHARS,
) -> Iterator[ParsedLine]:
    """Every record of an open binary file in format `fmt` (see `FORMATS`).

    Every line ends up in exactly one place: a record or an error (`ParsedLine`, numbered by the
    record's first line), or, counted in `tally` (`new_tally()`; optional), a blank line, a header
    row or a continuation line of a multi-line CSV record. A CSV record may span at most
    `max_record_lines` lines and `max_record_chars` characters (see `_iter_delimited`)."""
    tally = new_tally() if tally is None else tally
    if fmt == "jsonl":
        return _iter_jsonl(binary, encoding, text_field, tally)
    if fmt == "csv":
        return _iter_delimited(binary, encoding, ",", tally, max_record_lines, max_record_chars)
    if fmt == "tsv":
        return _iter_delimited(binary, encoding, "\t", tally, max_record_lines, max_record_chars)
    if fmt == "parquet":
        return _iter_parquet(binary)
    if fmt == "lines":
        return _iter_lines(binary, encoding, text_field)
    raise ValueError(f"unknown text format {fmt!r}; expected one of {', '.join(FORMATS)}")
