"""Issue 19: every input line is accounted for.

Each line of a line-based text input ends up in a record, a dead letter, or a counted blank,
header or continuation line; the manifest's `accounting.text` reconciles them against the input's
physical lines (Parquet: rows), and a run whose lines do not reconcile is not complete. Every
input is built here; the runs are the real job (`python -m pipeline run` or `pipeline.run.main`).
"""

import csv
import hashlib
import io
import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.run import main
from tests_support import run_pipeline
from transforms.io.text_read import ReadTextFileFn, add_tallies, read_text_file, reconcile_file
from transforms.results import read_embeddings, read_errors, read_manifest


def _physical_lines(path: pathlib.Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _run(tmp_path, model, *inputs, extra=()):
    out = tmp_path / "out"
    args = ["run", "--output", out, "--text-model", model]
    for item in inputs:
        args += ["--text-input", item]
    return run_pipeline(*args, *extra), out


def _errors(out) -> dict:
    table = read_errors(str(out), allow_failed=True)
    return {row["id"]: row for row in table.to_pylist()}


def _assert_reconciled(manifest: dict, *files: pathlib.Path) -> dict:
    """The manifest's line accounting equals the files' physical lines, part by part."""
    accounting = manifest["accounting"]["text"]
    counts = manifest["counts"]["text"]
    assert accounting["lines"] == sum(_physical_lines(f) for f in files)
    parts = accounting["record_lines"] + accounting["blank_lines"] + accounting["header_lines"] + accounting["continuation_lines"]
    assert accounting["lines"] == parts and accounting["balanced"] and "unaccounted" not in accounting
    assert counts["read"] == counts["embedded"] + counts["failed"] + counts["skipped"] and counts["balanced"]
    return accounting


# ---- case 3: one unclosed quote no longer swallows the rest of a CSV ----------------------------


def test_an_unclosed_csv_quote_costs_one_line_and_reading_resumes_after_it(tmp_path, tiny_text_model):
    path = tmp_path / "q.csv"
    rows = ["id,text"] + [f"r{i},row number {i} of the file" for i in range(1, 1001)]
    rows[10] = 'r10,"row ten opens a quote that never closes'  # line 11
    path.write_text("\n".join(rows) + "\n")
    result, out = _run(tmp_path, tiny_text_model, path)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    assert manifest["status"] == "complete"
    assert manifest["counts"]["text"] == {"read": 1000, "embedded": 999, "failed": 1, "skipped": 0, "balanced": True}
    [error] = _errors(out).values()
    assert error["id"] == "q.csv:11" and error["error_type"] == "UnclosedQuote" and error["source"].endswith("q.csv:11")
    assert "unclosed quote" in error["message"] and "100 lines" in error["message"]
    embedded = read_embeddings(str(out), "text").to_pylist()
    assert {r["id"] for r in embedded} == {f"r{i}" for i in range(1, 1001)} - {"r10"}
    assert sorted(r["line"] for r in embedded) == [n for n in range(2, 1002) if n != 11]  # one line each
    accounting = _assert_reconciled(manifest, path)
    assert accounting["header_lines"] == 1 and accounting["record_lines"] == 1000 and accounting["continuation_lines"] == 0
    assert "1001 lines = 1000 read + 0 blank + 1 header + 0 continuation: ok" in result.stdout


def test_an_unclosed_quote_near_the_end_and_a_split_file_cost_one_line_each(tmp_path):
    path = tmp_path / "e.csv"
    rows = ["id,text"] + [f"r{i},row {i}" for i in range(1, 301)]
    rows[150] = 'r150,"opens a quote'  # line 151: past 100 lines of the file
    rows[297] = 'r297,"opens another, 3 lines before the end'  # line 298: the file ends inside the quote
    path.write_text("\n".join(rows) + "\n")
    for split_bytes in (None, 500, 4096):
        tallies = []
        items = list(read_text_file(str(path), split_bytes=split_bytes, accounting=tallies))
        tables = [i for i in items if isinstance(i, pa.Table)]
        errors = sorted((i.value.id, i.value.error_type) for i in items if not isinstance(i, pa.Table))
        assert errors == [("e.csv:151", "UnclosedQuote"), ("e.csv:298", "UnclosedQuote")]
        assert sum(t.num_rows for t in tables) == 298
        tally = add_tallies(tallies)
        assert reconcile_file(str(path), tally) is None and tally.total == 301 == _physical_lines(path)


# ---- case 4: a bad byte costs its line only ---------------------------------------------------


def _jsonl_bytes(n: int, prefix: str = "r") -> list[bytes]:
    return [json.dumps({"id": f"{prefix}{i}", "text": f"good film number {i}"}).encode() for i in range(n)]


def test_one_invalid_utf8_byte_costs_one_dead_letter_not_the_file(tmp_path, tiny_text_model):
    lines = _jsonl_bytes(1000)
    lines[500] = b'{"id": "r500", "text": "a bad \xff byte"}'  # line 501
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"\n".join(_jsonl_bytes(100, "g")) + b"\n")
    result, out = _run(tmp_path, tiny_text_model, bad, good)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    assert manifest["counts"]["text"] == {"read": 1100, "embedded": 1099, "failed": 1, "skipped": 0, "balanced": True}
    errors = _errors(out)
    assert list(errors) == ["bad.jsonl:501"] and "not valid utf-8" in errors["bad.jsonl:501"]["message"]
    ids = set(read_embeddings(str(out), "text").column("id").to_pylist())
    assert ids == {f"r{i}" for i in range(1000)} - {"r500"} | {f"g{i}" for i in range(100)}
    _assert_reconciled(manifest, bad, good)


def test_bad_bytes_and_bad_escapes_in_the_id_field_are_dead_letters_not_a_crash(tmp_path, tiny_text_model):
    lines = _jsonl_bytes(300)
    lines[10] = b'{"id": "r1\xff0", "text": "an id with a byte that is not UTF-8"}'  # line 11
    lines[20] = b'{"id": "r\\ud800", "text": "an id with an unpaired surrogate escape"}'  # line 21
    lines[30] = b'{"id": "r30", "text": "a text with an unpaired surrogate \\udc00"}'  # line 31
    lines[40] = b'{"id": "r40", "text": "a bad escape \\x41"}'  # line 41
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result, out = _run(tmp_path, tiny_text_model, path)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    assert manifest["counts"]["text"] == {"read": 300, "embedded": 296, "failed": 4, "skipped": 0, "balanced": True}
    errors = _errors(out)
    assert set(errors) == {"ids.jsonl:11", "ids.jsonl:21", "r30", "ids.jsonl:41"}
    assert errors["ids.jsonl:21"]["error_type"] == "InvalidId" and "surrogate" in errors["ids.jsonl:21"]["message"]
    assert "surrogate" in errors["r30"]["message"] and "malformed JSON" in errors["ids.jsonl:41"]["message"]
    _assert_reconciled(manifest, path)


@pytest.mark.parametrize("split_bytes", [None, 7000])
def test_a_bad_byte_in_a_later_block_keeps_the_lines_before_and_after_it(tmp_path, split_bytes):
    # The 400k-line case made small: blocks of 2,000 bytes (the job's are 1 MiB), a bad byte in
    # the middle of the 10th block and one on the last line of the first block.
    lines = _jsonl_bytes(2000)
    block_lines = 2000 // len(lines[0] + b"\n")
    lines[1000] = lines[1000].replace(b"film", b"f\xc3lm")  # a truncated two-byte sequence
    lines[block_lines - 1] = lines[block_lines - 1].replace(b"good", b"\xfe\xff")
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    tallies = []
    ReadTextFileFn.block_bytes = 2000
    try:
        items = list(read_text_file(str(path), split_bytes=split_bytes, accounting=tallies))
    finally:
        ReadTextFileFn.block_bytes = 1 << 20
    rows = pa.concat_tables([i for i in items if isinstance(i, pa.Table)]).column("line").to_pylist()
    errors = sorted(i.value.id for i in items if not isinstance(i, pa.Table))
    assert errors == sorted([f"big.jsonl:{block_lines}", "big.jsonl:1001"])
    assert sorted(rows) == [n for n in range(1, 2001) if n not in (block_lines, 1001)]
    tally = add_tallies(tallies)
    assert tally.total == 2000 and reconcile_file(str(path), tally) is None
    assert len(tallies) > (1 if split_bytes else 0)


def test_invalid_utf8_in_a_parquet_id_is_a_dead_letter_for_that_row(tmp_path, tiny_text_model):
    ids = pa.array([b"p0", b"p\xff1", b"p2"], pa.binary()).view(pa.string())
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ids, "text": ["one film", "two films", "three films"]}), path)
    result, out = _run(tmp_path, tiny_text_model, path, extra=["--max-failed-fraction", "0.5"])
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    assert manifest["counts"]["text"] == {"read": 3, "embedded": 2, "failed": 1, "skipped": 0, "balanced": True}
    assert list(_errors(out)) == ["t.parquet:1"] and "not UTF-8" in _errors(out)["t.parquet:1"]["message"]
    accounting = manifest["accounting"]["text"]
    assert accounting["rows"] == accounting["record_rows"] == 3 and accounting["balanced"]


def test_the_embedder_dead_letters_a_table_row_whose_id_is_not_utf8():
    # Tables handed to EmbedTextTables by other code: a bad id was a crash in `to_pylist`.
    from transforms.embed.dofns import _without_invalid_utf8

    table = pa.table(
        {
            "id": pa.array([b"a", b"b\xff", b"c"], pa.binary()).view(pa.string()),
            "source": ["s", "s", "s"],
            "text": ["x", "y", "z"],
        }
    )
    kept, errors = _without_invalid_utf8(table)
    assert kept.column("id").to_pylist() == ["a", "c"]
    assert [(e.id, e.error_type, e.stage) for e in errors] == [("b\\xff", "InvalidUtf8", "read")]


# ---- case 9: a multi-line CSV record keeps its first line's number ------------------------------


def test_a_multi_line_csv_record_is_numbered_by_its_first_line(tmp_path, tiny_text_model):
    path = tmp_path / "multi.csv"
    body = (
        "id,text\n"  # 1
        ",one\n,two\n,three\n,four\n,five\n"  # 2-6
        ',"a film\nin two lines"\n'  # 7-8
        "\n"  # 9: blank
        ',"three fields\nover two lines",extra\n'  # 10-11: a dead letter
        ",last\n"  # 12
    )
    path.write_text(body)
    result, out = _run(tmp_path, tiny_text_model, path, extra=["--max-failed-fraction", "0.5"])
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r for r in read_embeddings(str(out), "text").to_pylist()}
    assert rows["multi.csv:7"]["content_sha256"] == hashlib.sha256(b"a film\nin two lines").hexdigest()
    assert rows["multi.csv:7"]["line"] == 7
    assert "multi.csv:8" not in rows and "multi.csv:12" in rows
    errors = _errors(out)
    assert list(errors) == ["multi.csv:10"] and "3 fields" in errors["multi.csv:10"]["message"]
    accounting = _assert_reconciled(read_manifest(str(out)), path)
    assert accounting == {
        "lines": 12,
        "record_lines": 8,
        "blank_lines": 1,
        "header_lines": 1,
        "continuation_lines": 2,
        "rows": 0,
        "record_rows": 0,
        "unaccounted_files": 0,
        "balanced": True,
    }


# ---- the reconciliation ---------------------------------------------------------------------------


def _mixed_inputs(folder: pathlib.Path) -> list[pathlib.Path]:
    folder.mkdir()
    jsonl = folder / "a.jsonl"
    lines = [json.dumps({"id": f"j{i}", "text": f"a film review number {i}"}) for i in range(400)]
    lines[7] = ""
    lines[99] = "   "
    lines[200] = '{"id": "broken", "text": '
    jsonl.write_text("\n".join(lines))  # no newline at the end
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text"])
    for i in range(150):
        writer.writerow([f"c{i}", f"row {i}" + ("\nsecond line\nthird line" if i % 7 == 0 else "")])
        if i % 50 == 0:
            buffer.write("\n")
    (folder / "b.csv").write_text(buffer.getvalue())
    (folder / "c.txt").write_text("".join(f"plain line {i}\n" for i in range(120)))
    pq.write_table(
        pa.table({"id": [f"p{i}" for i in range(90)], "text": [f"parquet {i}" for i in range(90)]}), folder / "d.parquet"
    )
    return [folder / "a.jsonl", folder / "b.csv", folder / "c.txt"]


@pytest.mark.parametrize("split_bytes", [None, "700"])
def test_every_line_of_every_input_is_accounted_for_whole_or_split(tmp_path, tiny_text_model, split_bytes):
    files = _mixed_inputs(tmp_path / "in")
    extra = ["--read-split-bytes", split_bytes] if split_bytes else []
    result, out = _run(tmp_path, tiny_text_model, tmp_path / "in" / "*", extra=extra)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    accounting = _assert_reconciled(manifest, *files)
    csv_lines = _physical_lines(files[1])
    assert accounting["blank_lines"] == 2 + 3  # JSONL: an empty and a spaces-only line; CSV: 3 blank lines
    assert accounting["header_lines"] == 1 and accounting["continuation_lines"] == 2 * 22
    assert accounting["record_lines"] == (400 - 2) + (csv_lines - 1 - 3 - 44) + 120
    assert accounting["rows"] == accounting["record_rows"] == 90
    counts = manifest["counts"]["text"]
    assert counts["read"] == accounting["record_lines"] + accounting["record_rows"] and counts["failed"] == 1
    assert f"{accounting['lines']} lines = {accounting['record_lines']} read" in result.stdout
    assert "90 Parquet rows = 90 read: ok" in result.stdout


def test_a_run_whose_lines_do_not_reconcile_fails_naming_the_file(tmp_path, tiny_text_model, monkeypatch, capsys):
    # Put back the bug of case 4 (pyarrow's reader lets bad bytes through, and the block is lost
    # as one `:*` dead letter): the run no longer passes as complete.
    from transforms.io import text_read

    monkeypatch.setattr(text_read, "_valid_utf8", lambda data: True)
    lines = _jsonl_bytes(1000)
    lines[500] = b'{"id": "r500", "text": "a bad \xff byte"}'
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    argv = ["--output", str(out), "--text-input", str(path), "--text-model", str(tiny_text_model), "--max-failed-fraction", "1"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "do not reconcile" in captured.err and "bad.jsonl: 1000 lines, 0 accounted for" in captured.err
    assert "1000 lines unaccounted" in captured.err and "LINES UNACCOUNTED in 1 file(s)" in captured.out
    manifest = read_manifest(str(out), allow_failed=True)
    assert manifest["status"] == "failed" and not manifest["accounting"]["text"]["balanced"]
    assert manifest["accounting"]["text"]["unaccounted"] == [
        f"{path}: 1000 lines, 0 accounted for (0 in records or dead letters, 0 blank, 0 header, 0 continuation): "
        "1000 lines unaccounted (reading stopped early: see its `:*` dead letter)"
    ]
