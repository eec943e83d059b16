"""Unit layer for `transforms.state`: id and content keys, buckets, duplicate ids and unchanged records.

Direct calls for `keys` and `incremental`; `CheckTextRecords` and `FindDuplicateIds` under `TestPipeline`
+ `assert_that` with planted duplicates. The end-to-end runs (tests/test_dedup.py, test_incremental.py) stay.
"""

import hashlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.state import incremental, keys
from transforms.state.dedup import CheckTextRecords, FindDuplicateIds, LineFlags, later_occurrence_reason, unpack_duplicates

BITS = 4


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_hash64_is_stable_and_tells_ids_apart():
    ids = [f"doc-{i}" for i in range(2000)] + ["a" * 8 + "x", "a" * 8 + "y", "é", ""]
    hashes = keys.hash64(ids)
    assert hashes.dtype == np.uint64
    assert len(set(hashes.tolist())) == len(ids)  # distinct, including strings differing only past 8 bytes
    assert (keys.hash64(pa.array(ids)) == hashes).all()  # a list and an Arrow column hash alike
    assert (keys.hash64(pa.array(ids).dictionary_encode()) == hashes).all()
    assert keys.hash64(pa.array([None], pa.string()))[0] == keys.hash64([""])[0]  # nulls hash like ""


def test_split_by_bucket_puts_every_row_in_exactly_one_bucket_by_its_top_bits():
    ikeys = keys.id_hashes([f"r{i}" for i in range(500)] + ["r1"])
    seen = []
    for bucket, rows in keys.split_by_bucket(ikeys, BITS):
        assert 0 <= bucket < 2**BITS
        assert ((ikeys[rows] >> np.uint64(64 - BITS)) == bucket).all()
        seen += rows.tolist()
    assert sorted(seen) == list(range(501))
    # the same id always lands in the same bucket: rows 1 and 500 are both "r1"
    assert next(b for b, rows in keys.split_by_bucket(ikeys, BITS) if 1 in rows) == next(
        b for b, rows in keys.split_by_bucket(ikeys, BITS) if 500 in rows
    )


def test_bucket_bits_stay_within_bounds():
    assert keys.bucket_bits_for(10) == 4
    assert keys.bucket_bits_for(1e12) == 14
    assert keys.bucket_bits_for(100 * (1 << 20)) == 7


def test_key_slices_keep_each_rows_file_and_line_through_a_merge():
    slices = list(keys.id_key_slices((["a", "b", "c"], ["f1"] * 3, [3, 70000, 9]), {"f1": 0}, 1))
    slices += list(keys.id_key_slices((["d"], ["f2"], [5]), {"f1": 0, "f2": 1}, 1))
    merged = keys.merge_key_batches([s for _, s in slices])
    paths, _, part_of_row, lines, ikeys, _ = keys.key_batch_rows(merged)
    got = sorted(zip(ikeys.tolist(), [paths[p] for p in part_of_row], lines.tolist()))
    want = sorted(zip(keys.id_hashes(["a", "b", "c", "d"]).tolist(), ["f1", "f1", "f1", "f2"], [3, 70000, 9, 5]))
    assert got == want


def test_content_keys_change_with_the_content_or_the_model():
    text, model = _sha("hello"), _sha("model-1")
    same = keys.image_content_key(text, model)
    assert same == keys.image_content_key(text, model)
    assert same != keys.image_content_key(_sha("hello!"), model)
    assert same != keys.image_content_key(text, _sha("model-2"))
    assert incremental.is_unchanged([same], text, model)
    assert not incremental.is_unchanged([same], text, _sha("model-2"))
    assert not incremental.is_unchanged(None, text, model)


def _current(table: pa.Table, model: str):
    files = {"a.jsonl": 0, "b.jsonl": 1}
    return keys.table_key_slices(table, files, model, BITS)


def _prior(ids, contents, model):
    ikeys = keys.id_hashes(ids)
    ckeys = keys.content_keys(contents, model)
    return [(b, keys.PriorKeys(ikeys[rows], ckeys[rows])) for b, rows in keys.split_by_bucket(ikeys, BITS)]


def test_check_text_records_finds_a_planted_duplicate_and_the_lines_an_earlier_run_embedded():
    model = _sha("model")
    a = pa.table(
        {"id": ["x", "y", "z"], "source": ["a.jsonl"] * 3, "line": [1, 2, 3], "content_sha256": [_sha("1"), _sha("2"), _sha("3")]}
    )
    b = pa.table({"id": ["q", "y"], "source": ["b.jsonl"] * 2, "line": [1, 2], "content_sha256": [_sha("4"), _sha("5")]})
    # the earlier run embedded x with the same content, z with other content, and an id now gone
    prior = _prior(["x", "z", "gone"], [_sha("1"), _sha("changed"), _sha("9")], model)

    def duplicates_rows(item):
        (path, chunk), packed = item
        entry = unpack_duplicates(packed)
        for offset, which in zip(entry.offsets.tolist(), entry.which.tolist()):
            yield path, chunk * (1 << 16) + offset, entry.first_paths[which], int(entry.first_lines[which])

    def skipped_lines(item):
        (path, chunk), bitmap = item
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8))
        return [(path, chunk * (1 << 16) + int(i)) for i in np.flatnonzero(bits)]

    with BeamTestPipeline() as p:
        keyed = p | "Current" >> beam.Create(list(_current(a, model)) + list(_current(b, model)) + prior)
        out = keyed | CheckTextRecords(BITS)
        assert_that(out["duplicates"] | beam.FlatMap(duplicates_rows), equal_to([("b.jsonl", 2, "a.jsonl", 2)]), label="dups")
        assert_that(out["skips"] | beam.FlatMap(skipped_lines), equal_to([("a.jsonl", 1)]), label="skips")
        assert_that(out["removed"] | beam.CombineGlobally(sum), equal_to([1]), label="removed")


def test_line_flags_name_the_kept_occurrence_for_a_table_of_records():
    from transforms.state.dedup import DuplicatesEntry

    entry = DuplicatesEntry(np.array([2], np.uint16), ["a.jsonl"], np.array([2], np.int64), np.array([0], np.uint8))
    flags = LineFlags(duplicates={("b.jsonl", 0): [entry]}, skips={})
    table = pa.table({"source": ["b.jsonl", "b.jsonl"], "line": [1, 2]})
    assert flags.first_occurrences(table) == {1: ("a.jsonl", 2)}
    assert "a.jsonl:2" in later_occurrence_reason("y", "a.jsonl", 2)


def test_find_duplicate_ids_reports_the_first_occurrence_of_repeated_ids_only():
    batches = [
        (["img1", "img2", "img3"], ["m.csv", "m.csv", "m.csv"], [2, 3, 4]),
        (["img2", "img4", "img1"], ["n.csv", "n.csv", "n.csv"], [1, 2, 3]),
        (["img2"], ["m.csv"], [9]),
    ]
    with BeamTestPipeline() as p:
        found = p | beam.Create(batches) | FindDuplicateIds(buckets=4)
        assert_that(found, equal_to([("img1", ("m.csv", 2)), ("img2", ("m.csv", 3))]))
