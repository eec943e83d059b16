"""Issue 19 (6): `check_bucket` reads a bucket of this run's slices twice instead of decoding it whole
(memory for its distinct ids and one slice, not its rows), and says exactly what it said before.

`_reference` is the whole-bucket check as it was (e5a14ee), copied here: random buckets (many
slices, several files listed out of name order, lines over several chunks, ids repeated within and
across slices and files, one-id buckets) must give the same later occurrences, each naming the same
first occurrence, and `LineFlags` must find the same first occurrences from either output.
"""

from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa
import pytest

from transforms.state.dedup import CHUNK_BITS, CHUNK_LINES, DuplicatesEntry, LineFlags, PackedDuplicates, check_bucket
from transforms.state.keys import PriorKeys, key_batch_rows, merge_key_batches, smallest_unsigned, text_key_batch


def _reference(parts) -> list:
    """The duplicates output of check_bucket before the streaming check (no earlier slices)."""
    path_of_part, index_of_part, part_of_row, lines, ikeys, _ = key_batch_rows(merge_key_batches(list(parts)))
    file_ids = smallest_unsigned(np.asarray(index_of_part, dtype=np.int64))[part_of_row]
    order = np.lexsort((lines, file_ids, ikeys))
    sorted_keys = ikeys[order]
    new_run = np.empty(len(order), dtype=bool)
    new_run[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_run[1:])
    later = np.flatnonzero(~new_run)
    if later.size == 0:
        return []
    run_starts = np.flatnonzero(new_run)
    later_rows = order[later]
    first_rows = order[run_starts[np.searchsorted(run_starts, later, side="right") - 1]]
    out = []
    group = part_of_row[later_rows] * (1 << 24) + (lines[later_rows] >> CHUNK_BITS)
    by_group = np.argsort(group, kind="stable")
    for picked in np.split(by_group, np.flatnonzero(np.diff(group[by_group])) + 1):
        first = later_rows[picked[0]]
        key = (path_of_part[part_of_row[first]], int(lines[first] >> CHUNK_BITS))
        distinct, which = np.unique(first_rows[picked], return_inverse=True)
        offsets = (lines[later_rows[picked]] & (CHUNK_LINES - 1)).astype(np.uint16)
        first_paths = [path_of_part[k] for k in part_of_row[distinct]]
        out.append(
            (key, DuplicatesEntry(offsets, first_paths, lines[distinct].astype(np.int64), smallest_unsigned(which.reshape(-1))))
        )
    return out


def _normalised(outputs) -> list:
    """Sorted (path, chunk, offset, first path, first line), one per later occurrence."""
    rows = []
    for (path, chunk), entry in outputs:
        assert isinstance(entry, DuplicatesEntry) and entry.offsets.dtype == np.uint16
        for offset, which in zip(entry.offsets.tolist(), entry.which.tolist()):
            rows.append((path, chunk, offset, entry.first_paths[which], int(entry.first_lines[which])))
    return sorted(rows)


def _random_bucket(rng: np.random.Generator, files: int, records: int, ids: int, slices: int) -> list:
    """CurrentKeys slices of `records` records over `files` files (indexes not in name order)."""
    indexes = rng.permutation(files)
    parts = []
    for f in range(files):
        count = int(rng.integers(1, 2 * records // files + 2))
        lines = np.sort(rng.choice(4 * CHUNK_LINES, size=count, replace=False))  # over several chunks
        ikeys = rng.integers(0, ids, size=count).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for batch in np.array_split(np.arange(count), int(rng.integers(1, 5))):  # a file read in batches
            if len(batch):
                parts += [p for _, p in text_key_batch(f"f{f}.jsonl", int(indexes[f]), lines[batch], ikeys[batch], None, bits=0)]
    order = rng.permutation(len(parts))  # the shuffle delivers slices in any order, some merged
    groups = np.array_split(order, min(slices, len(parts)))
    return [merge_key_batches([parts[i] for i in g]) for g in groups if len(g)]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("small_buffers", [False, True])
def test_streamed_duplicates_are_the_whole_bucket_check_ones(seed, small_buffers, monkeypatch):
    if small_buffers:  # merge the first-occurrence table and send entries out many times per bucket
        monkeypatch.setattr("transforms.state.dedup._PENDING_ROWS", 3)
        monkeypatch.setattr("transforms.state.dedup._BUFFER_ROWS", 5)
    rng = np.random.default_rng(seed)
    ids = [1, 2, 50, 400, 100_000][seed % 5]  # 1: a one-id bucket; 100,000: mostly unique ids
    parts = _random_bucket(
        rng, files=int(rng.integers(1, 6)), records=int(rng.integers(1, 3000)), ids=ids, slices=int(rng.integers(1, 40))
    )
    expected = _reference(parts)
    got = list(check_bucket((0, parts)))
    assert _normalised(got) == _normalised(expected)
    assert len(_normalised(got)) == sum(len(p.ikeys) for p in parts) - len(np.unique(np.concatenate([p.ikeys for p in parts])))
    # The whole-bucket path (taken with earlier slices; an empty one changes nothing) agrees too.
    assert _normalised(check_bucket((0, parts + [PriorKeys(np.empty(0, np.uint64), np.empty(0, np.uint64))]))) == _normalised(
        expected
    )

    def lookups(outputs):
        multimap = collections.defaultdict(list)  # a Beam multimap: no entries, an empty list
        for key, value in outputs:
            multimap[key].append(value)
        flags = LineFlags(duplicates=multimap)
        found = {}
        for part in parts:
            paths, _, part_of_row, lines, _, _ = key_batch_rows(part)
            table = pa.table({"source": [paths[k] for k in part_of_row], "line": pa.array(lines, pa.int64())})
            found.update({(paths[part_of_row[r]], int(lines[r])): first for r, first in flags.first_occurrences(table).items()})
        return found

    assert lookups(got) == lookups(expected)
    assert lookups([(key, PackedDuplicates.pack(entry)) for key, entry in got]) == lookups(
        expected
    )  # as the side input holds them


def test_a_bucket_of_unique_ids_gives_nothing_and_a_one_shot_iterator_is_read_twice():
    rng = np.random.default_rng(7)
    unique = _random_bucket(rng, files=3, records=2000, ids=1 << 40, slices=9)
    assert list(check_bucket((0, unique))) == []
    one_id = _random_bucket(rng, files=3, records=2000, ids=1, slices=9)
    total = sum(len(p.ikeys) for p in one_id)
    assert len(_normalised(check_bucket((0, iter(one_id))))) == total - 1  # a generator of slices: still every later one
    assert _normalised(check_bucket((0, iter(one_id)))) == _normalised(_reference(one_id))


def test_packed_duplicates_give_back_the_entry_and_a_run_of_one_id_costs_almost_nothing():
    """The `duplicates` side input holds entries packed (issue 19 (6)): every later occurrence and the
    first one it names come back exactly, in any order of offsets; one id's run of lines packs to a
    few hundred bytes, not 3 bytes a duplicate."""
    rng = np.random.default_rng(3)
    offsets = rng.permutation(CHUNK_LINES)[:5000].astype(np.uint16)  # unsorted: deltas wrap around
    which = rng.integers(0, 300, size=5000).astype(np.uint16)
    entry = DuplicatesEntry(offsets, [f"f{i}.jsonl" for i in range(300)], rng.integers(0, 1 << 40, 300), which)
    back = PackedDuplicates.pack(entry).unpack()
    assert back.offsets.dtype == np.uint16 and np.array_equal(back.offsets, offsets)
    assert np.array_equal(back.which, which) and back.first_paths == entry.first_paths
    assert np.array_equal(back.first_lines, entry.first_lines)

    run = DuplicatesEntry(
        np.arange(1, CHUNK_LINES, dtype=np.uint16), ["a.jsonl"], np.array([0]), np.zeros(CHUNK_LINES - 1, np.uint8)
    )
    packed = PackedDuplicates.pack(run)
    assert len(packed.encoded) < 2048  # ~1 KB; raw: 3 bytes a duplicate, ~196 KB
    table = pa.table({"source": ["a.jsonl"] * 3, "line": pa.array([0, 1, CHUNK_LINES - 1], pa.int64())})
    assert LineFlags(duplicates={("a.jsonl", 0): [packed]}).first_occurrences(table) == {1: ("a.jsonl", 0), 2: ("a.jsonl", 0)}
