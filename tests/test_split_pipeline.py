"""Splittable reads in the whole job: one file spread over two worker processes, split reads equal
to unsplit ones, path ids stable across spellings, and broken inputs costing one dead letter."""

import csv
import gzip
import io
import json
import os
import pathlib
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.run import main, run
from tests_support import PROJECT_ROOT, TWO_WORKER_PROCESSES, run_pipeline
from transforms.results import read_embeddings, read_errors, read_manifest


def _by_id(table: pa.Table) -> dict:
    """Rows by id, without `embedded_run_id` (the run that embedded the row: each run has its own id)."""
    return {row["id"]: {k: v for k, v in row.items() if k != "embedded_run_id"} for row in table.to_pylist()}


@pytest.mark.slow
def test_one_file_is_embedded_by_both_worker_processes(tmp_path, tiny_text_model):
    """The real CLI with two worker processes and 16 KiB ranges. Beam's Parquet sink writes one file
    per bundle that has rows; the FnApiRunner runs a stage's parallel bundles on different worker
    processes (round robin), so two part files that each hold rows of the one input file show that
    both processes read and embedded part of it (before splitting, one process read the whole file
    and wrote the only part file)."""
    data = tmp_path / "big.jsonl"
    data.write_text("".join(json.dumps({"text": f"good movie number {i} " + "bad film " * (i % 7)}) + "\n" for i in range(3000)))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    done = run_pipeline(
        "run",
        "--output",
        out,
        "--text-input",
        data,
        "--text-model",
        tiny_text_model,
        "--read-split-bytes",
        "16384",
        *TWO_WORKER_PROCESSES,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = read_manifest(str(out))
    assert manifest["counts"]["text"] == {"read": 3000, "embedded": 3000, "failed": 0, "skipped": 0, "balanced": True}
    parts = sorted((out / "text").glob("part-*.parquet"))
    assert len(parts) == 2, parts
    lines = [pq.read_table(part).column("line").to_pylist() for part in parts]
    assert all(len(part_lines) > 100 for part_lines in lines)  # each process embedded a good share
    assert sorted(lines[0] + lines[1]) == list(range(1, 3001))  # every line once, numbered as in the file
    # the same embeddings as one process reading the file whole
    single = tmp_path / "single"
    run(["--output", str(single), "--text-input", str(data), "--text-model", str(tiny_text_model)])
    split_rows, whole_rows = _by_id(read_embeddings(str(out), "text")), _by_id(read_embeddings(str(single), "text"))
    assert split_rows.keys() == whole_rows.keys() and "big.jsonl:1" in split_rows
    for key, row in whole_rows.items():
        assert split_rows[key]["line"] == row["line"] and split_rows[key]["embedding"] == row["embedding"]


def _inputs(root: pathlib.Path) -> None:
    text = root / "text"
    text.mkdir(parents=True)
    with open(text / "a.jsonl", "w") as f:
        for i in range(400):
            f.write(
                "{broken\n"
                if i == 77
                else json.dumps({"id": f"j{i}" if i % 3 else "", "text": f"good film {i}", "label": i % 2}) + "\n"
            )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text", "label"])
    for i in range(300):
        writer.writerow([f"c{i}", f"great acting {i}" + ('\nsecond line, "quoted"' if i % 4 == 0 else ""), i % 2])
    (text / "b.csv").write_text(buffer.getvalue())
    (text / "c.txt").write_text("".join(f"plain line {i}\n" for i in range(300)))
    pq.write_table(
        pa.table(
            {
                "id": [f"p{i}" for i in range(500)],
                "text": [f"awful plot {i}" for i in range(500)],
                "label": [str(i % 2) for i in range(500)],
            }
        ),
        text / "d.parquet",
        row_group_size=50,
    )
    images = root / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (20 + i, 20), (i * 50, 90, 10)).save(images / f"{i}.png")
    rows = "".join(f"images/{i % 4}.png,k{i},{i % 3}\n" for i in range(120))
    (root / "manifest.csv").write_text("uri,key,label\n" + rows + "images/missing.png,gone,0\n")


@pytest.mark.slow
def test_split_reads_equal_unsplit_reads_for_every_format(tmp_path, tiny_text_model, tiny_image_model):
    _inputs(tmp_path)
    common = [
        "--text-input",
        str(tmp_path / "text" / "*"),
        "--text-model",
        str(tiny_text_model),
        "--image-input",
        str(tmp_path / "manifest.csv"),
        "--image-id-field",
        "key",
        "--image-model",
        str(tiny_image_model),
        "--passthrough",
        "label",
    ]
    whole = run(["--output", str(tmp_path / "whole")] + common)
    split = run(["--output", str(tmp_path / "split"), "--read-split-bytes", "300"] + common)
    assert whole["counts"] == split["counts"]
    assert whole["counts"]["text"] == {"read": 1500, "embedded": 1499, "failed": 1, "skipped": 0, "balanced": True}
    assert whole["counts"]["image"]["read"] == 121 and whole["counts"]["image"]["balanced"]
    for modality in ("text", "image"):
        a, b = (
            _by_id(read_embeddings(str(tmp_path / "whole"), modality)),
            _by_id(read_embeddings(str(tmp_path / "split"), modality)),
        )
        assert a == b, modality
    text = _by_id(read_embeddings(str(tmp_path / "split"), "text"))
    assert text["a.jsonl:1"]["line"] == 1 and text["j1"]["line"] == 2 and text["c.txt:300"]["line"] == 300
    assert text["p0"]["line"] == 0 and text["p499"]["line"] == 499 and text["c4"]["label"] == "0"

    def errors(name):
        return sorted((e["id"], e["error_type"]) for e in read_errors(str(tmp_path / name)).to_pylist())

    assert errors("whole") == errors("split") == sorted([("a.jsonl:78", "RecordError"), ("gone", "FileNotFoundError")])


def _deep_jsonl(path: pathlib.Path) -> None:
    lines = [json.dumps({"id": f"d{i}", "text": f"good film {i}"}) for i in range(7)]
    lines[3] = '{"id": "deep", "text": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--text-encoding", "ascii"]])
def test_a_line_nested_100000_levels_deep_is_one_dead_letter(tmp_path, tiny_text_model, extra):
    data = tmp_path / "deep.jsonl"
    _deep_jsonl(data)
    out = tmp_path / "out"
    code = main(
        ["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model), "--max-failed-fraction", "0.2"]
        + extra
    )  # 1 of 7 is over the default 0.1
    assert code == 0
    manifest = read_manifest(str(out))
    assert manifest["counts"]["text"] == {"read": 7, "embedded": 6, "failed": 1, "skipped": 0, "balanced": True}
    assert sorted(read_embeddings(str(out), "text").column("id").to_pylist()) == [f"d{i}" for i in (0, 1, 2, 4, 5, 6)]
    (error,) = read_errors(str(out)).to_pylist()
    assert error["id"] == "deep.jsonl:4" and error["stage"] == "read" and "deep" in error["message"]


@pytest.mark.slow
def test_truncated_gzip_files_give_complete_records_and_one_truncation_dead_letter(tmp_path, tiny_text_model):
    import zlib

    folder = tmp_path / "in"
    folder.mkdir()
    plain = "".join(f"good film number {i} {'x' * (i % 40)}\n" for i in range(30000)).encode()
    jsonl = "".join(json.dumps({"text": f"bad movie {i} {'y' * (i % 40)}"}) + "\n" for i in range(30000)).encode()
    complete = {}
    for name, body in (("cut.txt.gz", plain), ("cut.jsonl.gz", jsonl)):
        packed = gzip.compress(body)
        packed = packed[: len(packed) // 2]
        (folder / name).write_bytes(packed)
        complete[name] = zlib.decompressobj(31).decompress(packed).count(b"\n")
    out = tmp_path / "out"
    manifest = run(
        [
            "--output",
            str(out),
            "--text-input",
            str(folder / "*.gz"),
            "--text-model",
            str(tiny_text_model),
            "--allow-duplicate-ids",
        ]
    )
    counts = manifest["counts"]["text"]
    total = sum(complete.values())
    assert counts == {"read": total + 2, "embedded": total, "failed": 2, "skipped": 0, "balanced": True}
    errors = sorted((e["id"], e["error_type"], e["source"]) for e in read_errors(str(out)).to_pylist())
    assert errors == [
        ("cut.jsonl.gz:*", "TruncatedInput", str(folder / "cut.jsonl.gz")),
        ("cut.txt.gz:*", "TruncatedInput", str(folder / "cut.txt.gz")),
    ]
    ids = set(read_embeddings(str(out), "text").column("id").to_pylist())
    for name, n in complete.items():  # every complete line, and never the cut fragment
        assert {i for i in ids if i.startswith(name + ":")} == {f"{name}:{line}" for line in range(1, n + 1)}


@pytest.mark.slow
def test_three_spellings_of_one_glob_give_the_same_ids(tmp_path, monkeypatch, tiny_text_model, tiny_image_model):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "r.jsonl").write_text("".join(json.dumps({"text": f"good film {i}"}) + "\n" for i in range(3)))
    for i in range(2):
        Image.new("RGB", (20, 20), (i * 90, 10, 10)).save(data / "sub" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    results = []
    for n, prefix in enumerate(["data", "./data", str(data)]):
        out = tmp_path / f"out{n}"
        run(
            [
                "--output",
                str(out),
                "--text-input",
                f"{prefix}/*/*.jsonl",
                "--text-model",
                str(tiny_text_model),
                "--image-input",
                f"{prefix}/**/*.png",
                "--image-model",
                str(tiny_image_model),
            ]
        )
        text = read_embeddings(str(out), "text")
        images = read_embeddings(str(out), "image")
        results.append((sorted(text.column("id").to_pylist()), sorted(images.column("id").to_pylist())))
        assert all(pathlib.Path(s).resolve().parent == (data / "sub").resolve() for s in text.column("source").to_pylist())
    assert results[0] == results[1] == results[2]
    assert results[0] == (["sub/r.jsonl:1", "sub/r.jsonl:2", "sub/r.jsonl:3"], ["sub/0.png", "sub/1.png"])


def test_the_launcher_lists_each_input_pattern_once(tmp_path, monkeypatch, tiny_text_model, tiny_image_model):
    """Checking the inputs, sizing the duplicate check, ordering the files and counting the images
    share one listing per pattern (a gs:// glob of many files is listed once at launch, not three
    times); the pipeline's own MatchFiles lists them again where it runs."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.io import splits

    for i in range(3):
        (tmp_path / f"{i}.jsonl").write_text(
            "".join(json.dumps({"id": f"{i}-{n}", "text": f"good film {n}"}) + "\n" for n in range(5))
        )
        Image.new("RGB", (20, 20), (i * 60, 10, 10)).save(tmp_path / f"{i}.png")
    texts, images = str(tmp_path / "*.jsonl"), str(tmp_path / "*.png")
    real = FileSystems.match
    calls = {"launcher": [], "pipeline": []}

    def match(patterns, limits=None):
        caller = sys._getframe(1).f_code  # MatchFiles' own listing (its function may arrive pickled)
        in_pipeline = (caller.co_name, caller.co_filename) == ("_match", splits.__file__)
        calls["pipeline" if in_pipeline else "launcher"].extend(patterns)
        return real(patterns, limits)

    monkeypatch.setattr(FileSystems, "match", staticmethod(match))
    result = run(
        [
            "--output",
            str(tmp_path / "out"),
            "--text-input",
            texts,
            "--text-model",
            str(tiny_text_model),
            "--image-input",
            images,
            "--image-model",
            str(tiny_image_model),
        ]
    )
    assert result["counts"]["text"]["embedded"] == 15 and result["counts"]["image"]["embedded"] == 3
    assert calls["launcher"].count(texts) == 1 and calls["launcher"].count(images) == 1, calls["launcher"]
    assert calls["pipeline"].count(texts) >= 1 and calls["pipeline"].count(images) >= 1, calls["pipeline"]
