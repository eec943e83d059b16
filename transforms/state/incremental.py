"""Incremental runs: skip records whose id, content and model are unchanged since an earlier run.

A record is unchanged when an earlier output holds a row with the same `id`, `content_sha256`
and `model_sha256`. Each side is reduced to two 64-bit keys, `ikey` (a hash of the id) and
`ckey` (a hash of the content and model sha256s), computed column-wise over Arrow buffers
(`transforms.state.dedup.hash64`): no per-row Python, for earlier runs' Parquet (read by row group,
three columns only, with seeks) and for this run's records alike. A match needs both keys equal:
128 bits, as safe as the 16-byte key used before.

The earlier keys are never gathered in one place. Text: they join this run's record keys in the
hash buckets of `transforms.state.dedup.CheckTextRecords`, which turns matches into per-chunk bitmaps of
lines to skip. Images (whose content is only known once a file is read): `AttachPriorKeys` joins
the image refs with the earlier keys of their ids in the same kind of buckets, and each ref
travels on with the few `ckey`s an earlier run stored for its id.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.io import fileio
from transforms.state.dedup import _as_arrow_strings, _fmix, hash64, id_hashes, split_by_bucket

__all__ = [
    "KEY_COLUMNS",
    "content_keys",
    "sha256_keys",
    "image_content_key",
    "prior_key_batches",
    "row_positions",
    "split_positions",
    "ReadPriorKeys",
    "AttachPriorKeys",
    "attached",
    "is_unchanged",
]

KEY_COLUMNS = ["id", "content_sha256", "model_sha256"]
_MODEL_MIX = np.uint64(0xD6E8FEB86659FD93)


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_CHUNK_ROWS = 1 << 16
_FOLD = np.array([1, 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


def sha256_keys(values) -> np.ndarray:
    """A 64-bit key of each sha256 hex string: its 256 bits folded (vectorised hex decoding);
    any value that is not 64 lowercase hex digits is hashed as a string instead (`hash64`)."""
    array = _as_arrow_strings(values)
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
        h = _fmix(h ^ (words[:, k] * _FOLD[k]))
    return h


def _model_keys(model_sha256) -> np.ndarray:
    if isinstance(model_sha256, str):
        return sha256_keys([model_sha256])
    array = _as_arrow_strings(model_sha256)
    encoded = array if pa.types.is_dictionary(array.type) else pc.dictionary_encode(array)
    return sha256_keys(encoded.dictionary)[np.asarray(encoded.indices.fill_null(0))]  # one hash per distinct model


def content_keys(content_sha256, model_sha256) -> np.ndarray:
    """`ckey` of each row: its content sha256 and model sha256 (one string for all rows, or a column).
    No per-row Python: the hex digests are decoded column-wise, each distinct model hashed once."""
    content = sha256_keys(content_sha256)
    model = _model_keys(model_sha256)  # an array: multiplication wraps silently
    return _fmix(content ^ (model * _MODEL_MIX))


def image_content_key(content_sha256: str, model_sha256: str) -> int:
    """`ckey` of one image, once its bytes have been read and hashed."""
    return int(content_keys([content_sha256], model_sha256)[0])


def _open_parquet(path: str) -> pq.ParquetFile:
    handle = FileSystems.open(path, compression_type="uncompressed")
    return pq.ParquetFile(handle)


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


def prior_key_batches(
    path: str, bits: int, batch_rows: int = 1 << 16, file_index: Optional[int] = None
) -> Iterator[tuple[int, tuple]]:
    """(bucket, ("prior", ikeys, ckeys)) slices of an earlier run's Parquet file, read a batch of
    rows at a time (only the three key columns; row groups are fetched with seeks, never whole).

    With `file_index` (carry-over runs), read by row group, and each slice also holds the position
    of each row: ("prior", ikeys, ckeys, positions), 8 more bytes an earlier row in the shuffle.
    """
    parquet = _open_parquet(path)
    try:
        if file_index is None:
            for batch in fileio.parquet_batches(parquet, batch_rows, columns=KEY_COLUMNS):
                ikeys = id_hashes(batch.column(0))
                ckeys = content_keys(batch.column(1), batch.column(2))
                for bucket, rows in split_by_bucket(ikeys, bits):
                    yield bucket, ("prior", ikeys[rows], ckeys[rows])
            return
        for group in range(parquet.metadata.num_row_groups):  # our own row groups: ~65k rows
            batch = parquet.read_row_group(group, columns=KEY_COLUMNS)
            ikeys = id_hashes(batch.column(0))
            ckeys = content_keys(batch.column(1), batch.column(2))
            positions = row_positions(file_index, group, np.arange(batch.num_rows))
            for bucket, rows in split_by_bucket(ikeys, bits):
                yield bucket, ("prior", ikeys[rows], ckeys[rows], positions[rows])
    finally:
        parquet.close()


class ReadPriorKeys(beam.PTransform):
    """Earlier runs' Parquet files in; `(bucket, ("prior", ikeys, ckeys))` slices out, for a join.

    `positions=True` (carry-over): slices also hold each row's position (`row_positions`, by the
    file's index in `files`), so that the join can say which earlier rows to copy.
    """

    def __init__(self, files: Sequence[str], bits: int, positions: bool = False):
        super().__init__()
        self._files = list(files)
        self._bits = bits
        self._positions = positions

    def expand(self, pbegin):
        if not self._positions:
            return (
                pbegin
                | "PriorFiles" >> beam.Create(self._files)
                | "SpreadPriorFiles" >> beam.Reshuffle()
                | "PriorKeys" >> beam.FlatMap(prior_key_batches, self._bits)
            )
        return (
            pbegin
            | "PriorFiles" >> beam.Create(list(enumerate(self._files)))
            | "SpreadPriorFiles" >> beam.Reshuffle()
            | "PriorKeys" >> beam.FlatMap(lambda item, bits: prior_key_batches(item[1], bits, file_index=item[0]), self._bits)
        )


# --- images: the refs travel with their earlier keys ---------------------------------------------


def _ref_slices(refs: Sequence, bits: int) -> Iterator[tuple[int, tuple]]:
    refs = list(refs)
    ikeys = id_hashes([r.id for r in refs])
    for bucket, rows in split_by_bucket(ikeys, bits):
        yield bucket, ("refs", [refs[i] for i in rows], ikeys[rows])


REMOVED_IDS = "removed_ids"  # tagged output of `_attach`: distinct earlier ids no current ref has (an int a bucket)


def _attach(item: tuple[int, Iterable[tuple]], positions: bool = False) -> Iterator[tuple]:
    """(ref, tuple of earlier ckeys of its id) for every ref of one bucket; with `positions`
    (carry-over), (ref, ckeys, positions): each distinct ckey once, with the position of its first
    earlier row (earlier-file order, then row). REMOVED_IDS: how many distinct earlier ids of the
    bucket no ref has (images that left the input), when not 0."""
    _, parts = item
    refs, ref_keys, prior_i, prior_c, prior_p = [], [], [], [], []
    for part in parts:
        if part[0] == "refs":
            refs += part[1]
            ref_keys.append(part[2])
        else:
            prior_i.append(part[1])
            prior_c.append(part[2])
            if positions:
                prior_p.append(part[3])
    if prior_i:
        earlier_ids = np.unique(np.concatenate(prior_i))
        current_ids = np.unique(np.concatenate(ref_keys)) if ref_keys else np.empty(0, np.uint64)
        gone = int(earlier_ids.size - np.isin(earlier_ids, current_ids, assume_unique=True).sum())
        if gone:
            yield beam.pvalue.TaggedOutput(REMOVED_IDS, gone)
    if not refs:
        return
    if not prior_i:
        for ref in refs:
            yield (ref, (), ()) if positions else (ref, ())
        return
    pi, pc_ = np.concatenate(prior_i), np.concatenate(prior_c)
    if positions:
        pp = np.concatenate(prior_p)
        order = np.lexsort((pp, pc_, pi))
        pp = pp[order]
    else:
        order = np.argsort(pi, kind="stable")
    pi, pc_ = pi[order], pc_[order]
    keys = np.concatenate(ref_keys)
    lo, hi = np.searchsorted(pi, keys, "left"), np.searchsorted(pi, keys, "right")
    for ref, a, b in zip(refs, lo.tolist(), hi.tolist()):
        if not positions:
            yield ref, tuple(int(c) for c in pc_[a:b]) if b > a else ()
            continue
        ckeys, where = [], []
        for c, position in zip(pc_[a:b].tolist(), pp[a:b].tolist()):
            if not ckeys or ckeys[-1] != c:  # sorted by ckey, then position: the first is the earliest row
                ckeys.append(c)
                where.append(position)
        yield ref, tuple(ckeys), tuple(where)


class AttachPriorKeys(beam.PTransform):
    """Image refs in (one per element); `(ref, earlier ckeys of its id)` out, joined by id in hash buckets.

    `positions=True` (carry-over): `(ref, ckeys, positions)`, the position of each ckey's earliest row.
    `with_removed=True`: returns `(refs, removed)`, `removed` ints summing to the number of earlier
    ids that no ref has (images that left the input)."""

    def __init__(self, files: Sequence[str], bits: int, positions: bool = False, with_removed: bool = False):
        super().__init__()
        self._files = list(files)
        self._bits = bits
        self._positions = positions
        self._with_removed = with_removed

    def expand(self, refs):
        slices = (
            refs
            | "BatchRefsForJoin" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
            | "RefsByBucket" >> beam.FlatMap(_ref_slices, self._bits)
        )
        prior = refs.pipeline | "PriorImageKeys" >> ReadPriorKeys(self._files, self._bits, self._positions)
        joined = (
            (slices, prior)
            | "RefsAndPriorKeys" >> beam.Flatten()
            | "GroupRefBuckets" >> beam.GroupByKey()
            | "AttachKeys" >> beam.FlatMap(_attach, self._positions).with_outputs(REMOVED_IDS, main="refs")
        )
        return (joined.refs, joined[REMOVED_IDS]) if self._with_removed else joined.refs


def attached(element) -> tuple:
    """(ref, earlier ckeys, their earlier positions) of an element that is a bare ref, a
    (ref, ckeys) pair or a (ref, ckeys, positions) triple (`AttachPriorKeys`)."""
    if isinstance(element, tuple) and len(element) in (2, 3) and isinstance(element[1], tuple):
        return element if len(element) == 3 else (element[0], element[1], ())
    return element, (), ()


def is_unchanged(prior_ckeys: Optional[Sequence[int]], content_sha256: str, model_sha256: str) -> bool:
    """Whether an image read now was embedded by an earlier run with the same content and model."""
    return bool(prior_ckeys) and image_content_key(content_sha256, model_sha256) in prior_ckeys
