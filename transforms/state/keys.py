"""Keys of records and earlier rows: one home for the hashing and bucketing that the state steps share.

Every record is reduced to two 64-bit keys, computed column-wise over Arrow buffers in NumPy (no
per-row Python), the same in every process:

* `ikey` (`id_hashes`): a hash of the id. Duplicates are found by it and hash buckets are cut by
  its top bits (`split_by_bucket`), so all keys of one id meet in one bucket of a shuffle;
* `ckey` (`content_keys`): a key of the content sha256 and the model sha256. A record is unchanged
  since an earlier run when both keys match: 128 bits.

An earlier output's row is named by its packed position (`row_positions`: file, row group, row in
64 bits), what carry-over copies rows by.

The slices of keys that go through the bucket shuffles are typed records (NamedTuples of NumPy
arrays: compact when pickled): `CurrentKeys` (this run's records, with their file and line) and
`PriorKeys` (an earlier run's rows). `transforms.state.dedup` joins them per bucket,
`transforms.state.incremental` reads the earlier ones.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "CurrentKeys",
    "PriorKeys",
    "KeyBatch",
    "as_arrow_strings",
    "bucket_bits_for",
    "content_keys",
    "fmix",
    "hash64",
    "id_hashes",
    "id_key_slices",
    "image_content_key",
    "key_batch_rows",
    "merge_key_batches",
    "row_positions",
    "sha256_keys",
    "smallest_unsigned",
    "split_by_bucket",
    "split_positions",
    "table_key_slices",
    "text_key_batch",
]

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MODEL_MIX = np.uint64(0xD6E8FEB86659FD93)


# --- a vectorised 64-bit string hash ----------------------------------------------------------


def fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (full avalanche), in place."""
    h ^= h >> np.uint64(33)
    h *= _M1
    h ^= h >> np.uint64(33)
    h *= _M2
    h ^= h >> np.uint64(33)
    return h


def as_arrow_strings(values) -> pa.Array:
    """An Arrow string (or binary) array of `values`: an Arrow array, a chunked one or a list of str."""
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
    array = as_arrow_strings(values)
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
    h = fmix((lengths.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    byte = np.arange(8, dtype=np.int64)
    active = np.flatnonzero(lengths > 0)
    word = 0
    while active.size:
        pos = starts[active, None] + word * 8 + byte
        chunk = data[pos]
        chunk[(word * 8 + byte)[None, :] >= lengths[active, None]] = 0  # bytes past the end count as 0
        words = np.ascontiguousarray(chunk).view("<u8").ravel()
        h[active] = fmix((h[active] ^ words) * _GOLDEN)
        word += 1
        active = active[lengths[active] > word * 8]
    return h


def id_hashes(ids) -> np.ndarray:
    """The 64-bit hash of each id (`ikey`): what duplicates are found by and buckets are cut by."""
    return hash64(ids)


# --- content keys: a sha256 hex digest folded to 64 bits ----------------------------------------

_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_CHUNK_ROWS = 1 << 16
_FOLD = np.array([1, 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


def sha256_keys(values) -> np.ndarray:
    """A 64-bit key of each sha256 hex string: its 256 bits folded (vectorised hex decoding);
    any value that is not 64 lowercase hex digits is hashed as a string instead (`hash64`)."""
    array = as_arrow_strings(values)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    n = len(array)
    keys = np.empty(n, dtype=np.uint64)
    if n == 0:
        return keys
    if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
        offset_type = np.int64
    else:
        offset_type = np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[array.offset : array.offset + n + 1].astype(np.int64)
    lengths = offsets[1:] - offsets[:-1]
    valid = lengths == 64
    if array.null_count:
        valid &= ~np.asarray(array.is_null())
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    for start in range(0, n, _CHUNK_ROWS):  # bounded temporaries: 64 bytes a row of a chunk
        rows = start + np.flatnonzero(valid[start : start + _CHUNK_ROWS])
        if rows.size == 0:
            continue
        first = offsets[rows[0]]
        if rows.size == rows[-1] - rows[0] + 1 and offsets[rows[-1]] - first == 64 * (rows.size - 1):
            chars = data[first : first + 64 * rows.size].reshape(rows.size, 64)  # contiguous: no gather
        else:
            chars = data[offsets[rows, None] + np.arange(64)]
        nibbles = _HEX[chars]
        hexed = (nibbles < 16).all(axis=1)
        packed = np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).view("<u8")  # (rows, 4) words
        keys[rows] = _fold(packed)
        valid[rows[~hexed]] = False
    other = np.flatnonzero(~valid)
    if other.size:
        keys[other] = hash64(array.take(pa.array(other)))
    return keys


def _fold(words: np.ndarray) -> np.ndarray:
    h = words[:, 0].copy()
    for k in range(1, words.shape[1]):
        h = fmix(h ^ (words[:, k] * _FOLD[k]))
    return h


def _model_keys(model_sha256) -> np.ndarray:
    if isinstance(model_sha256, str):
        return sha256_keys([model_sha256])
    array = as_arrow_strings(model_sha256)
    encoded = array if pa.types.is_dictionary(array.type) else pc.dictionary_encode(array)
    return sha256_keys(encoded.dictionary)[np.asarray(encoded.indices.fill_null(0))]  # one hash per distinct model


def content_keys(content_sha256, model_sha256) -> np.ndarray:
    """`ckey` of each row: its content sha256 and model sha256 (one string for all rows, or a column).
    No per-row Python: the hex digests are decoded column-wise, each distinct model hashed once."""
    content = sha256_keys(content_sha256)
    model = _model_keys(model_sha256)  # an array: multiplication wraps silently
    return fmix(content ^ (model * _MODEL_MIX))


def image_content_key(content_sha256: str, model_sha256: str) -> int:
    """`ckey` of one image, once its bytes have been read and hashed."""
    return int(content_keys([content_sha256], model_sha256)[0])


# --- bucketing ----------------------------------------------------------------------------------


def bucket_bits_for(estimated_records: float, per_bucket: int = 1 << 20, low: int = 4, high: int = 14) -> int:
    """log2 of the bucket count: about `per_bucket` records a bucket, between 2**low and 2**high buckets."""
    wanted = max(1.0, float(estimated_records) / per_bucket)
    return int(min(high, max(low, math.ceil(math.log2(wanted)))))


def split_by_bucket(ikeys: np.ndarray, bits: int) -> Iterator[tuple[int, np.ndarray]]:
    """(bucket, row positions) for each bucket that the rows with these `ikeys` fall in."""
    if len(ikeys) == 0:
        return
    buckets = (ikeys >> np.uint64(64 - bits)).astype(np.int64)
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    cuts = np.flatnonzero(np.diff(sorted_buckets)) + 1
    for part in np.split(order, cuts):
        yield int(buckets[part[0]]), part


# --- positions of earlier rows ------------------------------------------------------------------

POSITION_FILE_SHIFT, POSITION_GROUP_SHIFT = 44, 24  # an earlier row's position: file | row group | row


def row_positions(file_index: int, row_group: int, rows: np.ndarray) -> np.ndarray:
    """Positions of rows of one row group of an earlier file, packed in 64 bits (file order first)."""
    if file_index >= 1 << (64 - POSITION_FILE_SHIFT) or row_group >= 1 << (POSITION_FILE_SHIFT - POSITION_GROUP_SHIFT):
        raise ValueError(f"earlier file {file_index}, row group {row_group}: too many to carry over")
    if len(rows) and int(rows.max()) >= 1 << POSITION_GROUP_SHIFT:
        raise ValueError(f"earlier file {file_index}, row group {row_group}: more than 2**24 rows in a row group")
    return (
        (np.uint64(file_index) << np.uint64(POSITION_FILE_SHIFT))
        | (np.uint64(row_group) << np.uint64(POSITION_GROUP_SHIFT))
        | rows.astype(np.uint64)
    )


def split_positions(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(file indexes, row groups, rows in the group) of packed positions (`row_positions`)."""
    positions = np.asarray(positions, dtype=np.uint64)
    files = (positions >> np.uint64(POSITION_FILE_SHIFT)).astype(np.int64)
    groups = (
        (positions >> np.uint64(POSITION_GROUP_SHIFT)) & np.uint64((1 << (POSITION_FILE_SHIFT - POSITION_GROUP_SHIFT)) - 1)
    ).astype(np.int64)
    rows = (positions & np.uint64((1 << POSITION_GROUP_SHIFT) - 1)).astype(np.int64)
    return files, groups, rows


# --- the key slices that go through the bucket shuffles -----------------------------------------


class CurrentKeys(NamedTuple):
    """A slice of this run's records in one bucket, rows sorted by path then line, so that a line
    costs the smallest unsigned type that holds the largest gap (usually 2 bytes) and a path
    nothing per row. `key_batch_rows` decodes it."""

    paths: list  # the distinct files of the slice
    file_indexes: list  # each one's index in the job's file order ("first occurrence" order)
    counts: np.ndarray  # rows per path
    first_lines: np.ndarray  # the first line of each path's rows
    line_deltas: np.ndarray  # each row's line minus the previous row's (0 at each path's first row)
    ikeys: np.ndarray
    ckeys: Optional[np.ndarray]  # None in runs without --incremental-from


class PriorKeys(NamedTuple):
    """A slice of an earlier run's rows in one bucket; `positions` (`row_positions`) in carry-over runs."""

    ikeys: np.ndarray
    ckeys: np.ndarray
    positions: Optional[np.ndarray] = None


KeyBatch = CurrentKeys | PriorKeys


def smallest_unsigned(values: np.ndarray) -> np.ndarray:
    """`values` (non-negative integers) in the smallest unsigned type that holds the largest."""
    top = int(values.max()) if len(values) else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.uint64)


def _encode_rows(
    paths: list, indexes: list, part_of_row: np.ndarray, lines: np.ndarray, ikeys: np.ndarray, ckeys: Optional[np.ndarray]
) -> CurrentKeys:
    """The compact CurrentKeys of rows given with their path (index into `paths`) and line."""
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
    return CurrentKeys(
        [paths[i] for i in used],
        [indexes[i] for i in used],
        counts[used],
        lines[starts],
        smallest_unsigned(deltas),
        ikeys,
        ckeys,
    )


def key_batch_rows(batch: CurrentKeys) -> tuple[list, list, np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(paths, file indexes, path index of each row, line of each row, ikeys, ckeys) of a CurrentKeys."""
    counts = batch.counts
    part_of_row = np.repeat(np.arange(len(counts)), counts)
    steps = batch.line_deltas.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    steps[starts] = batch.first_lines
    total = np.cumsum(steps)
    lines = total - np.repeat(total[starts] - steps[starts], counts)
    return batch.paths, batch.file_indexes, part_of_row, lines, batch.ikeys, batch.ckeys


def text_key_batch(
    path: str, file_index: int, lines, ikeys: np.ndarray, ckeys: Optional[np.ndarray], bits: int
) -> Iterator[tuple[int, CurrentKeys]]:
    """(bucket, CurrentKeys) slices of one batch of records of one file."""
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
    """One slice from several of the same kind (and bucket)."""
    if isinstance(parts[0], PriorKeys):
        positions = None if parts[0].positions is None else np.concatenate([p.positions for p in parts])
        return PriorKeys(np.concatenate([p.ikeys for p in parts]), np.concatenate([p.ckeys for p in parts]), positions)
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


def _split_by_source(sources) -> list:
    """[(path, row positions)] of a batch: one file per batch in practice, checked all the same."""
    if len(set(sources)) == 1:
        return [(sources[0], np.arange(len(sources)))]
    order: dict = {}
    for i, source in enumerate(sources):
        order.setdefault(source, []).append(i)
    return [(source, np.array(rows)) for source, rows in order.items()]


def id_key_slices(batch, file_index: dict, bits: int) -> Iterator[tuple[int, CurrentKeys]]:
    """(bucket, CurrentKeys) slices of an ids-only batch `(ids, sources, lines)` (duplicate check only).
    `file_index`: {path: its index in the job's file order}."""
    ids, sources, lines = batch
    ikeys = id_hashes(ids)
    lines = np.asarray(lines, dtype=np.int64)
    for path, rows in _split_by_source(sources):
        yield from text_key_batch(path, file_index.get(path, len(file_index)), lines[rows], ikeys[rows], None, bits)


def table_key_slices(table: pa.Table, file_index: dict, model_sha256: str, bits: int) -> Iterator[tuple[int, CurrentKeys]]:
    """(bucket, CurrentKeys) slices of a table of text records, with content keys (incremental runs)."""
    ikeys = id_hashes(table.column("id"))
    ckeys = content_keys(table.column("content_sha256"), model_sha256)
    lines = np.asarray(table.column("line").combine_chunks(), dtype=np.int64)
    for path, rows in _split_by_source(table.column("source").to_pylist()):
        yield from text_key_batch(path, file_index.get(path, len(file_index)), lines[rows], ikeys[rows], ckeys[rows], bits)
