"""The duplicate-id stage, by what a user sees: one row per id (the first occurrence by file, then
line), every later occurrence a `DuplicateId` dead letter naming the kept one, counts that add up.
Tested through the job, so the tests hold whatever the stage's internals become."""

import hashlib
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from pipeline.run import run
from transforms.results import read_embeddings, read_errors


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonl(path: pathlib.Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))


@pytest.fixture(scope="module")
def text_inputs(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("dedup-text")
    # b.jsonl is listed first on purpose: the rule follows the sorted file order, then the line.
    bulk = [(f"b{i}", f"good film {i}") for i in range(5000)]  # more than one read batch
    _jsonl(folder / "b.jsonl", [("x", "bad film from b")] + bulk + [("y", "great acting, the last line of b")])
    _jsonl(
        folder / "a.jsonl",
        [("y", "good movie"), ("z", "only once"), ("x", "awful plot twist"), ("w", "film"), ("x", "good movie again")],
    )
    (folder / "c.csv").write_text('id,text\ny,"a review from a csv"\nv,movie\n')
    return folder


@pytest.mark.slow
def test_the_first_occurrence_is_embedded_and_later_ones_are_dead_letters(tmp_path, text_inputs, tiny_text_model):
    out = tmp_path / "out"
    manifest = run(
        [
            "--output",
            str(out),
            "--text-input",
            str(text_inputs / "*.jsonl"),
            "--text-input",
            str(text_inputs / "c.csv"),
            "--text-model",
            str(tiny_text_model),
        ]
    )
    rows = read_embeddings(str(out), "text").to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == len(by_id)  # one row per id
    assert set(by_id) == {"x", "y", "z", "w", "v"} | {f"b{i}" for i in range(5000)}
    a, b, c = (str(text_inputs / name) for name in ("a.jsonl", "b.jsonl", "c.csv"))
    assert (by_id["x"]["source"], by_id["x"]["line"], by_id["x"]["content_sha256"]) == (a, 3, _sha("awful plot twist"))
    assert (by_id["y"]["source"], by_id["y"]["line"], by_id["y"]["content_sha256"]) == (a, 1, _sha("good movie"))

    errors = read_errors(str(out)).to_pylist()
    assert {e["error_type"] for e in errors} == {"DuplicateId"}
    later = sorted((e["id"], e["stage"]) for e in errors)
    assert later == [("x", "read"), ("x", "read"), ("y", "read"), ("y", "read")]
    for error in errors:  # each names the occurrence that was kept
        kept = by_id[error["id"]]
        assert f"{kept['source']}:{kept['line']}" in error["message"], error
    assert {e["source"] for e in errors if e["id"] == "y"} == {f"{b}:5002", f"{c}:2"}
    assert {e["source"] for e in errors if e["id"] == "x"} == {f"{b}:1", f"{a}:5"}

    counts = manifest["counts"]["text"]
    assert counts == {"read": 5009, "embedded": 5005, "failed": 4, "skipped": 0, "balanced": True}


@pytest.mark.slow
def test_allow_duplicate_ids_embeds_every_occurrence(tmp_path, text_inputs, tiny_text_model):
    out = tmp_path / "out"
    manifest = run(
        [
            "--output",
            str(out),
            "--text-input",
            str(text_inputs / "a.jsonl"),
            "--text-model",
            str(tiny_text_model),
            "--allow-duplicate-ids",
        ]
    )
    ids = sorted(read_embeddings(str(out), "text").column("id").to_pylist())
    assert ids == ["w", "x", "x", "y", "z"]
    assert read_errors(str(out)).num_rows == 0
    assert manifest["counts"]["text"]["embedded"] == 5


@pytest.mark.slow
def test_duplicate_image_ids_keep_one_row_and_name_it(tmp_path, tiny_image_model):
    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.RandomState(5)
    for name in ("one", "two", "three", "four"):
        Image.fromarray((rng.rand(24, 24, 3) * 255).astype("uint8")).save(folder / f"{name}.png")
    (tmp_path / "m1.csv").write_text("id,uri\nsolo,img/one.png\ncat,img/two.png\ncat,img/three.png\n")
    (tmp_path / "m2.csv").write_text("id,uri\ncat,img/four.png\ndog,img/one.png\n")
    out = tmp_path / "out"
    manifest = run(
        [
            "--output",
            str(out),
            "--image-input",
            str(tmp_path / "m1.csv"),
            "--image-input",
            str(tmp_path / "m2.csv"),
            "--image-id-field",
            "id",
            "--image-model",
            str(tiny_image_model),
            "--image-layer",
            "features",
            "--max-failed-fraction",
            "1",
        ]
    )  # the duplicates are dead letters on purpose
    rows = read_embeddings(str(out), "image").to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert sorted(r["id"] for r in rows) == ["cat", "dog", "solo"]  # the same picture under two ids is no duplicate
    errors = read_errors(str(out)).to_pylist()
    assert sorted((e["id"], e["stage"], e["error_type"]) for e in errors) == [("cat", "read", "DuplicateId")] * 2
    kept = by_id["cat"]["source"]
    assert all(kept in e["message"] for e in errors)  # names the kept occurrence
    assert {e["source"] for e in errors} | {kept} == {str(folder / f"{n}.png") for n in ("two", "three", "four")}
    assert by_id["cat"]["content_sha256"] == hashlib.sha256(pathlib.Path(kept).read_bytes()).hexdigest()
    assert manifest["counts"]["image"] == {"read": 5, "embedded": 3, "failed": 2, "skipped": 0, "balanced": True}
