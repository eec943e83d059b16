"""Unit layer for `transforms.io`: record parsing, file plans and ranges, path ids, the text reader.

Direct calls for the helpers; `ReadTextFiles` under Beam's `TestPipeline` + `assert_that` on files in tmp_path.
Fast and focused: the end-to-end reading tests (tests/test_text_read.py, test_splits.py) stay as they are.
"""

import io
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.io import fileio, splits, text_formats
from transforms.io.text_read import ReadTextFiles
from transforms.records import ERRORS


def _parse(data: bytes, fmt: str, **kwargs):
    tally = text_formats.new_tally()
    return list(text_formats.iter_records(io.BytesIO(data), fmt, tally=tally, **kwargs)), tally


def test_jsonl_every_line_is_a_record_an_error_or_a_counted_blank():
    parsed, tally = _parse(b'{"id": "a", "text": "x"}\n\n{not json\n  \n{"id": "b", "text": "y"}\n', "jsonl")
    assert [(p.line, p.record is not None, p.error is not None) for p in parsed] == [
        (1, True, False),
        (3, False, True),
        (5, True, False),
    ]
    assert tally["blank"] == 2
    assert len(parsed) + tally["blank"] + tally["header"] + tally["continuation"] == 5


def test_csv_quoted_newline_is_one_record_numbered_by_its_first_line():
    data = b'id,text\n1,"two\nlines"\n2,plain\n'
    parsed, tally = _parse(data, "csv")
    assert [(p.line, p.record) for p in parsed] == [(2, {"id": "1", "text": "two\nlines"}), (4, {"id": "2", "text": "plain"})]
    assert tally == {"blank": 0, "header": 1, "continuation": 1}


def test_csv_unclosed_quote_is_an_error_not_a_swallowed_file():
    data = b'id,text\n1,"never closed\n' + b"".join(b"%d,row\n" % i for i in range(2, 8))
    parsed, tally = _parse(data, "csv", max_record_lines=3)
    errors = [p for p in parsed if p.error is not None]
    assert errors and isinstance(errors[0].error, text_formats.UnclosedQuote)
    assert errors[0].line == 2
    # nothing disappears: every physical line after the header is a record, an error, or counted
    assert len(parsed) + tally["blank"] + tally["continuation"] == 7


def test_unknown_format_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown text format 'xml'"):
        text_formats.iter_records(io.BytesIO(b""), "xml")


@pytest.mark.parametrize(
    "path, fmt", [("a/b.jsonl", "jsonl"), ("a/b.csv.gz", "csv"), ("b.tsv", "tsv"), ("b.parquet", "parquet"), ("b.txt", "lines")]
)
def test_detect_format_by_extension_through_compression(path, fmt):
    assert text_formats.detect_format(path) == fmt


def test_path_id_is_relative_to_the_glob_root_and_a_plain_file_is_its_name(tmp_path):
    (tmp_path / "2026").mkdir()
    f = tmp_path / "2026" / "day.jsonl"
    f.write_text("")
    assert fileio.glob_root(f"{tmp_path}/**/*.jsonl") == str(tmp_path)
    assert fileio.path_id(str(f), f"{tmp_path}/**/*.jsonl") == "2026/day.jsonl"
    assert fileio.path_id(str(f), str(f)) == "day.jsonl"
    assert fileio.path_id("gs://b/data/2026/day.jsonl", "gs://b/data/*/*.jsonl") == "2026/day.jsonl"


def test_a_big_line_file_splits_into_ranges_that_cover_it_exactly(tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_bytes(b"".join(json.dumps({"id": str(i), "text": "t" * 20}).encode() + b"\n" for i in range(200)))
    size = f.stat().st_size
    plan = splits.counted_plan(splits.plan_file(str(f), str(f), size, split_bytes=1000))
    assert plan.error is None and not plan.unsplittable and plan.newlines
    provider = splits.FileRestrictions()
    ranges = list(provider.split(plan, provider.initial_restriction(plan)))
    # split at the counted chunk boundaries (Beam folds a small tail into the last range)
    assert len(ranges) >= size // 1000 - 1 and all(r.size() < 2000 for r in ranges)
    assert ranges[0].start == 0 and ranges[-1].stop == size
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))


def test_compressed_and_unplannable_files_are_one_unit(tmp_path):
    gz = splits.plan_file("x/*.jsonl.gz", "x/a.jsonl.gz", 10_000_000, split_bytes=1000)
    assert gz.unsplittable and splits.FileRestrictions().initial_restriction(gz).size() == 1
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    plan = splits.plan_file(str(broken), str(broken), broken.stat().st_size)
    assert plan.error and plan.unsplittable


def test_parquet_plan_records_its_row_groups(tmp_path):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(10)], "text": ["x"] * 10}), f, row_group_size=4)
    plan = splits.plan_file(str(f), str(f), f.stat().st_size)
    assert plan.row_groups == (4, 4, 2)
    assert splits.FileRestrictions().initial_restriction(plan).size() == 3


def test_read_text_files_gives_records_and_dead_letters_under_test_pipeline(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "r1", "text": "hello"}\n{"id": "r2"}\nnot json\n{"text": "no id"}\n')
    with BeamTestPipeline() as p:
        out = p | ReadTextFiles([str(tmp_path / "*.jsonl")])
        rows = out.records | beam.FlatMap(
            lambda t: zip(t.column("id").to_pylist(), t.column("text").to_pylist(), t.column("line").to_pylist())
        )
        errors = out[ERRORS] | beam.Map(lambda e: (e.id, e.stage))
        assert_that(rows, equal_to([("r1", "hello", 1), ("a.jsonl:4", "no id", 4)]), label="records")
        assert_that(errors, equal_to([("r2", "read"), ("a.jsonl:3", "read")]), label="errors")
