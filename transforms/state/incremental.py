"""Incremental runs: skip records whose id, content and model are unchanged since an earlier run.

A record is unchanged when an earlier output holds a row with the same `id`, `content_sha256`
and `model_sha256`. Each side is reduced to two 64-bit keys, `ikey` (a hash of the id) and
`ckey` (a hash of the content and model sha256s), computed column-wise over Arrow buffers
(`transforms.state.keys`): no per-row Python, for earlier runs' Parquet (read by row group,
three columns only, with seeks) and for this run's records alike. A match needs both keys equal:
128 bits, as safe as the 16-byte key used before.

The earlier keys are never gathered in one place. Text: they join this run's record keys in the
hash buckets of `transforms.state.dedup.CheckTextRecords`, which turns matches into per-chunk bitmaps of
lines to skip. Images (whose content is only known once a file is read): `AttachPriorKeys` joins
the image refs with the earlier keys of their ids in the same kind of buckets, and each ref
travels on with the few `ckey`s an earlier run stored for its id.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.io import fileio
from transforms.records import ImageRef
from transforms.state.keys import PriorKeys, content_keys, id_hashes, image_content_key, row_positions, split_by_bucket

__all__ = [
    "KEY_COLUMNS",
    "SKIPPED",
    "AttachedRef",
    "RefKeys",
    "prior_key_batches",
    "ReadPriorKeys",
    "AttachPriorKeys",
    "attached",
    "is_unchanged",
]

KEY_COLUMNS = ["id", "content_sha256", "model_sha256"]
SKIPPED = "skipped"  # tagged output of the steps that skip unchanged records: how many, per batch


def _open_parquet(path: str) -> pq.ParquetFile:
    handle = FileSystems.open(path, compression_type="uncompressed")
    return pq.ParquetFile(handle)


def prior_key_batches(
    path: str, bits: int, batch_rows: int = 1 << 16, file_index: Optional[int] = None
) -> Iterator[tuple[int, PriorKeys]]:
    """(bucket, PriorKeys) slices of an earlier run's Parquet file, read a batch of rows at a
    time (only the three key columns; row groups are fetched with seeks, never whole).

    With `file_index` (carry-over runs), read by row group, and each slice also holds the position
    of each row (`PriorKeys.positions`), 8 more bytes an earlier row in the shuffle.
    """
    parquet = _open_parquet(path)
    try:
        if file_index is None:
            for batch in fileio.parquet_batches(parquet, batch_rows, columns=KEY_COLUMNS):
                ikeys = id_hashes(batch.column(0))
                ckeys = content_keys(batch.column(1), batch.column(2))
                for bucket, rows in split_by_bucket(ikeys, bits):
                    yield bucket, PriorKeys(ikeys[rows], ckeys[rows])
            return
        for group in range(parquet.metadata.num_row_groups):  # our own row groups: ~65k rows
            batch = parquet.read_row_group(group, columns=KEY_COLUMNS)
            ikeys = id_hashes(batch.column(0))
            ckeys = content_keys(batch.column(1), batch.column(2))
            positions = row_positions(file_index, group, np.arange(batch.num_rows))
            for bucket, rows in split_by_bucket(ikeys, bits):
                yield bucket, PriorKeys(ikeys[rows], ckeys[rows], positions[rows])
    finally:
        parquet.close()


class ReadPriorKeys(beam.PTransform):
    """Earlier runs' Parquet files in; `(bucket, PriorKeys)` slices out, for a join.

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


class RefKeys(NamedTuple):
    """Image refs of one bucket with the hash of each one's id, beside `PriorKeys` in the join."""

    refs: list
    ikeys: np.ndarray


class AttachedRef(NamedTuple):
    """An image ref with the `ckey`s an earlier run stored for its id (`AttachPriorKeys`), which
    the embedding step compares with the key of the bytes it reads; `positions` (carry-over): the
    packed position of each ckey's earliest earlier row, the row to copy when the image is unchanged."""

    ref: ImageRef
    prior_ckeys: tuple = ()
    positions: tuple = ()


def _ref_slices(refs: Sequence, bits: int) -> Iterator[tuple[int, RefKeys]]:
    refs = list(refs)
    ikeys = id_hashes([r.id for r in refs])
    for bucket, rows in split_by_bucket(ikeys, bits):
        yield bucket, RefKeys([refs[i] for i in rows], ikeys[rows])


REMOVED_IDS = "removed_ids"  # tagged output of `_attach`: distinct earlier ids no current ref has (an int a bucket)


def _attach(item: tuple[int, Iterable[RefKeys | PriorKeys]], positions: bool = False) -> Iterator[AttachedRef]:
    """An AttachedRef for every ref of one bucket; with `positions` (carry-over), each distinct
    ckey once, with the position of its first earlier row (earlier-file order, then row).
    REMOVED_IDS: how many distinct earlier ids of the bucket no ref has (images that left the
    input), when not 0."""
    _, parts = item
    refs, ref_keys, prior_i, prior_c, prior_p = [], [], [], [], []
    for part in parts:
        if isinstance(part, RefKeys):
            refs += part.refs
            ref_keys.append(part.ikeys)
        else:
            prior_i.append(part.ikeys)
            prior_c.append(part.ckeys)
            if positions:
                prior_p.append(part.positions)
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
            yield AttachedRef(ref)
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
            yield AttachedRef(ref, tuple(int(c) for c in pc_[a:b]) if b > a else ())
            continue
        ckeys, where = [], []
        for c, position in zip(pc_[a:b].tolist(), pp[a:b].tolist()):
            if not ckeys or ckeys[-1] != c:  # sorted by ckey, then position: the first is the earliest row
                ckeys.append(c)
                where.append(position)
        yield AttachedRef(ref, tuple(ckeys), tuple(where))


class AttachPriorKeys(beam.PTransform):
    """Image refs in (one per element); an `AttachedRef` out for each, joined by id in hash buckets.

    `positions=True` (carry-over): each AttachedRef also holds the position of each ckey's earliest row.
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


def attached(element: ImageRef | AttachedRef) -> AttachedRef:
    """The AttachedRef of an element of the image embedding step: a bare ref has no earlier keys."""
    return element if isinstance(element, AttachedRef) else AttachedRef(element)


def is_unchanged(prior_ckeys: Optional[Sequence[int]], content_sha256: str, model_sha256: str) -> bool:
    """Whether an image read now was embedded by an earlier run with the same content and model."""
    return bool(prior_ckeys) and image_content_key(content_sha256, model_sha256) in prior_ckeys
