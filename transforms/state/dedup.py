"""Duplicate ids and unchanged records, found by keyed shuffles on hash buckets.

Ids are the join key users load embeddings by, so two records with one id would make the output
ambiguous. The first occurrence in (file, line) order is embedded; every later one goes to the
dead letters as `DuplicateId`, naming the occurrence that was kept.

Text (`CheckTextRecords`): a light pass over the input yields, per batch of one file, the lines
read, a 64-bit hash of each id (`ikey`) and, for incremental runs, a 64-bit key of the content and
model (`ckey`). Each batch is cut into `2**bits` columnar slices by the top bits of `ikey` and the
slices are grouped by bucket (Beam's shuffle; one element per batch and bucket, never one per
record); earlier runs' keys join the same buckets (`transforms.state.incremental.ReadPriorKeys`). Per
bucket, with NumPy only:

* repeated `ikey`s: every later occurrence with its first one (exceptional: only duplicates), as
  2-3 bytes a duplicate plus one (path, line) per distinct first occurrence (`DuplicatesEntry`);
* `(ikey, ckey)` pairs found in an earlier run: the lines to skip, gathered per file and chunk of
  `CHUNK_LINES` lines into bitmaps (1 bit a line, 8 KiB a chunk).

Both reach the embedding step as multimap side inputs keyed by (file, chunk), which a worker
fetches lazily for the chunks it reads: no worker holds per-record state of the whole corpus.
Bytes per record: see docs/scaling.md.

Images (`FindDuplicateIds`): batches of ids are split into columnar slices by a hash of the id,
grouped by bucket, and each bucket yields `(id, first occurrence)` for repeated ids only.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "CARRY_ROWS",
    "CHUNK_LINES",
    "CheckTextRecords",
    "DuplicatesEntry",
    "FindDuplicateIds",
    "KeyBatch",
    "MergeBucketSlices",
    "merge_key_batches",
    "key_batch_rows",
    "LineFlags",
    "bucket_bits_for",
    "duplicate_reason",
    "hash64",
    "later_occurrence_reason",
    "id_hashes",
    "split_by_bucket",
    "text_key_batch",
    "OccurrenceKey",
]

OccurrenceKey = tuple  # (source, line): where a record was read

CHUNK_BITS = 16
CHUNK_LINES = 1 << CHUNK_BITS  # lines per skip bitmap / duplicates entry of the side inputs
_LINE_BITS = 40  # an occurrence inside a bucket is (file index << 40) | line
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


# --- a vectorised 64-bit string hash ----------------------------------------------------------


def _fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (full avalanche), in place."""
    h ^= h >> np.uint64(33)
    h *= _M1
    h ^= h >> np.uint64(33)
    h *= _M2
    h ^= h >> np.uint64(33)
    return h


def _as_arrow_strings(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowException, UnicodeEncodeError):  # lone surrogates: hash their surrogatepass bytes
        return pa.array([v.encode("utf-8", "surrogatepass") for v in values], pa.binary())


def hash64(values) -> np.ndarray:
    """A stable 64-bit hash of each string (UTF-8 bytes), vectorised over an Arrow string array or a list.

    8-byte little-endian words of each string are mixed in one at a time (MurmurHash3's finaliser
    after each word, the length in the seed), in NumPy over Arrow's buffers: no per-row Python.
    The same bytes give the same hash in every process. Nulls hash like empty strings.
    """
    array = _as_arrow_strings(values)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
        offset_type = np.int64
    elif pa.types.is_string(array.type) or pa.types.is_binary(array.type):
        offset_type = np.int32
    else:
        raise TypeError(f"hash64 needs strings, got {array.type}")
    n = len(array)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[array.offset : array.offset + n + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None and buffers[2].size else np.zeros(0, np.uint8)
    data = np.concatenate([data, np.zeros(8, np.uint8)])  # reads past a string's end stay in bounds
    starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
    if array.null_count:
        lengths = np.where(np.asarray(array.is_null()), 0, lengths)
    h = _fmix((lengths.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    byte = np.arange(8, dtype=np.int64)
    active = np.flatnonzero(lengths > 0)
    word = 0
    while active.size:
        pos = starts[active, None] + word * 8 + byte
        chunk = data[pos]
        chunk[(word * 8 + byte)[None, :] >= lengths[active, None]] = 0  # bytes past the end count as 0
        words = np.ascontiguousarray(chunk).view("<u8").ravel()
        h[active] = _fmix((h[active] ^ words) * _GOLDEN)
        word += 1
        active = active[lengths[active] > word * 8]
    return h


def id_hashes(ids) -> np.ndarray:
    """The 64-bit hash of each id (`ikey`): what duplicates are found by and buckets are cut by."""
    return hash64(ids)


# --- bucketing ----------------------------------------------------------------------------------


def bucket_bits_for(estimated_records: float, per_bucket: int = 1 << 20, low: int = 4, high: int = 14) -> int:
    """log2 of the bucket count: about `per_bucket` records a bucket, between 2**low and 2**high buckets."""
    wanted = max(1.0, float(estimated_records) / per_bucket)
    return int(min(high, max(low, math.ceil(math.log2(wanted)))))


def _buckets_of(ikeys: np.ndarray, bits: int) -> np.ndarray:
    return (ikeys >> np.uint64(64 - bits)).astype(np.int64)


def split_by_bucket(ikeys: np.ndarray, bits: int) -> Iterator[tuple[int, np.ndarray]]:
    """(bucket, row positions) for each bucket that the rows with these `ikeys` fall in."""
    if len(ikeys) == 0:
        return
    buckets = _buckets_of(ikeys, bits)
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    cuts = np.flatnonzero(np.diff(sorted_buckets)) + 1
    for part in np.split(order, cuts):
        yield int(buckets[part[0]]), part


# A slice of records in one bucket: ("cur", paths, file indexes, rows per path, first line per
# path, line deltas, ikeys, ckeys or None), rows sorted by path then line, so that a line costs
# the smallest unsigned type that holds the largest gap (usually 2 bytes) and a path nothing per
# row; earlier runs' keys: ("prior", ikeys, ckeys). Tuples of NumPy arrays: compact when pickled.
KeyBatch = tuple


def _smallest_unsigned(values: np.ndarray) -> np.ndarray:
    top = int(values.max()) if len(values) else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.uint64)


def _encode_rows(
    paths: list, indexes: list, part_of_row: np.ndarray, lines: np.ndarray, ikeys: np.ndarray, ckeys: Optional[np.ndarray]
) -> KeyBatch:
    """The compact KeyBatch of rows given with their path (index into `paths`) and line."""
    part_of_row = np.asarray(part_of_row, dtype=np.int64)
    lines = np.asarray(lines, dtype=np.int64)
    order = np.lexsort((lines, part_of_row))
    part_of_row, lines, ikeys = part_of_row[order], lines[order], ikeys[order]
    ckeys = None if ckeys is None else ckeys[order]
    counts = np.bincount(part_of_row, minlength=len(paths))
    used = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[used])[:-1]]).astype(np.int64)
    deltas = np.diff(lines, prepend=lines[:1] if len(lines) else lines)
    deltas[starts] = 0
    return (
        "cur",
        [paths[i] for i in used],
        [indexes[i] for i in used],
        counts[used],
        lines[starts],
        _smallest_unsigned(deltas),
        ikeys,
        ckeys,
    )


def key_batch_rows(batch: KeyBatch) -> tuple[list, list, np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(paths, file indexes, path index of each row, line of each row, ikeys, ckeys) of a "cur" KeyBatch."""
    _, paths, indexes, counts, bases, deltas, ikeys, ckeys = batch
    part_of_row = np.repeat(np.arange(len(counts)), counts)
    steps = deltas.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    steps[starts] = bases
    total = np.cumsum(steps)
    lines = total - np.repeat(total[starts] - steps[starts], counts)
    return paths, indexes, part_of_row, lines, ikeys, ckeys


def text_key_batch(path: str, file_index: int, lines, ikeys: np.ndarray, ckeys: Optional[np.ndarray], bits: int) -> Iterator:
    """(bucket, KeyBatch) slices of one batch of records of one file."""
    lines = np.asarray(lines, dtype=np.int64)
    for bucket, rows in split_by_bucket(ikeys, bits):
        yield (
            bucket,
            _encode_rows(
                [path],
                [file_index],
                np.zeros(len(rows), np.int64),
                lines[rows],
                ikeys[rows],
                None if ckeys is None else ckeys[rows],
            ),
        )


def merge_key_batches(parts: Sequence[KeyBatch]) -> KeyBatch:
    """One KeyBatch from several of the same kind (and bucket)."""
    if parts[0][0] == "prior":  # ("prior", ikeys, ckeys[, positions]): positions in carry-over runs
        return ("prior",) + tuple(np.concatenate([p[k] for p in parts]) for k in range(1, len(parts[0])))
    paths, indexes, part_rows, lines, ikeys, ckeys, position = [], [], [], [], [], [], {}
    for part in parts:
        part_paths, part_indexes, part_of_row, part_lines, part_ikeys, part_ckeys = key_batch_rows(part)
        local = []
        for path, index in zip(part_paths, part_indexes):
            if path not in position:
                position[path] = len(paths)
                paths.append(path)
                indexes.append(index)
            local.append(position[path])
        part_rows.append(np.asarray(local, dtype=np.int64)[part_of_row])
        lines.append(part_lines)
        ikeys.append(part_ikeys)
        ckeys.append(part_ckeys)
    merged_ckeys = None if any(c is None for c in ckeys) else np.concatenate(ckeys)
    return _encode_rows(paths, indexes, np.concatenate(part_rows), np.concatenate(lines), np.concatenate(ikeys), merged_ckeys)


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
        key = (bucket, part[0])
        self._parts.setdefault(key, []).append(part)
        self._rows[key] = self._rows.get(key, 0) + len(part[-2] if part[0] == "cur" else part[1])
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
    prior_pairs = np.concatenate([_pairs(p[1], p[2]) for p in prior])
    positions = np.concatenate([p[3] for p in prior])
    by_position = np.argsort(positions, kind="stable")
    order = by_position[np.argsort(prior_pairs[by_position], kind="stable")]  # by pair, then position
    found = np.searchsorted(prior_pairs[order], pairs, "left")  # skipped: always present
    return rows, positions[order[found]]


def _carry_by_group(rows: np.ndarray, positions: np.ndarray, part_of_row, path_of_part, lines) -> Iterator:
    """((earlier file, row group), (rows in the group, current paths, path of each, current lines))."""
    from transforms.state.incremental import split_positions

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
                (
                    in_group[picked].astype(np.uint32),
                    [path_of_part[k] for k in used],
                    _smallest_unsigned(local),
                    _smallest_unsigned(lines[rows[picked]]),
                ),
            ),
        )


def _check_bucket(item: tuple[int, Iterable[KeyBatch]], carry: bool = False, first_only: bool = True) -> Iterator:
    """Duplicates (main output) and lines to skip (SKIP_LINES) of one bucket.

    Main output: ((path, chunk), DuplicatesEntry) for the later occurrences of repeated ids in
    that chunk. SKIP_LINES: ((path, chunk), uint16 offsets in the chunk) of records an earlier run
    embedded with the same id, content and model. With `carry` (earlier slices hold positions),
    CARRY_ROWS: which earlier rows to copy into this run's output (`_carried`), by earlier row group.
    REMOVED_IDS (incremental runs): the number of distinct earlier ids of the bucket that no current
    record has (records that left the input), when not 0.
    """
    _, parts = item
    current, prior = [], []
    for part in parts:
        (current if part[0] == "cur" else prior).append(part)
    if not current:
        if prior:  # every earlier id of this bucket left the input
            yield beam.pvalue.TaggedOutput(REMOVED_IDS, int(np.unique(np.concatenate([p[1] for p in prior])).size))
        return
    path_of_part, index_of_part, part_of_row, lines, ikeys, ckeys = key_batch_rows(merge_key_batches(current))
    del current
    if prior:
        gone = int((~_sorted_member(np.unique(ikeys), np.unique(np.concatenate([p[1] for p in prior])))).sum())
        if gone:
            yield beam.pvalue.TaggedOutput(REMOVED_IDS, gone)
    file_ids = np.asarray(index_of_part, dtype=np.int64)[part_of_row]

    if prior and ckeys is not None:
        prior_pairs = np.unique(np.concatenate([_pairs(p[1], p[2]) for p in prior]))
        skip = _sorted_member(prior_pairs, _pairs(ikeys, ckeys))
        del prior_pairs
        if skip.any():
            rows = np.flatnonzero(skip)
            yield from _by_chunk(SKIP_LINES, rows, part_of_row, path_of_part, lines)
            if carry:
                rows, positions = _carried(skip, ikeys, ckeys, file_ids, lines, prior, first_only)
                yield from _carry_by_group(rows, positions, part_of_row, path_of_part, lines)

    order = np.lexsort((lines, file_ids, ikeys))  # by id hash, then file order, then line
    sorted_keys = ikeys[order]
    later = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1
    if later.size == 0:
        return
    starts = np.zeros(len(order), dtype=np.int64)
    new_run = np.ones(len(order), dtype=bool)
    new_run[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts[new_run] = np.flatnonzero(new_run)
    starts = np.maximum.accumulate(starts)
    later_rows, first_rows = order[later], order[starts[later]]
    for key, picked in _by_chunk(None, later_rows, part_of_row, path_of_part, lines, positions=True):
        yield key, _duplicates_entry(later_rows[picked], first_rows[picked], part_of_row, path_of_part, lines)


# A DuplicatesEntry, the value of the `duplicates` side input for one (path, chunk) from one bucket:
# (offsets of the later occurrences in the chunk (uint16), the distinct first occurrences they
# point at as (paths, lines), and for each later occurrence the index of its first one (smallest
# unsigned type)). 2-3 bytes a duplicate plus one (path, line) per distinct id, so a worker holds
# the same few bytes per duplicate however many records share one id, never a path per duplicate.
DuplicatesEntry = tuple


def _duplicates_entry(later_rows: np.ndarray, first_rows: np.ndarray, part_of_row, path_of_part, lines) -> DuplicatesEntry:
    distinct, which = np.unique(first_rows, return_inverse=True)
    offsets = (lines[later_rows] & (CHUNK_LINES - 1)).astype(np.uint16)
    first_paths = [path_of_part[k] for k in part_of_row[distinct]]
    return offsets, (first_paths, lines[distinct].astype(np.int64)), _smallest_unsigned(which.reshape(-1))


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


class CheckTextRecords(beam.PTransform):
    """Key batches in (`(bucket, KeyBatch)`, current and earlier runs' flattened); two multimaps out:

    * `duplicates`: (path, chunk) -> `DuplicatesEntry` (offsets of later occurrences, their first ones);
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
            >> beam.FlatMap(_check_bucket, self._carry, self._first_only).with_outputs(
                SKIP_LINES, CARRY_ROWS, REMOVED_IDS, main="duplicates"
            )
        )
        skips = checked[SKIP_LINES] | "GroupSkipChunks" >> beam.GroupByKey() | "SkipBitmaps" >> beam.Map(_bitmap)
        return {"duplicates": checked.duplicates, "skips": skips, "carry": checked[CARRY_ROWS], "removed": checked[REMOVED_IDS]}


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
            for later, (first_paths, first_lines), which in self._duplicates[key]:  # one entry per bucket
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
