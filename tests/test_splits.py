"""Splittable reads: any split of a file gives exactly the rows, ids, lines and dead letters of the
whole file; deep nesting, huge lines and truncated streams cost one dead letter each."""

import bz2
import csv
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

from transforms.io import splits
from transforms.io.text_read import ReadTextFileFn, read_text_file


def _read(path, split_bytes=None, pattern=None, **kwargs):
    tables, errors = [], []
    for item in read_text_file(str(path), pattern=pattern, split_bytes=split_bytes, passthrough=("label",), **kwargs):
        if isinstance(item, pa.Table):
            tables.append(item)
        else:
            errors.append(item.value)
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    return sorted(rows, key=lambda r: r["line"]), sorted((e.id, e.error_type) for e in errors)


def _jsonl_lines(n):
    lines = []
    for i in range(n):
        record = {"text": f"record {i} " + "word " * (i % 13), "label": i % 2}
        if i % 4:
            record["id"] = f"r{i}"
        lines.append(json.dumps(record))
    lines[17] = '{"text": broken'
    lines[40] = ""
    return lines


@pytest.mark.parametrize("split_bytes", [97, 1000, 4096])
@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_jsonl_split_equals_whole(tmp_path, split_bytes, encoding):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(_jsonl_lines(300)) + "\n")
    whole = _read(path, encoding=encoding)
    split = _read(path, split_bytes=split_bytes, encoding=encoding)
    assert split == whole
    rows, errors = whole
    assert len(rows) == 298 and errors == [("a.jsonl:18", "RecordError")]
    assert rows[0]["id"] == "a.jsonl:1" and rows[1]["id"] == "r1" and rows[-1]["line"] == 300


def test_csv_quoted_fields_spanning_lines_split_at_record_boundaries(tmp_path):
    path = tmp_path / "b.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text", "label"])
    for i in range(200):
        text = f"row {i}" + ('\nsecond line, with a comma\nand "quotes"' if i % 3 == 0 else "")
        writer.writerow([f"c{i}" if i % 5 else "", text, i % 2])
    path.write_text(buffer.getvalue())
    whole = _read(path)
    assert len(whole[0]) == 200 and not whole[1]
    for split_bytes in (50, 333, 1024):
        assert _read(path, split_bytes=split_bytes) == whole
    assert whole[0][3]["text"].count("\n") == 2
    assert whole[0][0]["id"] == "b.csv:2"  # as before splitting: a multi-line record has the line where it starts


@pytest.mark.parametrize(
    "name,body",
    [
        ("c.tsv", "id\ttext\n" + "".join(f"t{i}\ttext number {i}\n" for i in range(150))),
        ("d.txt", "".join(f"plain line {i}\n" for i in range(150)) + "no newline at the end"),
    ],
)
def test_tsv_and_plain_lines_split_equal_whole(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body)
    whole = _read(path)
    assert len(whole[0]) >= 150
    for split_bytes in (64, 500):
        assert _read(path, split_bytes=split_bytes) == whole


def test_parquet_is_read_by_row_groups(tmp_path):
    path = tmp_path / "e.parquet"
    table = pa.table({"text": [f"parquet text {i}" for i in range(1000)], "label": [i % 3 for i in range(1000)]})
    pq.write_table(table, path, row_group_size=100)
    plan = splits.plan_file(str(path), str(path), os.path.getsize(path), split_bytes=1)
    assert plan.row_groups == (100,) * 10
    ranges = list(splits.FileRestrictions().split(plan, splits.FileRestrictions().initial_restriction(plan)))
    assert len(ranges) == 10
    whole = _read(path)
    assert _read(path, split_bytes=1) == whole
    assert [r["line"] for r in whole[0]] == list(range(1000)) and whole[0][5]["id"] == "e.parquet:5"


def _manifest_records(path, split_bytes):
    """(line, uri, error type) of every record of an image manifest, read range by range."""
    size = os.path.getsize(path)
    plan = splits.plan_file(str(path), str(path), size, split_bytes=split_bytes)
    if splits._needs_counts(plan):
        plan = splits._assemble((str(path), [splits._count_chunk((plan, k))[1] for k in range(-(-size // split_bytes))]))
    provider = splits.FileRestrictions()
    records = []
    for restriction in provider.split(plan, provider.initial_restriction(plan)):
        with splits.fileio.open_input(str(path)) as handle:
            for parsed in splits.iter_range_records(
                plan, OffsetRestrictionTracker(restriction), handle, "utf-8", "uri", max_bytes=200
            ):
                records.append(
                    (parsed.line, (parsed.record or {}).get("uri"), type(parsed.error).__name__ if parsed.error else None)
                )
    return sorted(records)


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz", "m.jsonl", "m.parquet", "m.parquet.gz"])
def test_image_manifest_ranges_read_every_row_once_with_its_number(tmp_path, name):
    rows = [{"uri": f"img{i}.jpg", "label": f"two\nlines {i}" if i % 7 == 0 else "x" * (i % 40)} for i in range(400)]
    path = tmp_path / name
    if ".csv" in name:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ["uri", "label"])
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue().encode()
    elif ".jsonl" in name:
        data = ("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"uri": "long", "label": "x" * 300}) + "\n").encode()
    else:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=50)
        data = sink.getvalue()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    whole = _manifest_records(path, 1 << 20)
    if name.startswith("m.jsonl"):
        assert whole[-1] == (401, None, "RecordTooLarge")
        whole = whole[:-1]
    assert [uri for _, uri, _ in whole] == [r["uri"] for r in rows]
    # Parquet: 0-based rows; JSONL: 1-based lines; CSV: the line where a record starts (row 0 spans lines 2-3)
    expected = [0, 1] if ".parquet" in name else [1, 2] if ".jsonl" in name else [2, 4]
    assert [line for line, _, _ in whole[:2]] == expected
    for split_bytes in (97, 1000):
        assert _manifest_records(path, split_bytes) == _manifest_records(path, 1 << 20)


def test_a_runner_split_mid_range_gives_every_line_to_exactly_one_range(tmp_path):
    """Dynamic splitting (Dataflow rebalancing) at arbitrary byte offsets, on both read paths."""
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(_jsonl_lines(120)) + "\n")
    size = os.path.getsize(path)
    plan = splits.plan_file(str(path), str(path), size, split_bytes=size)
    for fast in (True, False):
        fn = ReadTextFileFn(fast_jsonl=fast)
        ReadTextFileFn.block_bytes = 200
        try:
            lines = []
            for cut in (1, 777, 2000, size - 5):
                for restriction in (OffsetRange(0, cut), OffsetRange(cut, size)):
                    tracker = OffsetRestrictionTracker(restriction)
                    for item in fn.process(plan, tracker):
                        if isinstance(item, pa.Table):
                            lines += item.column("line").to_pylist()
                    tracker.check_done()
                assert sorted(lines) == sorted(set(lines)) and len(lines) == 118, (fast, cut)
                lines = []
        finally:
            ReadTextFileFn.block_bytes = 1 << 20


def _deep_file(tmp_path, name="deep.jsonl"):
    lines = [json.dumps({"id": f"d{i}", "text": f"fine text {i}"}) for i in range(7)]
    lines[3] = '{"id": "deep", "text": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_a_line_nested_100000_deep_is_one_dead_letter(tmp_path, encoding):
    rows, errors = _read(_deep_file(tmp_path), encoding=encoding)
    assert [r["id"] for r in rows] == ["d0", "d1", "d2", "d4", "d5", "d6"]
    assert errors == [("deep.jsonl:4", "RecordError")]


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def _big_body(name: str) -> str:
    if name.endswith(".txt.gz"):
        return "".join(f"plain line number {i} {'x' * (i % 50)}\n" for i in range(30000))
    return "".join(json.dumps({"text": f"line number {i} " + "x" * (i % 50)}) + "\n" for i in range(30000))


@pytest.mark.parametrize(
    "name,compress", [("g.txt.gz", gzip.compress), ("g.jsonl.gz", gzip.compress), ("g.jsonl.bz2", bz2.compress)]
)
def test_truncated_compressed_files_keep_complete_records_and_say_truncated(tmp_path, name, compress):
    body = _big_body(name)
    data = _truncated(compress(body.encode()))
    path = tmp_path / name
    path.write_bytes(data)
    rows, errors = _read(path)
    assert errors == [(f"{name}:*", "TruncatedInput")]
    lines = [r["line"] for r in rows]
    assert lines == list(range(1, len(lines) + 1)) and len(lines) < 30000
    import zlib

    readable = (bz2.BZ2Decompressor() if name.endswith(".bz2") else zlib.decompressobj(31)).decompress(data)
    assert len(lines) == readable.count(b"\n")  # every complete line, and not the cut fragment
    if not lines:  # bz2 decodes whole 900 kB blocks only
        return
    original = body.splitlines()
    expected = original[len(lines) - 1]
    assert rows[-1]["text"] == (json.loads(expected)["text"] if ".jsonl" in name else expected)


def test_a_line_longer_than_max_text_bytes_is_a_dead_letter(tmp_path):
    path = tmp_path / "h.jsonl"
    lines = [json.dumps({"text": f"ok {i}"}) for i in range(5)]
    lines[2] = json.dumps({"text": "y" * 5000})
    path.write_text("\n".join(lines) + "\n")
    for kwargs in ({}, {"encoding": "ascii"}):
        for split_bytes in (None, 30):
            rows, errors = _read(path, split_bytes=split_bytes, max_text_bytes=1000, **kwargs)
            assert [r["line"] for r in rows] == [1, 2, 4, 5]
            assert errors == [("h.jsonl:3", "RecordTooLarge")]


def test_a_200_mb_line_is_skipped_in_little_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as out:
        out.write(b'{"text": "before"}\n{"text": "')
        chunk = b"z" * (1 << 20)
        for _ in range(200):
            out.write(chunk)
        out.write(b'"}\n{"text": "after"}\n')
    script = textwrap.dedent(f"""
        import resource, pyarrow as pa
        from transforms.io.text_read import read_text_file
        items = list(read_text_file({str(path)!r}))
        rows = sum(i.num_rows for i in items if isinstance(i, pa.Table))
        errors = [i.value.error_type for i in items if hasattr(i, "tag")]
        # VmHWM: this process's own peak (ru_maxrss can carry the forking parent's peak over exec)
        status = open("/proc/self/status").read() if __import__("os").path.exists("/proc/self/status") else ""
        peak = [int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:")]
        print(rows, errors, (peak[0] if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) // 1024)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    peak_mb = int(out.stdout.split()[-1])
    assert out.stdout.startswith("2 ['RecordTooLarge']"), out.stdout
    assert peak_mb < 400, f"peak RSS {peak_mb} MB for a 200 MB line"
