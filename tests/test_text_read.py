"""The text reader: pyarrow's fast JSONL path gives exactly what the line-by-line parser gives."""

import gzip
import json

import pyarrow as pa
import pytest

from transforms.io.text_read import ReadTextFileFn, read_text_file


def _read(path, block=None, split_bytes=None, **kwargs):
    if block:
        ReadTextFileFn.block_bytes = block
    tables, errors = [], []
    try:
        items = list(read_text_file(str(path), split_bytes=split_bytes, passthrough=("label", "flag"), **kwargs))
    finally:
        ReadTextFileFn.block_bytes = 1 << 20
    for item in items:
        if isinstance(item, pa.Table):
            tables.append(item)
        else:
            errors.append(item.value)
    table = pa.concat_tables(tables) if tables else None
    return table.to_pylist() if table is not None else [], sorted(errors, key=lambda e: e.id)


def _records(n):
    out = []
    for i in range(n):
        record = {"id": i if i % 3 else f"s{i}", "text": f"record {i} caf\u00e9 \u2603", "label": i % 2, "flag": i % 5 == 0}
        if i % 7 == 0:
            del record["id"]
        if i % 11 == 0:
            record["id"] = ""
        out.append(json.dumps(record, ensure_ascii=i % 2 == 0))
    return out


@pytest.mark.parametrize("bad", [False, True])
@pytest.mark.parametrize("block", [None, 300])
def test_fast_jsonl_path_equals_the_line_parser(tmp_path, bad, block):
    lines = _records(500)
    if bad:
        lines[123] = '{"id": "x", "text": '  # malformed
        lines[321] = ""  # blank
        lines[400] = json.dumps({"id": "n", "text": None})
        lines[401] = json.dumps({"id": 1.5, "text": "float id"})
        lines[402] = json.dumps({"id": "nul", "text": "a\u0000b"})
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    fast_rows, fast_errors = _read(path, block=block)
    slow_rows, slow_errors = _read(path, fast_jsonl=False)
    assert fast_rows == slow_rows
    assert fast_errors == slow_errors
    assert len(fast_rows) == (500 - 3 - 1 if bad else 500)  # 3 dead letters, 1 blank line
    assert len(fast_errors) == (3 if bad else 0)
    assert fast_rows[0]["id"] == "r.jsonl:1" and fast_rows[1]["id"] == "1" and fast_rows[3]["id"] == "s3"
    assert fast_rows[1]["label"] == "1" and fast_rows[0]["flag"] == "true"


def test_gzip_and_byte_order_mark(tmp_path):
    body = "\ufeff" + "\n".join(_records(50)) + "\n"
    plain = tmp_path / "a.jsonl"
    plain.write_text(body, encoding="utf-8")
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(body.encode("utf-8")))
    rows_plain, errors_plain = _read(plain)
    rows_packed, errors_packed = _read(packed)
    assert not errors_plain and not errors_packed
    assert len(rows_plain) == len(rows_packed) == 50
    assert [r["text"] for r in rows_plain] == [r["text"] for r in rows_packed]


def test_a_truncated_gzip_gives_its_complete_records_and_one_truncation_dead_letter(tmp_path):
    import zlib

    path = tmp_path / "c.jsonl.gz"
    data = gzip.compress(("\n".join(_records(50)) + "\n").encode())[:-30]
    path.write_bytes(data)
    readable = zlib.decompressobj(31).decompress(data)  # what survives the cut
    complete = readable.count(b"\n")
    assert 0 < complete < 50
    rows, errors = _read(path)
    assert [(e.id, e.error_type, e.stage) for e in errors] == [("c.jsonl.gz:*", "TruncatedInput", "read")]
    assert "truncated" in errors[0].message
    assert [r["line"] for r in rows] == list(range(1, complete + 1))  # the cut fragment is not a record
