"""Duplicate ids and unchanged records, found by keyed shuffles on hash buckets.

Ids are the join key users load embeddings by, so two records with one id would make the output
ambiguous. The first occurrence in (file, line) order is embedded; every later one goes to the
dead letters as `DuplicateId`, naming the occurrence that was kept.

Text (`CheckTextRecords`): a light pass over the input yields, per batch of one file, the lines
read, a 64-bit hash of each id (`ikey`) and, for incremental runs, a 64-bit key of the content and
model (`ckey`), as `transforms.state.keys.CurrentKeys` slices. Each batch is cut into `2**bits` columnar slices by the top bits of `ikey` and the
slices are grouped by bucket (Beam's shuffle; one element per batch and bucket, never one per
record); earlier runs' keys join the same buckets (`transforms.state.incremental.ReadPriorKeys`). Per
bucket, with NumPy only:

* repeated `ikey`s: every later occurrence with its first one (exceptional: only duplicates), as
  2-3 bytes a duplicate plus one (path, line) per distinct first occurrence (`DuplicatesEntry`),
  compressed for the side input (`PackedDuplicates`: runs of nearby lines cost almost nothing);
* `(ikey, ckey)` pairs found in an earlier run: the lines to skip, gathered per file and chunk of
  `CHUNK_LINES` lines into bitmaps (1 bit a line, 8 KiB a chunk).

Both reach the embedding step as multimap side inputs keyed by (file, chunk), which a worker
fetches lazily for the chunks it reads: no worker holds per-record state of the whole corpus.
Bytes per record: see docs/scaling.md.

Images (`FindDuplicateIds`): batches of ids are split into columnar slices by a hash of the id,
grouped by bucket, and each bucket yields `(id, first occurrence)` for repeated ids only.
"""

from __future__ import annotations

import pickle
import zlib
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.state.carry import CarrySlice
from transforms.state.keys import (
    CurrentKeys,
    KeyBatch,
    key_batch_rows,
    merge_key_batches,
    smallest_unsigned,
    split_positions,
)

__all__ = [
    "CARRY_ROWS",
    "CHUNK_LINES",
    "CheckTextRecords",
    "DuplicatesEntry",
    "PackedDuplicates",
    "FindDuplicateIds",
    "MergeBucketSlices",
    "LineFlags",
    "check_bucket",
    "duplicate_reason",
    "later_occurrence_reason",
    "unpack_duplicates",
    "OccurrenceKey",
]

OccurrenceKey = tuple  # (source, line): where a record was read

CHUNK_BITS = 16
CHUNK_LINES = 1 << CHUNK_BITS  # lines per skip bitmap / duplicates entry of the side inputs


class MergeBucketSlices(beam.DoFn):
    """Gathers the (bucket, KeyBatch) slices of a bundle into fewer, larger elements per bucket.

    With many buckets a batch of records leaves only a few records in each; shuffled as they are,
    Beam's per-element overhead would outweigh the 12-20 bytes a record. Slices are held per bucket
    (at most `budget_bytes` in all) and sent on when a bucket has `flush_rows` rows, or at the end
    of the bundle.
    """

    def __init__(self, bits: int, budget_bytes: int = 32 << 20, bytes_per_row: int = 24):
        self._flush_rows = int(min(1 << 16, max(256, budget_bytes // ((1 << bits) * bytes_per_row))))

    def start_bundle(self):
        self._parts: dict = {}
        self._rows: dict = {}

    def process(self, item: tuple[int, KeyBatch]) -> Iterator:
        bucket, part = item
        key = (bucket, type(part).__name__)
        self._parts.setdefault(key, []).append(part)
        self._rows[key] = self._rows.get(key, 0) + len(part.ikeys)
        if self._rows[key] >= self._flush_rows:
            yield bucket, merge_key_batches(self._parts.pop(key))
            del self._rows[key]

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        for (bucket, _), parts in self._parts.items():
            yield GlobalWindows.windowed_value((bucket, merge_key_batches(parts)))
        self._parts, self._rows = {}, {}


def _pairs(ikeys: np.ndarray, ckeys: np.ndarray) -> np.ndarray:
    """(ikey, ckey) pairs as one sortable 16-byte value each."""
    return np.ascontiguousarray(np.stack([ikeys, ckeys], axis=1)).view("V16").ravel()


def _sorted_member(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    if len(sorted_values) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    positions = np.searchsorted(sorted_values, values)
    positions[positions == len(sorted_values)] = 0
    return sorted_values[positions] == values


SKIP_LINES = "skip_lines"  # tagged output of the bucket check: ((path, chunk), line offsets)
CARRY_ROWS = "carry_rows"  # tagged output (carry-over): ((earlier file, row group), rows to copy)
REMOVED_IDS = "removed_ids"  # tagged output (incremental runs): how many earlier ids no current record has (an int a bucket)


def _carried(skip: np.ndarray, ikeys, ckeys, file_ids, lines, prior: list, first_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """(current rows, earlier positions) of the records whose earlier embedding is carried over.

    One earlier row per carried record, and one record per (id, content): the first occurrence in
    file order, then line. With the duplicate check on (`first_only`), an id is carried only when its
    first occurrence is unchanged (its later ones are dead letters or skipped, never a second row).
    The earlier row is the first with the same id and content in earlier-file order, then row: a
    chain of snapshots given together still yields one row.
    """
    candidates = skip.copy()
    if first_only:
        order = np.lexsort((lines, file_ids, ikeys))
        first = np.ones(len(order), dtype=bool)
        first[1:] = ikeys[order][1:] != ikeys[order][:-1]
        is_first = np.zeros(len(order), dtype=bool)
        is_first[order[first]] = True
        candidates &= is_first
    rows = np.flatnonzero(candidates)
    if rows.size == 0:
        return rows, np.empty(0, dtype=np.uint64)
    rows = rows[np.lexsort((lines[rows], file_ids[rows]))]
    pairs = _pairs(ikeys[rows], ckeys[rows])
    _, keep = np.unique(pairs, return_index=True)  # first in (file, line) order per (id, content)
    rows, pairs = rows[np.sort(keep)], pairs[np.sort(keep)]
    prior_pairs = np.concatenate([_pairs(p.ikeys, p.ckeys) for p in prior])
    positions = np.concatenate([p.positions for p in prior])
    by_position = np.argsort(positions, kind="stable")
    order = by_position[np.argsort(prior_pairs[by_position], kind="stable")]  # by pair, then position
    found = np.searchsorted(prior_pairs[order], pairs, "left")  # skipped: always present
    return rows, positions[order[found]]


def _carry_by_group(rows: np.ndarray, positions: np.ndarray, part_of_row, path_of_part, lines) -> Iterator:
    """((earlier file, row group), (rows in the group, current paths, path of each, current lines))."""
    if len(rows) == 0:
        return
    files, groups, in_group = split_positions(positions)
    key = files * (1 << 24) + groups
    order = np.argsort(key, kind="stable")
    cuts = np.flatnonzero(np.diff(key[order])) + 1
    for picked in np.split(order, cuts):
        parts = part_of_row[rows[picked]]
        used, local = np.unique(parts, return_inverse=True)
        yield beam.pvalue.TaggedOutput(
            CARRY_ROWS,
            (
                (int(files[picked[0]]), int(groups[picked[0]])),
                CarrySlice(
                    in_group[picked].astype(np.uint32),
                    [path_of_part[k] for k in used],
                    smallest_unsigned(local),
                    smallest_unsigned(lines[rows[picked]]),
                ),
            ),
        )


def check_bucket(item: tuple[int, Iterable[KeyBatch]], carry: bool = False, first_only: bool = True) -> Iterator:
    """Duplicates (main output) and lines to skip (SKIP_LINES) of one bucket.

    Main output: ((path, chunk), DuplicatesEntry) for the later occurrences of repeated ids in
    that chunk (one or more entries per chunk and bucket). SKIP_LINES: ((path, chunk), uint16
    offsets in the chunk) of records an earlier run embedded with the same id, content and model.
    With `carry` (earlier slices hold positions), CARRY_ROWS: which earlier rows to copy into this
    run's output (`_carried`), by earlier row group. REMOVED_IDS (incremental runs): the number of
    distinct earlier ids of the bucket that no current record has (records that left the input),
    when not 0.

    A bucket without earlier slices (every bucket of a run without --incremental-from) is read
    slice by slice, twice (`_stream_duplicates`; Beam re-iterates a GroupByKey's values): one hot id
    puts all its records in one bucket, and a worker's memory must not grow with them. With earlier
    slices, the whole bucket is decoded at once (`_check_whole`: ~73 bytes a row at its peak).
    """
    _, parts = item
    if iter(parts) is parts:  # a one-shot iterator: the streaming check reads the slices twice
        parts = list(parts)
    streamed = _stream_duplicates(parts)
    if streamed is not None:
        yield from streamed
        return
    yield from _check_whole(parts, carry, first_only)


_LINE_BITS = 40  # a record's place in file order as one uint64: file index << 40 | line
_PENDING_ROWS = 1 << 16  # rows gathered (16 bytes each) before they are merged into the bucket's table of ids
_BUFFER_ROWS = 1 << 18  # later occurrences held (10 bytes each) before they go out as DuplicatesEntries


def _places(batch: CurrentKeys) -> tuple:
    """(paths, file indexes, path index of each row, lines, ikeys, places) of one slice, or None
    when a place does not fit in 64 bits (lines from 2**40, files from 2**24: never in practice)."""
    paths, indexes, part_of_row, lines, ikeys, _ = key_batch_rows(batch)
    if len(lines) and (int(lines.min()) < 0 or int(lines.max()) >> _LINE_BITS or max(indexes) >> (64 - _LINE_BITS - 1)):
        return None
    places = (np.asarray(indexes, dtype=np.uint64) << np.uint64(_LINE_BITS))[part_of_row] | lines.astype(np.uint64)
    return paths, indexes, part_of_row, lines, ikeys, places


def _new_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """True where a run of equal keys begins in `sorted_keys` (not empty)."""
    new_run = np.empty(len(sorted_keys), dtype=bool)
    new_run[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_run[1:])
    return new_run


def _first_places(ikeys: np.ndarray, places: np.ndarray, twice: Optional[np.ndarray] = None) -> tuple:
    """(distinct ikeys, sorted; the smallest place of each; whether each occurs more than once).

    With `twice` (merging tables: `ikeys` are sorted runs), a key is repeated when it was in one of
    them too; a stable sort merges sorted runs in about linear time."""
    if len(ikeys) == 0:
        return ikeys, places, np.zeros(0, dtype=bool)
    order = np.argsort(ikeys, kind=None if twice is None else "stable")
    sorted_keys = ikeys[order]
    new_run = _new_runs(sorted_keys)
    starts = np.flatnonzero(new_run)
    del new_run
    keys = sorted_keys[starts]
    del sorted_keys
    repeated = np.diff(starts, append=len(order)) > 1
    if twice is not None:
        repeated |= np.logical_or.reduceat(twice[order], starts)
    return keys, np.minimum.reduceat(places[order], starts), repeated


def _merged(table: tuple, pending: list) -> tuple:
    """`table` with the rows of `pending` ((ikeys, places) of slices) in it."""
    added = _first_places(np.concatenate([k for k, _ in pending]), np.concatenate([p for _, p in pending]))
    return _first_places(*(np.concatenate([t, a]) for t, a in zip(table, added)))


def _stream_duplicates(parts: Iterable[KeyBatch]) -> Optional[Iterator]:
    """The duplicates of a bucket of this run's slices only, in memory for its distinct ids and one
    slice (never for its rows): pass 1 keeps the first place (file order, then line) of each id and
    whether it occurs twice, pass 2 gives every row of a repeated id whose place is not its id's
    first. None when the bucket holds earlier slices (or a place that does not fit in 64 bits): the
    caller checks it whole."""
    table = (np.empty(0, np.uint64), np.empty(0, np.uint64), np.zeros(0, dtype=bool))
    pending: list = []
    pending_rows = 0
    path_of_file: dict = {}
    for part in parts:
        if not isinstance(part, CurrentKeys):
            return None
        decoded = _places(part)
        if decoded is None:
            return None
        paths, indexes, _, _, ikeys, places = decoded
        path_of_file.update(zip(indexes, paths))
        pending.append((ikeys, places))
        pending_rows += len(ikeys)
        del decoded, ikeys, places
        if pending_rows > max(len(table[0]), _PENDING_ROWS):
            table = _merged(table, pending)
            pending, pending_rows = [], 0
    if pending:
        table = _merged(table, pending)
    del pending
    keys, firsts, repeated = table
    del table
    if not repeated.any():  # no id twice (the usual bucket): nothing more to read
        return iter(())
    return _later_occurrences(parts, keys[repeated], firsts[repeated], path_of_file)


def _later_occurrences(parts: Iterable[KeyBatch], keys: np.ndarray, firsts: np.ndarray, path_of_file: dict) -> Iterator:
    """Pass 2: ((path, chunk), DuplicatesEntry) of the rows of repeated ids (`keys`, sorted) that are
    not their id's first occurrence, gathered per chunk (at most `_BUFFER_ROWS` held) so that a
    chunk usually gets one entry."""
    held: dict = {}
    held_rows = 0
    slots = np.uint64(max(1 << 10, 1 << (16 * len(keys)).bit_length()) - 1)  # a filter of >= 16 slots an id
    maybe = np.zeros(int(slots) + 1, dtype=bool)  # low bits of the repeated ids (the top ones are the bucket's)
    maybe[keys & slots] = True
    for part in parts:
        paths, _, part_of_row, lines, ikeys, places = _places(part)
        rows = np.flatnonzero(maybe[ikeys & slots])  # a few rows besides the repeated ids' ones
        at = np.minimum(np.searchsorted(keys, ikeys[rows]), len(keys) - 1)
        first_of_row = firsts[at]
        hit = (keys[at] == ikeys[rows]) & (first_of_row != places[rows])
        later, first_of_row = rows[hit], first_of_row[hit]
        del rows, at, hit, places
        if later.size == 0:
            continue
        for key, picked in _by_chunk(None, later, part_of_row, paths, lines, positions=True):
            rows = later[picked]
            held.setdefault(key, []).append(((lines[rows] & (CHUNK_LINES - 1)).astype(np.uint16), first_of_row[picked]))
            held_rows += len(rows)
        if held_rows >= _BUFFER_ROWS:
            yield from _held_entries(held, path_of_file)
            held, held_rows = {}, 0
    yield from _held_entries(held, path_of_file)


def _held_entries(held: dict, path_of_file: dict) -> Iterator:
    line_mask = np.uint64((1 << _LINE_BITS) - 1)
    for key, pieces in held.items():
        offsets = np.concatenate([o for o, _ in pieces])
        distinct, which = np.unique(np.concatenate([f for _, f in pieces]), return_inverse=True)
        first_paths = [path_of_file[int(f)] for f in (distinct >> np.uint64(_LINE_BITS)).tolist()]
        yield (
            key,
            DuplicatesEntry(offsets, first_paths, (distinct & line_mask).astype(np.int64), smallest_unsigned(which.reshape(-1))),
        )


def _check_whole(parts: Iterable[KeyBatch], carry: bool, first_only: bool) -> Iterator:
    """check_bucket on the whole bucket decoded at once (buckets with earlier runs' slices)."""
    current, prior = [], []
    for part in parts:
        (current if isinstance(part, CurrentKeys) else prior).append(part)
    if not current:
        if prior:  # every earlier id of this bucket left the input
            yield beam.pvalue.TaggedOutput(REMOVED_IDS, int(np.unique(np.concatenate([p.ikeys for p in prior])).size))
        return
    path_of_part, index_of_part, part_of_row, lines, ikeys, ckeys = key_batch_rows(merge_key_batches(current))
    del current
    if prior:
        gone = int((~_sorted_member(np.unique(ikeys), np.unique(np.concatenate([p.ikeys for p in prior])))).sum())
        if gone:
            yield beam.pvalue.TaggedOutput(REMOVED_IDS, gone)
    file_ids = smallest_unsigned(np.asarray(index_of_part, dtype=np.int64))[part_of_row]

    if prior and ckeys is not None:
        prior_pairs = np.unique(np.concatenate([_pairs(p.ikeys, p.ckeys) for p in prior]))
        skip = _sorted_member(prior_pairs, _pairs(ikeys, ckeys))
        del prior_pairs
        if skip.any():
            rows = np.flatnonzero(skip)
            yield from _by_chunk(SKIP_LINES, rows, part_of_row, path_of_part, lines)
            if carry:
                rows, positions = _carried(skip, ikeys, ckeys, file_ids, lines, prior, first_only)
                yield from _carry_by_group(rows, positions, part_of_row, path_of_part, lines)

    # A bucket may hold every record of one id (all duplicates): as few per-row arrays at once as can be.
    order = np.lexsort((lines, file_ids, ikeys))  # by id hash, then file order, then line
    del file_ids
    new_run = _new_runs(ikeys[order])
    later = np.flatnonzero(~new_run)
    if later.size == 0:
        return
    run_starts = np.flatnonzero(new_run)
    del new_run
    later_rows = order[later]
    first_rows = order[run_starts[np.searchsorted(run_starts, later, side="right") - 1]]
    del order, later, run_starts
    for key, picked in _by_chunk(None, later_rows, part_of_row, path_of_part, lines, positions=True):
        yield key, _duplicates_entry(later_rows[picked], first_rows[picked], part_of_row, path_of_part, lines)


class DuplicatesEntry(NamedTuple):
    """The value of the `duplicates` side input for one (path, chunk) from one bucket.

    2-3 bytes a duplicate plus one (path, line) per distinct id, so a worker holds the same few
    bytes per duplicate however many records share one id, never a path per duplicate."""

    offsets: np.ndarray  # uint16: the later occurrences' lines, as offsets in the chunk
    first_paths: list  # the distinct first occurrences they point at: paths ...
    first_lines: np.ndarray  # ... and lines
    which: np.ndarray  # for each later occurrence, the index of its first one (smallest unsigned type)


class PackedDuplicates:
    """A `DuplicatesEntry` as the `duplicates` side input carries it: offsets delta-coded, zlib'ed.

    The local runner keeps a side input's elements encoded several times over (the PCollection,
    its per-key grouping, the state it serves) for the rest of the run, and the worker caches what
    it fetched: at 2-3 bytes a duplicate raw, ~12 bytes a duplicate in all at 1M duplicates (issue 19
    (6)). The later occurrences of an id are mostly runs of nearby lines, whose deltas compress to
    almost nothing. Decoded on each `unpack` (a chunk's entries, when a table of that chunk is
    screened), never kept decoded."""

    __slots__ = ("encoded",)

    def __init__(self, encoded: bytes):
        self.encoded = encoded

    @classmethod
    def pack(cls, entry: DuplicatesEntry) -> PackedDuplicates:
        deltas = np.diff(entry.offsets.astype(np.uint16), prepend=np.uint16(0))  # mod 2**16: cumsum undoes it
        payload = (deltas, list(entry.first_paths), entry.first_lines, entry.which)
        return cls(zlib.compress(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL), 1))

    def unpack(self) -> DuplicatesEntry:
        deltas, first_paths, first_lines, which = pickle.loads(zlib.decompress(self.encoded))
        return DuplicatesEntry(np.cumsum(deltas, dtype=np.uint16), first_paths, first_lines, which)

    def __reduce__(self):
        return PackedDuplicates, (self.encoded,)

    def __repr__(self) -> str:
        return f"PackedDuplicates({len(self.encoded)} bytes)"


def unpack_duplicates(entry) -> DuplicatesEntry:
    """A value of the `duplicates` side input (`PackedDuplicates`, or a `DuplicatesEntry`) decoded."""
    return entry.unpack() if isinstance(entry, PackedDuplicates) else entry


def _packed(item: tuple[tuple[str, int], DuplicatesEntry]) -> tuple[tuple[str, int], PackedDuplicates]:
    key, entry = item
    return key, PackedDuplicates.pack(entry)


def _duplicates_entry(later_rows: np.ndarray, first_rows: np.ndarray, part_of_row, path_of_part, lines) -> DuplicatesEntry:
    distinct, which = np.unique(first_rows, return_inverse=True)
    offsets = (lines[later_rows] & (CHUNK_LINES - 1)).astype(np.uint16)
    first_paths = [path_of_part[k] for k in part_of_row[distinct]]
    return DuplicatesEntry(offsets, first_paths, lines[distinct].astype(np.int64), smallest_unsigned(which.reshape(-1)))


def _by_chunk(tag, rows: np.ndarray, part_of_row, path_of_part, lines, positions: bool = False) -> Iterator:
    """Group `rows` by (path, chunk of CHUNK_LINES lines)."""
    group = part_of_row[rows] * (1 << 24) + (lines[rows] >> CHUNK_BITS)
    order = np.argsort(group, kind="stable")
    cuts = np.flatnonzero(np.diff(group[order])) + 1
    for picked in np.split(order, cuts):
        first = rows[picked[0]]
        key = (path_of_part[part_of_row[first]], int(lines[first] >> CHUNK_BITS))
        if positions:
            yield key, picked
        else:
            offsets = (lines[rows[picked]] & (CHUNK_LINES - 1)).astype(np.uint16)
            yield beam.pvalue.TaggedOutput(tag, (key, offsets))


def _bitmap(item: tuple[tuple[str, int], Iterable[np.ndarray]]) -> tuple[tuple[str, int], bytes]:
    """One chunk's skip offsets (from every bucket) as a bitmap of CHUNK_LINES bits."""
    key, parts = item
    flags = np.zeros(CHUNK_LINES, dtype=bool)
    for offsets in parts:
        flags[offsets.astype(np.int64)] = True
    return key, np.packbits(flags).tobytes()


class _CheckBucketsFn(beam.DoFn):
    """`check_bucket` as a DoFn whose `process` takes the element only.

    Not `beam.FlatMap(check_bucket, carry, first_only)`: with extra arguments Beam invokes the
    function through its per-window invoker, which keeps the last element it was given (the
    argument list is reused) until the stage's cached bundle processor is used again, i.e. for the
    rest of a local run. The last element is a whole bucket; with one hot id that is every record's
    key slices (~9 bytes a record, held while the embedding step and the dead letters' sinks run)."""

    def __init__(self, carry: bool, first_only: bool):
        self._carry = carry
        self._first_only = first_only

    def process(self, item: tuple[int, Iterable[KeyBatch]]) -> Iterator:
        return check_bucket(item, self._carry, self._first_only)


class CheckTextRecords(beam.PTransform):
    """Key batches in (`(bucket, KeyBatch)`, current and earlier runs' flattened); two multimaps out:

    * `duplicates`: (path, chunk) -> `PackedDuplicates` (a `DuplicatesEntry`: offsets of later
      occurrences, their first ones; `unpack_duplicates` decodes it);
    * `skips`: (path, chunk) -> bitmap (bytes, CHUNK_LINES bits) of lines an earlier run embedded;
    * with `carry` (earlier keys read with positions): `carry`, a keyed PCollection (not a side
      input) of ((earlier file, row group), (rows, current paths, path of each row, current lines))
      saying which earlier rows to copy; `first_only` when the duplicate check is on;
    * `removed`: ints summing to the number of earlier ids no current record has (0 elements when
      no earlier run is joined).
    """

    def __init__(self, bits: int, carry: bool = False, first_only: bool = True):
        super().__init__()
        self._bits = bits
        self._carry = carry
        self._first_only = first_only

    def expand(self, keyed):
        checked = (
            keyed
            | "MergeSlices" >> beam.ParDo(MergeBucketSlices(self._bits))
            | "GroupKeyBuckets" >> beam.GroupByKey()
            | "CheckBuckets"
            >> beam.ParDo(_CheckBucketsFn(self._carry, self._first_only)).with_outputs(
                SKIP_LINES, CARRY_ROWS, REMOVED_IDS, main="duplicates"
            )
        )
        skips = checked[SKIP_LINES] | "GroupSkipChunks" >> beam.GroupByKey() | "SkipBitmaps" >> beam.Map(_bitmap)
        duplicates = checked.duplicates | "PackDuplicates" >> beam.Map(_packed)  # fused with the check
        return {"duplicates": duplicates, "skips": skips, "carry": checked[CARRY_ROWS], "removed": checked[REMOVED_IDS]}


class LineFlags:
    """The side inputs of CheckTextRecords, looked up for one table of records (vectorised)."""

    def __init__(self, skips=None, duplicates=None):
        self._skips = skips
        self._duplicates = duplicates

    def _groups(self, table: pa.Table):
        sources = table.column("source").combine_chunks().dictionary_encode()
        codes = np.asarray(sources.indices.fill_null(0))
        lines = np.asarray(table.column("line").fill_null(0).combine_chunks(), dtype=np.int64)
        chunks = lines >> CHUNK_BITS
        group = codes.astype(np.int64) * (1 << 24) + chunks
        for value in np.unique(group):
            rows = np.flatnonzero(group == value)
            yield (sources.dictionary[int(value >> 24)].as_py(), int(value & ((1 << 24) - 1))), rows, lines[rows]

    def skipped(self, table: pa.Table) -> np.ndarray:
        """Boolean mask: rows an earlier run embedded with the same id, content and model."""
        mask = np.zeros(table.num_rows, dtype=bool)
        if self._skips is None or table.num_rows == 0:
            return mask
        for key, rows, lines in self._groups(table):
            bitmaps = list(self._skips[key])
            if not bitmaps:
                continue
            bits = np.unpackbits(np.frombuffer(bitmaps[0], dtype=np.uint8))
            for other in bitmaps[1:]:
                bits |= np.unpackbits(np.frombuffer(other, dtype=np.uint8))
            mask[rows] = bits[lines & (CHUNK_LINES - 1)].astype(bool)
        return mask

    def first_occurrences(self, table: pa.Table) -> dict[int, tuple[str, int]]:
        """{row: (path, line) of the first occurrence} for rows whose id occurred earlier."""
        found: dict[int, tuple[str, int]] = {}
        if self._duplicates is None or table.num_rows == 0:
            return found
        for key, rows, lines in self._groups(table):
            offsets = lines & (CHUNK_LINES - 1)
            for entry in self._duplicates[key]:  # (packed) DuplicatesEntries: one or more per bucket
                later, first_paths, first_lines, which = unpack_duplicates(entry)
                order = np.argsort(later, kind="stable")
                sorted_later = later[order].astype(np.int64)
                at = np.minimum(np.searchsorted(sorted_later, offsets), max(len(sorted_later) - 1, 0))
                hit = np.flatnonzero(sorted_later[at] == offsets) if len(sorted_later) else at[:0]
                for row, first in zip(rows[hit].tolist(), which[order[at[hit]]].tolist()):
                    found[row] = (first_paths[first], int(first_lines[first]))
        return found


# --- images -------------------------------------------------------------------------------------


def _bucket_of(ids: Sequence[str], buckets: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(i.encode("utf-8", "surrogatepass")) % buckets for i in ids), dtype=np.int64, count=len(ids))


def _split(occurrences: tuple[list, list, list], buckets: int) -> Iterator[tuple[int, pa.Table]]:
    ids, sources, lines = occurrences
    if not ids:
        return
    table = pa.table(
        {"id": pa.array(ids, pa.string()), "source": pa.array(sources, pa.string()), "line": pa.array(lines, pa.int64())}
    )
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
    rows = table.filter(pc.is_in(table.column("id"), value_set=repeated)).sort_by(
        [("id", "ascending"), ("source", "ascending"), ("line", "ascending")]
    )
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
    return later_occurrence_reason(record_id, source, line)


def later_occurrence_reason(record_id: str, source: str, line: Optional[int]) -> str:
    """The DuplicateId message: which occurrence was kept."""
    where = source if line is None else f"{source}:{line}"
    return f"id {record_id!r} was already used at {where}; the first occurrence is embedded"
