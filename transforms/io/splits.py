"""Splittable reads of record files: byte ranges aligned to line starts, Parquet row groups.

Beam's own machinery does the splitting: `ReadFileSplitsFn` subclasses are splittable DoFns whose
restriction is an `OffsetRange` tracked by an `OffsetRestrictionTracker`, as Beam's file sources
do. A runner may hand the initial ranges to different workers and split them further while they
run (Dataflow's dynamic work rebalancing); every claim is made before the lines it covers are
used, so a record is read by exactly one range whatever the split points.

How a file is planned (`PlanFiles`), by kind:

* **JSONL, CSV/TSV and plain lines, uncompressed, larger than `split_bytes`** (default 64 MiB):
  byte ranges of `split_bytes`. A record belongs to the range where its (first) line starts.
  Line numbers stay the file's own 1-based numbers: a first, cheap pass counts the newlines (and,
  for CSV, the `"` characters) of every `split_bytes` chunk of the file in parallel, one element
  per chunk; the counts are gathered per file into a prefix array that travels with the file's
  plan (16 bytes per chunk: 1,600 chunks for a 100 GB file). Each range then knows the number of
  lines before its start without reading the file from the beginning: in all, the file is read
  twice (once counted with `bytes.count`, once parsed), and no worker reads more than its range
  plus the end of its last line (plus at most one chunk when a runner splits a range mid-chunk).
  The same pass gives the file's physical lines (`FilePlan.lines`), which the job's line accounting
  reconciles against; a file not counted here is counted by its reader as it reads
  (`RangeLines.physical`, the JSONL blocks' newlines), without another pass.
* **CSV quoted fields spanning lines**: a quoted field may hold newlines (RFC 4180). A range
  starts at the first line start at or after its offset where the number of `"` before it is
  even (outside any quoted field), and reads on past its end while inside one, so such a record
  is read whole by the range where it starts. This is exact for well-formed CSV; for a file with
  stray unbalanced quotes, every line still belongs to exactly one range (all ranges use the same
  rule), and a record broken by the split is a visible `RecordError` dead letter, never silent.
  The parser bounds a quoted field (`text_formats.MAX_RECORD_LINES`, `MAX_RECORD_CHARS`): a quote
  that does not close in time is one `UnclosedQuote` dead letter and parsing resumes at the next
  line, while the range, still counting the quote, reads on to a boundary every range agrees on.
  Files no larger than `split_bytes` are never split. TSV (no quoting) splits at any line start.
* **Compressed files (.gz, .bz2, ...)** cannot be entered mid-stream: one unsplittable range.
* **Parquet**: ranges of whole row groups of about `split_bytes` (from the footer), read with
  seeks through `pq.ParquetFile` on a Beam `FileSystems` handle (local or gs://), never whole.
* A file that cannot be opened or planned (missing, corrupt footer) is one range that yields a
  dead letter naming the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

from transforms.io import fileio
from transforms.io.text_formats import detect_format

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "counted_plan",
    "DEFAULT_SPLIT_BYTES",
    "DEFAULT_MAX_TEXT_BYTES",
    "LINE_FORMATS",
    "FilePlan",
    "MatchFiles",
    "PlanFiles",
    "plan_file",
    "FileRestrictions",
    "RecordTooLarge",
    "is_compressed",
    "RangeLines",
    "find_record_start",
    "range_start",
    "range_lines",
    "range_row_groups",
    "range_blocks",
    "line_blocks",
    "read_header",
    "counts_before",
    "iter_range_records",
]

DEFAULT_SPLIT_BYTES = 64 << 20  # 64 MiB ranges, as Beam's own file sources use
DEFAULT_MAX_TEXT_BYTES = 10 << 20  # a longer line is a RecordTooLarge dead letter
LINE_FORMATS = ("jsonl", "csv", "tsv", "lines")
_READ_CHUNK = 1 << 20
_COMPRESSED = (".gz", ".bz2", ".zst", ".deflate", ".lzma", ".xz")


class RecordTooLarge(ValueError):
    """A line longer than --max-text-bytes: skipped without being held, one dead letter."""


class FilePlan(NamedTuple):
    """What a reader needs to know about one matched file before reading any range of it."""

    pattern: str  # the glob/path that matched it (ids derive from the path relative to it)
    path: str  # the path as matched (the `source` column)
    size: int  # bytes on storage
    fmt: str  # jsonl, csv, tsv, parquet or lines
    split_bytes: int = DEFAULT_SPLIT_BYTES
    newlines: tuple = ()  # newlines before byte k*split_bytes, k = 0.. (empty: count from 0)
    quotes: tuple = ()  # likewise for `"` (CSV only)
    row_groups: tuple = ()  # Parquet: rows per row group
    group_bytes: tuple = ()  # Parquet: bytes per row group
    error: Optional[str] = None  # "Type: message" when the file cannot be planned
    lines: int = -1  # counted line-based files: the file's physical lines (-1: not counted before reading)

    @property
    def id_part(self) -> str:
        """The stable id part of this file (its path relative to the pattern's fixed folder)."""
        return fileio.path_id(self.path, self.pattern)

    @property
    def unsplittable(self) -> bool:
        return bool(self.error) or is_compressed(self.path) or self.fmt not in LINE_FORMATS + ("parquet",)


def is_compressed(path: str) -> bool:
    """Whether a path names a compressed stream (read whole, never split)."""
    return path.lower().endswith(_COMPRESSED)


# --- Matching: (pattern, path, size), each file once -----------------------------------------


def _match(indexed_pattern: tuple[int, str]) -> Iterator[tuple[str, tuple[int, str, int]]]:
    index, pattern = indexed_pattern
    found = fileio.literal_match(pattern)  # a pattern naming a file as written is that file (`meta/[x].jpg`)
    if found is None:
        found = [metadata for result in FileSystems.match([pattern]) for metadata in result.metadata_list]
    for metadata in found:
        yield metadata.path, (index, pattern, int(metadata.size_in_bytes))


def _first_pattern(entry: tuple[str, Sequence[tuple[int, str, int]]]) -> tuple[str, str, int]:
    path, matches = entry
    _, pattern, size = min(matches)
    return pattern, path, size


class MatchFiles(beam.PTransform):
    """Globs/paths in (as the pipeline's root); `(pattern, path, size)` out for every matched file,
    each file once even when several patterns match it (the first pattern given is its pattern)."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (
            pbegin
            | "Patterns" >> beam.Create(list(enumerate(self._patterns)))
            | "Match" >> beam.FlatMap(_match)
            | "OncePerFile" >> beam.GroupByKey()
            | "FirstPattern" >> beam.Map(_first_pattern)
        )


# --- Planning -----------------------------------------------------------------------------------


def plan_file(pattern: str, path: str, size: int, split_bytes: int = DEFAULT_SPLIT_BYTES) -> FilePlan:
    """A file's plan without its chunk counts (a Parquet footer is read here). A local FIFO, socket,
    device or folder is planned as an error (one dead letter), never opened."""
    fmt = detect_format(path)
    plan = FilePlan(pattern, path, size, fmt, split_bytes)
    try:
        fileio.check_regular_file(path)
    except fileio.NotARegularFile as exc:
        return plan._replace(error=f"NotARegularFile: {exc}")
    if fmt == "parquet" and not is_compressed(path):
        try:
            import pyarrow.parquet as pq

            with fileio.open_input(path) as handle:
                meta = pq.ParquetFile(handle).metadata
                groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
            return plan._replace(
                row_groups=tuple(g.num_rows for g in groups), group_bytes=tuple(g.total_byte_size for g in groups)
            )
        except Exception as exc:  # noqa: BLE001 - a corrupt or vanished file: one dead letter
            if fileio.is_transient_storage_error(exc):
                raise  # storage is down, not this file: the run fails instead of dead-lettering it
            return plan._replace(error=f"{type(exc).__name__}: {exc}")
    return plan


def _needs_counts(plan: FilePlan) -> bool:
    return plan.fmt in LINE_FORMATS and not is_compressed(plan.path) and plan.size > plan.split_bytes


def counted_plan(plan: FilePlan) -> FilePlan:
    """`plan` with its line counts where it needs them, counted here chunk by chunk, without Beam
    (what `PlanFiles` does in a pipeline): for `text_read.read_text_file`, tests and tools."""
    if not _needs_counts(plan):
        return plan
    chunks = -(-plan.size // plan.split_bytes)
    return _assemble((plan.path, [_count_chunk((plan, k))[1] for k in range(chunks)]))


def _plan_or_count(matched: tuple[str, str, int], split_bytes: int) -> Iterator:
    plan = plan_file(*matched, split_bytes=split_bytes)
    if not _needs_counts(plan):
        yield plan
        return
    chunks = -(-plan.size // split_bytes)
    for k in range(chunks):
        yield beam.pvalue.TaggedOutput("chunks", (plan, k))


def _count_chunk(task: tuple[FilePlan, int]) -> tuple[str, tuple[FilePlan, int, int, int, bool]]:
    """Newlines and quotes in chunk k of a file: one sequential read of `split_bytes`; and whether
    the chunk ends with a newline (for the last chunk: whether the file's last line has one)."""
    plan, k = task
    start = k * plan.split_bytes
    stop = min(start + plan.split_bytes, plan.size)
    with fileio.open_input(plan.path) as handle:
        handle.seek(start)
        newlines, quotes, last = _count_bytes(handle, stop - start, quotes=plan.fmt == "csv", last_byte=True)
    return plan.path, (plan, k, newlines, quotes, last == b"\n")


def _count_bytes(handle, length: int, quotes: bool = True, last_byte: bool = False):
    """(newlines, `"` characters) in the next `length` bytes of `handle` (fewer at the end of the
    file), read `_READ_CHUNK` at a time; the quotes are not counted (0) when `quotes` is false.
    With `last_byte`, the last byte read comes third (b"" when none was)."""
    newlines = quote_count = 0
    last = b""
    while length > 0:
        data = handle.read(min(_READ_CHUNK, length))
        if not data:
            break
        length -= len(data)
        newlines += data.count(b"\n")
        last = data[-1:]
        if quotes:
            quote_count += data.count(b'"')
    return (newlines, quote_count, last) if last_byte else (newlines, quote_count)


def _assemble(entry: tuple[str, Sequence[tuple[FilePlan, int, int, int, bool]]]) -> FilePlan:
    """A file's plan with its prefix counts, and its physical lines (`lines`: the newlines, plus one
    for a last line without a newline), which the job's line accounting reconciles against."""
    _, counts = entry
    counts = sorted(counts, key=lambda c: c[1])
    plan = counts[0][0]
    newlines, quotes, n, q = [], [], 0, 0
    for _, _, chunk_newlines, chunk_quotes, _ in counts:
        newlines.append(n)
        quotes.append(q)
        n += chunk_newlines
        q += chunk_quotes
    lines = n + (0 if counts[-1][4] or plan.size == 0 else 1)
    return plan._replace(newlines=tuple(newlines), quotes=tuple(quotes) if plan.fmt == "csv" else (), lines=lines)


class PlanFiles(beam.PTransform):
    """`(pattern, path, size)` in; a `FilePlan` per file out, with the per-chunk newline counts of
    every large line-based file (counted in parallel, one element per `split_bytes` chunk)."""

    def __init__(self, split_bytes: int = DEFAULT_SPLIT_BYTES):
        super().__init__()
        if split_bytes <= 0:
            raise ValueError(f"split_bytes must be positive, got {split_bytes}")
        self._split_bytes = split_bytes

    def expand(self, matched):
        planned = matched | "Plan" >> beam.FlatMap(_plan_or_count, self._split_bytes).with_outputs("chunks", main="ready")
        counted = (
            planned.chunks
            | "SpreadChunks" >> beam.Reshuffle()
            | "CountChunkLines" >> beam.Map(_count_chunk)
            | "ChunksPerFile" >> beam.GroupByKey()
            | "LineCounts" >> beam.Map(_assemble)
        )
        return (planned.ready, counted) | "AllPlans" >> beam.Flatten()


# --- Restrictions -------------------------------------------------------------------------------


class FileRestrictions(RestrictionProvider):
    """Offset ranges over a file's bytes (line formats) or row groups (Parquet); one unsplittable
    unit for compressed files and files that could not be planned."""

    def initial_restriction(self, plan: FilePlan) -> OffsetRange:
        if not isinstance(plan, FilePlan):
            raise TypeError(f"splittable file reads take FilePlans (from PlanFiles), not {type(plan).__name__}")
        if plan.error or (plan.fmt not in LINE_FORMATS and plan.fmt != "parquet") or is_compressed(plan.path):
            return OffsetRange(0, 1)
        if plan.fmt == "parquet":
            return OffsetRange(0, len(plan.row_groups))
        return OffsetRange(0, plan.size)

    def split(self, plan: FilePlan, restriction: OffsetRange) -> Iterator[OffsetRange]:
        if plan.unsplittable:
            yield restriction
        elif plan.fmt == "parquet":
            start, size = restriction.start, 0
            for index in range(restriction.start, restriction.stop):
                size += plan.group_bytes[index]
                if size >= plan.split_bytes:
                    yield OffsetRange(start, index + 1)
                    start, size = index + 1, 0
            if start < restriction.stop:
                yield OffsetRange(start, restriction.stop)
        elif plan.newlines:  # counted: split at chunk boundaries, where line counts are known
            yield from restriction.split(plan.split_bytes, 1)
        else:
            yield restriction

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, plan: FilePlan, restriction: OffsetRange) -> float:
        if plan.fmt == "parquet" and not plan.unsplittable:
            return float(sum(plan.group_bytes[restriction.start : restriction.stop]))
        if plan.unsplittable:
            return float(max(plan.size, 1))
        return float(restriction.size())


# --- Reading a byte range of a line-based file ---------------------------------------------------


def counts_before(plan: FilePlan, handle, position: int) -> tuple[int, int]:
    """(newlines, quotes) in bytes [0, position): the plan's prefix counts at the chunk boundary
    below `position`, plus a count of the bytes from there (none when `position` is a boundary)."""
    if plan.newlines:
        k = min(position // plan.split_bytes, len(plan.newlines) - 1)
        base, newlines = k * plan.split_bytes, plan.newlines[k]
        quotes = plan.quotes[k] if plan.quotes else 0
    else:
        base, newlines, quotes = 0, 0, 0
    handle.seek(base)
    more_newlines, more_quotes = _count_bytes(handle, position - base)
    return newlines + more_newlines, quotes + more_quotes


def _skip_line(handle, limit: int = _READ_CHUNK) -> tuple[int, int, bool]:
    """Read to just past the next newline without holding the line: (bytes, quotes, found a newline)."""
    consumed = quotes = 0
    while True:
        piece = handle.readline(limit)
        if not piece:
            return consumed, quotes, False
        consumed += len(piece)
        quotes += piece.count(b'"')
        if piece.endswith(b"\n"):
            return consumed, quotes, True


def find_record_start(plan: FilePlan, handle, start: int, quoted: bool) -> Optional[tuple[int, int]]:
    """(position, 1-based line number) of the first record boundary at or after `start`: a line
    start (for CSV: one outside any quoted field). None when the file ends first."""
    if start == 0:
        handle.seek(0)
        return 0, 1
    newlines, quotes = counts_before(plan, handle, start)
    handle.seek(start - 1)
    previous = handle.read(1)
    position = start
    if previous != b"\n":
        consumed, q, found = _skip_line(handle)
        if not found:
            return None
        position, newlines, quotes = start + consumed, newlines + 1, quotes + q
    while quoted and quotes % 2:  # inside a quoted field: the record started in an earlier range
        consumed, q, found = _skip_line(handle)
        if not found:
            return None
        position, newlines, quotes = position + consumed, newlines + 1, quotes + q
    handle.seek(position)
    return position, newlines + 1


class RangeLines:
    """A file-like view with `readline()` over the lines of one range, for the line-by-line parsers.

    It claims each record boundary from the tracker before handing out its line (and ends where a
    claim fails: the rest belongs to another range), reads on past the range while inside a CSV
    quoted field, prepends `header` (CSV/TSV ranges that do not start the file), and replaces a
    line longer than `max_bytes` by a one-line stand-in (`b"\\x00\\n"`, which every parser reports
    as an error) after skipping it without holding it; its line number goes into `too_large`.
    With `claim=False` (a compressed stream, one unsplittable unit) it reads to the end.
    """

    def __init__(
        self,
        handle,
        tracker,
        position: int,
        max_bytes: int,
        quoted: bool = False,
        header: Optional[bytes] = None,
        claim: bool = True,
    ):
        self._handle = handle
        self._tracker = tracker
        self._position = position
        self._max = max_bytes
        self._quoted = quoted
        self._quotes = 0
        self._header = header
        self._claim = claim
        self._last_claim = -1
        self._done = False
        self.lines_out = 0  # lines handed out (the header included)
        self.physical = 0  # lines of the file read (the prepended header not included): the accounting's count
        self.prepended = header is not None  # whether the first line handed out is a copy of the header
        self.too_large: dict[int, int] = {}  # line number handed out -> bytes seen (at least)

    def _finish(self) -> None:
        self._done = True
        if self._claim:
            stop = self._tracker.current_restriction().stop
            if stop > self._last_claim:
                self._tracker.try_claim(stop)  # refused: marks the range as done

    def readline(self, size: int = -1) -> bytes:
        if self._header is not None:
            header, self._header = self._header, None
            self.lines_out += 1
            return header
        if self._done:
            return b""
        at_boundary = not (self._quoted and self._quotes % 2)
        if at_boundary and self._claim:
            self._last_claim = self._position
            if not self._tracker.try_claim(self._position):
                self._done = True
                return b""
        line = self._handle.readline(self._max + 1)
        if not line:
            self._finish()
            return b""
        self.lines_out += 1
        self.physical += 1
        if len(line) > self._max and not line.endswith(b"\n"):
            consumed, quotes, _ = _skip_line(self._handle)
            self.too_large[self.lines_out] = len(line) + consumed
            self._position += len(line) + consumed
            self._quotes += line.count(b'"') + quotes
            return b"\x00\n"
        self._position += len(line)
        if self._quoted:
            self._quotes += line.count(b'"')
        return line


def range_start(plan: FilePlan, tracker, handle) -> Optional[tuple[int, int]]:
    """(position, 1-based line number) where the records of a line-based range start, or None when
    the range has none to read.

    A compressed file is one unsplittable unit: its one claim is made here and reading starts at
    (0, 1), with nothing more to claim (None when the claim fails). Otherwise it is the first record
    boundary at or after the range's start (`find_record_start`); when there is none, the range is
    marked done and None is returned."""
    restriction = tracker.current_restriction()
    if is_compressed(plan.path):  # one unsplittable unit: read to the end, nothing more to claim
        if not tracker.try_claim(restriction.start):
            return None
        return 0, 1
    found = find_record_start(plan, handle, restriction.start, quoted=plan.fmt == "csv")
    if found is None:
        tracker.try_claim(restriction.stop)  # refused: no line starts in this range
    return found


def range_lines(plan: FilePlan, tracker, handle, position: int, first_line: int, max_bytes: int) -> tuple[RangeLines, int]:
    """The lines of a range from its start (`range_start`), for the line-by-line parsers, and the
    number to add to a parser's 1-based line numbers to get the file's own. A CSV/TSV range that
    does not start the file reads the file's header first (handed out as the range's first line)."""
    header = None
    if plan.fmt in ("csv", "tsv") and position > 0:  # every range reads the file's header
        handle.seek(0)
        header = handle.readline(max_bytes + 1)
        handle.seek(position)
    lines = RangeLines(
        handle, tracker, position, max_bytes, quoted=plan.fmt == "csv", header=header, claim=not is_compressed(plan.path)
    )
    return lines, first_line - (2 if header is not None else 1)


def range_blocks(
    handle, tracker, position: int, first_line: int, max_bytes: int, block_bytes: int = _READ_CHUNK
) -> Iterator[tuple]:
    """Blocks of whole lines of an uncompressed range (`handle` is at `position`, a line start),
    for pyarrow's JSON reader: `("block", first line, bytes)`, and `("too_large", line, bytes
    seen)` for each line longer than `max_bytes` (skipped without being held). Each block's last
    line start is claimed before the block is handed out, so a split while reading never gives a
    line to two ranges; reading ends at the first line start the tracker refuses."""
    line = first_line
    pending = b""
    pending_start = position  # file offset of pending[0]
    last_claim = -1

    def finish() -> None:
        stop = tracker.current_restriction().stop
        if stop > last_claim:
            tracker.try_claim(stop)  # refused: marks the range as done

    if position == 0:
        head = handle.read(3)
        if head == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark
            pending_start = 3
        else:
            pending = head
    while True:
        chunk = handle.read(block_bytes)
        eof = not chunk
        data = pending + chunk
        start_offset = pending_start
        if not data:
            finish()
            return
        cut = len(data) if eof else data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) <= max_bytes:
                pending = data
                continue
            # one line longer than the limit: skip the rest of it without holding it
            last_claim = start_offset
            if not tracker.try_claim(start_offset):
                return
            consumed, _, found = _skip_line(handle)
            yield "too_large", line, len(data) + consumed
            line += 1
            pending, pending_start = b"", start_offset + len(data) + consumed
            if not found:
                finish()
                return
            continue
        block, pending, pending_start = data[:cut], data[cut:], start_offset + cut
        last = block.rfind(b"\n", 0, len(block) - 1) + 1  # the block's last line start
        last_claim = start_offset + last
        if not tracker.try_claim(start_offset + last):
            stop_rel = tracker.current_restriction().stop - start_offset
            if stop_rel <= 0:
                return
            block = block[: block.find(b"\n", stop_rel - 1) + 1]  # the lines starting before stop
            if block:
                yield from _block_lines_within(block, line, max_bytes)
            return
        yield from _block_lines_within(block, line, max_bytes)
        line += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        if eof:
            finish()
            return


def _block_lines_within(block: bytes, first_line: int, max_bytes: int) -> Iterator[tuple]:
    """The block itself, or, when some of its lines exceed `max_bytes`, the runs of lines around
    them and a `too_large` item for each."""
    if len(block) <= max_bytes:
        yield "block", first_line, block
        return
    import numpy as np

    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + 1
    if not len(ends) or ends[-1] != len(block):
        ends = np.append(ends, len(block))
    starts = np.concatenate(([0], ends[:-1]))
    long = np.flatnonzero(ends - starts > max_bytes)
    if not len(long):
        yield "block", first_line, block
        return
    previous = 0
    for index in long.tolist():
        if index > previous:
            yield "block", first_line + previous, block[starts[previous] : starts[index]]
        yield "too_large", first_line + index, int(ends[index] - starts[index])
        previous = index + 1
    if previous < len(ends):
        yield "block", first_line + previous, block[starts[previous] :]


def line_blocks(lines: RangeLines, first_line: int, block_bytes: int = _READ_CHUNK) -> Iterator[tuple]:
    """Blocks of whole lines built by `readline` (for compressed streams, where a failed `read`
    would lose the complete lines before a truncation): the same items as `range_blocks`. When
    the stream turns out truncated, the block of complete lines so far comes out first."""
    parts: list[bytes] = []
    size = 0
    block_first = first_line
    number = first_line - 1

    def lines_until_end() -> Iterator[tuple]:
        nonlocal parts, size, block_first, number
        while True:
            line = lines.readline()
            if not line:
                return
            number += 1
            if lines.too_large.get(lines.lines_out):
                if parts:
                    yield "block", block_first, b"".join(parts)
                    parts, size = [], 0
                yield "too_large", number, lines.too_large[lines.lines_out]
                block_first = number + 1
                continue
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            parts.append(line)
            size += len(line)
            if size >= block_bytes:
                yield "block", block_first, b"".join(parts)
                parts, size, block_first = [], 0, number + 1

    try:
        yield from lines_until_end()
    except Exception:  # noqa: BLE001 - e.g. TruncatedInput: the complete lines so far first
        if parts:
            yield "block", block_first, b"".join(parts)
        raise
    if parts:
        yield "block", block_first, b"".join(parts)


def read_header(path: str, max_bytes: int) -> bytes:
    """The first line of a file (a CSV/TSV header), at most `max_bytes` long."""
    with fileio.open_input(path) as handle:
        return handle.readline(max_bytes + 1)


def range_row_groups(plan: FilePlan, tracker, handle, columns: Optional[Sequence[str]] = None) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) for each row group of a Parquet range, claimed before it is read; rows
    are numbered 0-based as in the whole file. `columns`: only those of them the file has (all
    columns when None). The file is read with seeks (footer, then each row group), never whole,
    except a compressed Parquet file, which cannot seek: it is read whole, once, as one unit."""
    import io

    import pyarrow.parquet as pq

    restriction = tracker.current_restriction()
    if is_compressed(plan.path):
        if not tracker.try_claim(restriction.start):
            return
        parquet = pq.ParquetFile(io.BytesIO(handle.read()))
        groups, first_row, claim = range(parquet.num_row_groups), 0, False
    else:
        parquet = pq.ParquetFile(handle)
        groups, first_row, claim = range(restriction.start, restriction.stop), sum(plan.row_groups[: restriction.start]), True
    if columns is not None:
        names = parquet.schema_arrow.names
        columns = [c for c in dict.fromkeys(columns) if c in names]
    for index in groups:
        if claim and not tracker.try_claim(index):
            return
        table = parquet.read_row_group(index, columns=columns)
        yield first_row, table
        first_row += table.num_rows


def iter_range_records(
    plan: FilePlan, tracker, handle, encoding: str, field: str, max_bytes: int = DEFAULT_MAX_TEXT_BYTES
) -> Iterator:
    """The records of one range, parsed line by line (`text_formats.iter_records`), as
    `ParsedLine`s numbered as in the whole file (1-based lines; Parquet: 0-based rows); a line
    longer than `max_bytes` is a `RecordTooLarge` error. Truncated streams raise (TruncatedInput)
    after the complete records."""
    from transforms.io.text_formats import ParsedLine, iter_records

    if plan.fmt == "parquet":
        for first_row, table in range_row_groups(plan, tracker, handle):
            for row, record in enumerate(table.to_pylist(), first_row):
                yield ParsedLine(row, record)
        return
    start = range_start(plan, tracker, handle)
    if start is None:
        return
    lines, offset = range_lines(plan, tracker, handle, *start, max_bytes)
    for parsed in iter_records(lines, plan.fmt, encoding, field):
        if parsed.error is not None and parsed.line in lines.too_large:
            yield ParsedLine(
                parsed.line + offset,
                None,
                RecordTooLarge(
                    f"line is at least {lines.too_large[parsed.line]:,} bytes, longer than the limit ({max_bytes:,}); not read"
                ),
            )
        else:
            yield ParsedLine(parsed.line + offset, parsed.record, parsed.error)
