"""Parsing of text-record files: JSONL, CSV, TSV, Parquet and plain text, one record at a time.

Shared by the Beam reader (`transforms.text_read`) and by `train-text`, so that a file the job
reads is read the same way for training. A bad line never stops a file: it comes out as a
`ParsedLine` with `error` set, and the caller decides what to do with it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import IO, Iterator, Optional

__all__ = [
    "FORMATS",
    "ParsedLine",
    "RecordError",
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


def _iter_jsonl(binary: IO[bytes], encoding: str, text_field: str) -> Iterator[ParsedLine]:
    for number, text, error in _decoded_lines(binary, encoding):
        if error is not None:
            yield ParsedLine(number, None, error)
            continue
        if not text.strip():
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


def _iter_delimited(binary: IO[bytes], encoding: str, delimiter: str) -> Iterator[ParsedLine]:
    """CSV/TSV with a header row; rows with the wrong number of fields are errors."""
    pending: list[ParsedLine] = []
    state = {"line": 0}

    def lines() -> Iterator[str]:
        for number, text, error in _decoded_lines(binary, encoding):
            state["line"] = number
            if error is not None:
                pending.append(ParsedLine(number, None, error))
                continue
            yield text

    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
    header: Optional[list[str]] = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield from pending
            pending.clear()
            yield ParsedLine(state["line"], None, RecordError(f"malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}"))
            continue
        yield from pending
        pending.clear()
        number = state["line"]
        if header is None:
            header = [name.strip() for name in row]
            if "\x00" in "".join(header):
                raise RecordError("header row contains NUL bytes")
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            yield ParsedLine(number, None, RecordError(f"row has {len(row)} fields, the header has {len(header)}"))
            continue
        yield ParsedLine(number, dict(zip(header, row)))
    yield from pending


def _iter_lines(binary: IO[bytes], encoding: str, text_field: str) -> Iterator[ParsedLine]:
    for number, text, error in _decoded_lines(binary, encoding):
        if error is not None:
            yield ParsedLine(number, None, error)
            continue
        yield ParsedLine(number, {text_field: text.rstrip("\r\n")})


def _iter_parquet(binary: IO[bytes]) -> Iterator[ParsedLine]:
    import pyarrow.parquet as pq

    from transforms import fileio

    data = binary.read()  # Parquet needs random access; Beam's GCS reader seeks, but a buffer is simplest
    parquet = pq.ParquetFile(io.BytesIO(data))
    row = 0
    for batch in fileio.parquet_batches(parquet, 8192):
        for record in batch.to_pylist():
            yield ParsedLine(row, record)
            row += 1


def iter_records(binary: IO[bytes], fmt: str, encoding: str = "utf-8", text_field: str = "text") -> Iterator[ParsedLine]:
    """Every record of an open binary file in format `fmt` (see `FORMATS`)."""
    if fmt == "jsonl":
        return _iter_jsonl(binary, encoding, text_field)
    if fmt == "csv":
        return _iter_delimited(binary, encoding, ",")
    if fmt == "tsv":
        return _iter_delimited(binary, encoding, "\t")
    if fmt == "parquet":
        return _iter_parquet(binary)
    if fmt == "lines":
        return _iter_lines(binary, encoding, text_field)
    raise ValueError(f"unknown text format {fmt!r}; expected one of {', '.join(FORMATS)}")
