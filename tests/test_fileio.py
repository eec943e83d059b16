"""Path-derived ids: the same however a glob is spelled, and the same after the folder moves."""

import os

import pytest

from transforms.io.fileio import glob_root, path_id


@pytest.mark.parametrize(
    "pattern, root",
    [
        ("data/2026/*.jsonl", "data/2026"),
        ("photos/**/x.jpg", "photos"),
        ("a/b.csv", "a"),
        ("*.txt", ""),
        ("gs://bucket/d/**/*.jpg", "gs://bucket/d"),
        ("/abs/dir/img_[0-9].png", "/abs/dir"),
    ],
)
def test_glob_root_is_the_folder_before_the_first_wildcard(pattern, root):
    assert glob_root(pattern) == root


def test_path_id_is_the_same_for_three_spellings_of_one_glob(tmp_path, monkeypatch):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    spellings = [
        ("data/sub/x.jpg", "data/*/x.jpg"),
        ("./data/sub/x.jpg", "./data/*/x.jpg"),
        (os.path.join(tmp_path, "data/sub/x.jpg"), os.path.join(tmp_path, "data/*/x.jpg")),
    ]
    assert {path_id(path, pattern) for path, pattern in spellings} == {"sub/x.jpg"}


def test_path_id_survives_a_move_to_gcs():
    assert path_id("photos/2026/a.jpg", "photos/**/*.jpg") == path_id("gs://b/photos/2026/a.jpg", "gs://b/photos/**/*.jpg")
    assert path_id("gs://b/d/f.jpg", "gs://b/d/f.jpg") == "f.jpg"


def test_open_input_names_a_truncated_gzip_instead_of_ending_early(tmp_path):
    import gzip

    from transforms.io.fileio import TruncatedInput, open_input

    data = b"".join(b"line %d\n" % i for i in range(30000))
    whole = tmp_path / "whole.txt.gz"
    whole.write_bytes(gzip.compress(data))
    with open_input(str(whole)) as handle:
        assert handle.read() == data
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    lines = []
    with pytest.raises(TruncatedInput, match="cut.txt.gz is truncated"):
        with open_input(str(cut)) as handle:
            for line in iter(handle.readline, b""):
                lines.append(line)
    assert 0 < len(lines) < 30000 and all(line.endswith(b"\n") for line in lines)


def test_nesting_prescreen_never_under_counts():
    from transforms.io.text_formats import nesting_exceeds

    assert nesting_exceeds(b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"\n")
    assert not nesting_exceeds(b'{"id": "1", "text": "[[fine]]"}\n' * 1000)


def test_parquet_reads_give_the_columns_row_groups_and_batches_asked_for(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.io import fileio

    table = pa.table({"id": [f"r{i}" for i in range(250)], "n": list(range(250)), "x": [float(i) for i in range(250)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=100)
    assert fileio.read_parquet_table(sink.getvalue()).equals(table)
    parquet = pq.ParquetFile(io.BytesIO(sink.getvalue()))
    batches = list(fileio.parquet_batches(parquet, 40, columns=("n",), row_groups=[1, 2]))
    assert [b.num_rows for b in batches] == [40, 40, 40, 30] and batches[0].schema.names == ["n"]
    assert pa.Table.from_batches(batches).column("n").to_pylist() == list(range(100, 250))
    assert pa.Table.from_batches(list(fileio.parquet_batches(parquet, 1000))).equals(table)
