"""Issue 13, item 1: `--incremental-from DIR --carry-over` makes each run folder a complete snapshot."""

import hashlib
import json

import numpy as np
import pytest

from gcs_emulator import gcs_emulator  # noqa: F401 - the fixture
from pipeline.run import main, run
from transforms.results import read_embeddings, read_manifest

WORDS = ["good", "bad", "film", "movie", "great", "acting", "awful", "plot", "twist"]


def _texts(n: int) -> dict:
    return {f"r{i:03d}": f"{WORDS[i % 9]} {WORDS[(i // 9) % 9]} {WORDS[(i // 81) % 9]} {i}" for i in range(n)}


def _lines(records) -> str:
    return "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in records)


def _by_id(table) -> dict:
    return dict(zip(table.column("id").to_pylist(), table.to_pylist()))


def _change(texts: dict) -> tuple[dict, list, list, list]:
    """Run 2's input: 10 changed, 5 removed, 5 added (200 records again)."""
    current = dict(texts)
    changed = [f"r{i:03d}" for i in range(0, 50, 5)]
    removed = [f"r{i:03d}" for i in range(100, 105)]
    added = [f"new{i}" for i in range(5)]
    for k in changed:
        current[k] = "awful plot twist " + k
    for k in removed:
        del current[k]
    for k in added:
        current[k] = "great acting " + k
    return current, changed, removed, added


def _check_snapshot(run1: str, run2: str, texts: dict, current: dict, changed: list, added: list, summary: dict) -> None:
    first, second = _by_id(read_embeddings(run1, "text")), read_embeddings(run2, "text")
    ids = second.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 200 and set(ids) == set(current)  # removed records are absent
    rows = _by_id(second)
    run1_id, run2_id = read_manifest(run1)["run_id"], summary["run_id"]
    unchanged = [k for k in current if k in texts and texts[k] == current[k]]
    assert len(unchanged) == 185
    for k in unchanged:  # copied, not re-embedded: bit-identical, and said to come from run 1
        assert (
            np.asarray(rows[k]["embedding"], np.float32).tobytes() == np.asarray(first[k]["embedding"], np.float32).tobytes()
        ), k
        assert rows[k]["embedded_run_id"] == run1_id and rows[k]["content_sha256"] == first[k]["content_sha256"]
    position = {k: i + 1 for i, k in enumerate(current)}  # removed records moved the later ones up
    source = rows[added[0]]["source"]  # the current input file (on gcs, another file than run 1's)
    assert all(rows[k]["line"] == position[k] and rows[k]["source"] == source for k in unchanged)
    assert first["r150"]["line"] == 151 and rows["r150"]["line"] == 146  # the current line, not run 1's
    for k in changed + added:  # embedded by run 2, from the new text
        assert rows[k]["embedded_run_id"] == run2_id
        assert rows[k]["content_sha256"] == hashlib.sha256(current[k].encode()).hexdigest()
    for k in changed:
        assert rows[k]["embedding"] != first[k]["embedding"], k
    assert summary["counts"]["text"] == {
        "read": 200,
        "embedded": 15,
        "failed": 0,
        "skipped": 185,
        "carried": 185,
        "removed": 5,
        "balanced": True,
    }
    assert summary["status"] == "complete" and summary["carry_over"] is True


@pytest.mark.slow
def test_carry_over_run_is_a_complete_snapshot_and_chains(tmp_path, capsys, tiny_text_model):
    texts = _texts(200)
    data = tmp_path / "t.jsonl"
    data.write_text(_lines(texts.items()))
    common = ["--text-input", str(data), "--text-model", str(tiny_text_model)]
    run1, run2, run3 = (str(tmp_path / f"run{i}") for i in (1, 2, 3))
    run(["--output", run1] + common)

    current, changed, removed, added = _change(texts)
    data.write_text(_lines(current.items()))
    second = run(["--output", run2, "--incremental-from", run1, "--carry-over"] + common)
    _check_snapshot(run1, run2, texts, current, changed, added, second)
    assert "text: 185 earlier embedding(s) carried over: 200 rows in text/" in capsys.readouterr().out

    # run 3 from both runs (each unchanged record is in both: one row), with duplicates in the input:
    # an unchanged record repeated as is (skipped, not carried twice), a changed one repeated with
    # other text (a DuplicateId dead letter; its first occurrence is carried)
    repeated = list(current.items()) + [("r001", current["r001"]), ("r002", "bad bad bad")]
    data.write_text(_lines(repeated))
    third = run(["--output", run3, "--incremental-from", run1, "--incremental-from", run2, "--carry-over"] + common)
    assert third["counts"]["text"] == {
        "read": 202,
        "embedded": 0,
        "failed": 1,
        "skipped": 201,
        "carried": 200,
        "removed": len(removed),
        "balanced": True,
    }
    table = read_embeddings(run3, "text")
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 200 and set(ids) == set(current)
    rows, snapshot = _by_id(table), _by_id(read_embeddings(run2, "text"))
    for k in current:  # the same vectors and provenance as the snapshot it came from
        assert rows[k]["embedding"] == snapshot[k]["embedding"] and rows[k]["embedded_run_id"] == snapshot[k]["embedded_run_id"]
    assert rows["r002"]["source"] == str(data) and rows["r002"]["line"] == 3  # the first occurrence's line

    # run 4 from the snapshot alone, nothing changed: again one row per record, nothing embedded
    data.write_text(_lines(current.items()))
    fourth = run(["--output", str(tmp_path / "run4"), "--incremental-from", run3, "--carry-over"] + common)
    assert fourth["counts"]["text"]["carried"] == 200 and fourth["counts"]["text"]["embedded"] == 0
    assert sorted(read_embeddings(str(tmp_path / "run4"), "text").column("id").to_pylist()) == sorted(current)


@pytest.mark.slow
def test_carry_over_on_gcs(tmp_path, gcs_emulator, tiny_text_model):
    texts = _texts(200)
    data = tmp_path / "t.jsonl"
    data.write_text(_lines(texts.items()))
    model = gcs_emulator.upload(tiny_text_model, "carry", "text.keras")
    run1, run2 = gcs_emulator.url("carry", "run1"), gcs_emulator.url("carry", "run2")
    run(["--output", run1, "--text-input", gcs_emulator.upload(data, "carry", "in1.jsonl"), "--text-model", model])

    current, changed, removed, added = _change(texts)
    data.write_text(_lines(current.items()))
    second = run(
        [
            "--output",
            run2,
            "--incremental-from",
            run1,
            "--carry-over",
            "--text-input",
            gcs_emulator.upload(data, "carry", "in2.jsonl"),
            "--text-model",
            model,
        ]
    )
    _check_snapshot(run1, run2, texts, current, changed, added, second)


def test_carry_over_without_an_earlier_run_is_a_configuration_error(tmp_path, capsys, tiny_text_model):
    data = tmp_path / "t.jsonl"
    data.write_text(_lines([("a", "good film")]))
    code = main(
        ["--output", str(tmp_path / "out"), "--text-input", str(data), "--text-model", str(tiny_text_model), "--carry-over"]
    )
    assert code == 2
    assert (
        "--carry-over: copies the unchanged records of an earlier run; give that run with --incremental-from"
        in capsys.readouterr().err
    )


@pytest.mark.slow
def test_carry_over_of_images_beside_text(tmp_path, tiny_text_model, tiny_image_model):
    from PIL import Image

    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.RandomState(3)
    for i in range(8):
        Image.fromarray((rng.rand(20, 20, 3) * 255).astype("uint8")).save(images / f"{i}.png")
    texts = _texts(30)
    data = tmp_path / "t.jsonl"
    data.write_text(_lines(texts.items()))
    common = [
        "--text-input",
        str(data),
        "--text-model",
        str(tiny_text_model),
        "--image-input",
        str(images / "*.png"),
        "--image-model",
        str(tiny_image_model),
    ]
    run1, run2, run3 = (str(tmp_path / f"run{i}") for i in (1, 2, 3))
    run(["--output", run1] + common)

    Image.fromarray((rng.rand(20, 20, 3) * 255).astype("uint8")).save(images / "1.png")  # changed
    Image.fromarray((rng.rand(20, 20, 3) * 255).astype("uint8")).save(images / "new.png")  # added
    (images / "5.png").unlink()  # removed
    texts["r003"] = "awful plot twist"
    data.write_text(_lines(texts.items()))
    second = run(["--output", run2, "--incremental-from", run1, "--carry-over"] + common)
    assert second["counts"]["image"] == {
        "read": 8,
        "embedded": 2,
        "failed": 0,
        "skipped": 6,
        "carried": 6,
        "removed": 1,
        "balanced": True,
    }
    assert second["counts"]["text"] == {
        "read": 30,
        "embedded": 1,
        "failed": 0,
        "skipped": 29,
        "carried": 29,
        "removed": 0,
        "balanced": True,
    }
    first, snap = _by_id(read_embeddings(run1, "image")), read_embeddings(run2, "image")
    ids = snap.column("id").to_pylist()
    current = {p.name for p in images.glob("*.png")}  # ids: paths relative to the glob's folder
    assert len(ids) == len(set(ids)) == 8 and set(ids) == current
    rows = _by_id(snap)
    for k in current - {"1.png", "new.png"}:
        assert np.asarray(rows[k]["embedding"], np.float32).tobytes() == np.asarray(first[k]["embedding"], np.float32).tobytes()
        assert rows[k]["embedded_run_id"] == first_run_id(run1) and rows[k]["source"] == str(images / k)
    assert rows["1.png"]["embedded_run_id"] == second["run_id"]
    assert rows["1.png"]["embedding"] != first["1.png"]["embedding"]

    # from both runs (the unchanged images are in both): still one row per image
    third = run(["--output", run3, "--incremental-from", run1, "--incremental-from", run2, "--carry-over"] + common)
    assert third["counts"]["image"]["carried"] == 8 and third["counts"]["image"]["embedded"] == 0
    again = read_embeddings(run3, "image")
    assert sorted(again.column("id").to_pylist()) == sorted(current)
    assert _by_id(again)["1.png"]["embedding"] == rows["1.png"]["embedding"]


def first_run_id(folder: str) -> str:
    return read_manifest(folder)["run_id"]


def _bucket_check(current, prior, first_only):
    """Run one bucket of dedup's check on hand-made key slices; returns {current line: earlier position}."""
    from transforms.state.dedup import CARRY_ROWS, check_bucket
    from transforms.state.keys import PriorKeys, row_positions, text_key_batch

    parts = []
    for path, lines, ikeys, ckeys in current:
        parts += [b for _, b in text_key_batch(path, 0, lines, np.array(ikeys, np.uint64), np.array(ckeys, np.uint64), 0)]
    for file_index, group, ikeys, ckeys in prior:
        positions = row_positions(file_index, group, np.arange(len(ikeys)))
        parts.append(PriorKeys(np.array(ikeys, np.uint64), np.array(ckeys, np.uint64), positions))
    carried = {}
    for out in check_bucket((0, parts), carry=True, first_only=first_only):
        if getattr(out, "tag", None) == CARRY_ROWS:
            (file_index, group), (rows, paths, path_of_row, lines) = out.value
            for row, p, line in zip(rows.tolist(), path_of_row.tolist(), lines.tolist()):
                carried[(paths[p], line)] = (file_index, group, row)
    return carried


def test_one_earlier_row_per_carried_record_even_when_earlier_runs_repeat_it():
    # earlier: id 1 twice in file 0 (an --allow-duplicate-ids run), again in file 1; id 2 with old content
    prior = [(0, 0, [1, 1, 2], [10, 10, 20]), (1, 3, [1, 2], [10, 21])]
    # now: id 1 unchanged twice (lines 5, 9), id 2 changed (content 22), id 3 new
    current = [("a", [5, 9, 6, 7], [1, 1, 2, 3], [10, 10, 22, 30])]
    assert _bucket_check(current, prior, first_only=True) == {("a", 5): (0, 0, 0)}  # the first earlier row, once
    assert _bucket_check(current, prior, first_only=False) == {("a", 5): (0, 0, 0)}  # one per (id, content)
    # the first occurrence changed, a later one unchanged: the new embedding is the id's row, nothing carried
    current = [("a", [1, 2], [2, 2], [22, 20])]
    assert _bucket_check(current, prior, first_only=True) == {}
    assert _bucket_check(current, prior, first_only=False) == {("a", 2): (0, 0, 2)}
