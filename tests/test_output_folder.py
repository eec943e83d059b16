"""The output folder is the job's only where the job wrote it (issue 19, cases 1, 2, 7, 8, 10).

Each test runs the real command line (`python -m pipeline run`) on files it builds in tmp_path,
with the tiny text model, and compares every byte under the folders involved before and after:
a refused run touches nothing (exit 2, one line naming the flags), a dry run writes nothing, and
a finished run's folder holds exactly the files its manifest names.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import pytest

from tests_support import run_pipeline
from transforms.results import MANIFEST_NAME


def _tree(folder: pathlib.Path) -> dict:
    """Every file under `folder` (relative path -> bytes), symlinks as their targets' bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(path: pathlib.Path, texts: dict) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts.items()))
    return path


def _run(*args) -> tuple[int, str, str]:
    done = run_pipeline("run", *args)
    return done.returncode, done.stdout, done.stderr


def _error_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def _holds_exactly_its_manifest(out: pathlib.Path) -> dict:
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    listed = {p for paths in manifest["files"].values() for p in paths} | {MANIFEST_NAME}
    assert set(_tree(out)) == listed, "the folder holds files its manifest does not name (or lacks some)"
    return manifest


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_text_model) -> dict:
    """A finished run (`first`) and a carry-over snapshot of a changed input (`snapshot`), made once."""
    root = tmp_path_factory.mktemp("runs")
    texts = {f"r{i}": f"good movie {i}" for i in range(20)}
    data = _records(root / "data" / "reviews.jsonl", texts)
    first, snapshot = root / "first", root / "snapshot"
    model = ["--text-model", tiny_text_model]
    code, _, err = _run("--output", first, "--text-input", data, *model, "--run-id", "first")
    assert code == 0, err
    _records(data, {**texts, "r0": "awful plot twist", "new": "great acting"})
    args = ["--output", snapshot, "--text-input", data, *model, "--incremental-from", first, "--carry-over"]
    code, _, err = _run(*args, "--run-id", "snapshot")
    assert code == 0, err
    return {"root": root, "data": data, "first": first, "snapshot": snapshot, "model": model, "snapshot_args": args}


def test_a_finished_run_folder_holds_exactly_the_manifests_files(runs):
    assert _holds_exactly_its_manifest(runs["first"])["status"] == "complete"
    manifest = _holds_exactly_its_manifest(runs["snapshot"])
    assert any("carried-" in p for p in manifest["files"]["text"]) and any("part-" in p for p in manifest["files"]["text"])


def test_case1_files_the_job_did_not_write_stop_the_run_untouched(tmp_path, runs):
    folder = tmp_path / "F"
    for name, data in {"notes.txt": b"mine", "text/my_precious.parquet": b"PAR1 mine", "image/photo.jpg": b"\xff\xd8"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    before = _tree(folder)
    code, _, err = _run("--output", folder, "--text-input", runs["data"], *runs["model"])
    assert code == 2
    line = _error_line(err)
    assert "--output" in line and "3 file(s)" in line
    assert "image/photo.jpg, notes.txt, text/my_precious.parquet" in line and "nothing was deleted" in line
    assert _tree(folder) == before


def test_case1_a_rerun_clears_an_earlier_run_but_not_a_file_beside_it(tmp_path, runs):
    out = tmp_path / "out"
    shutil.copytree(runs["snapshot"], out)
    (out / "text" / "notes.txt").write_text("mine")
    before = _tree(out)
    code, _, err = _run("--output", out, "--text-input", runs["data"], *runs["model"])
    assert code == 2 and "text/notes.txt" in _error_line(err)
    assert _tree(out) == before  # not even the earlier run's own files went
    (out / "text" / "notes.txt").unlink()
    code, _, err = _run("--output", out, "--text-input", runs["data"], *runs["model"])
    assert code == 0, err
    manifest = _holds_exactly_its_manifest(out)  # the carried-* files of the snapshot are gone too
    assert not any("carried-" in p for p in manifest["files"]["text"])


def test_case1_inputs_inside_the_output_are_refused_before_they_are_read(tmp_path, tiny_image_model, runs):
    folder = tmp_path / "F"
    _records(folder / "text" / "a.jsonl", {"a": "good movie"})
    (folder / "image").mkdir()
    (folder / "image" / "photo.jpg").write_bytes(b"\xff\xd8 not decoded: refused before")
    before = _tree(folder)
    code, _, err = _run(
        "--output",
        folder,
        "--text-input",
        folder / "text" / "*.jsonl",
        *runs["model"],
        "--image-input",
        folder / "image" / "*.jpg",
        "--image-model",
        tiny_image_model,
    )
    assert code == 2
    line = _error_line(err)
    assert "--text-input" in line and "--output" in line and "inside" in line
    assert _tree(folder) == before


@pytest.mark.parametrize("kind", ["absolute link through a linked folder", "chain of relative links"])
def test_case1_a_listed_input_linking_into_the_output_is_refused(tmp_path, runs, kind):
    """The glob lies outside --output, one file it lists resolves into it (each file by its real path)."""
    out, src = tmp_path / "out", tmp_path / "src"
    _records(out / "text" / "mine.jsonl", {"m": "inside the output"})
    _records(src / "a.jsonl", {"a": "good movie"})
    (tmp_path / "linked").symlink_to(out / "text", target_is_directory=True)
    if kind.startswith("absolute"):
        (src / "b.jsonl").symlink_to(tmp_path / "linked" / "mine.jsonl")
    else:
        (src / "hop").symlink_to(tmp_path / "linked" / "mine.jsonl")
        (src / "b.jsonl").symlink_to("hop")
    before = _tree(tmp_path)
    code, _, err = _run("--output", out, "--text-input", f"{src}/*.jsonl", *runs["model"])
    assert code == 2
    line = _error_line(err)
    assert "--text-input" in line and "inside --output" in line
    assert _tree(tmp_path) == before


def test_launch_real_paths_are_os_realpath(tmp_path, monkeypatch):
    """`checks.RealPaths` (each folder resolved once) gives `os.path.realpath` for every kind of path."""
    from pipeline.checks import RealPaths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "out" / "x").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "f.jpg").write_bytes(b"f")
    (tmp_path / "out" / "x" / "g.jpg").write_bytes(b"g")
    links = {
        "lb": "a/b",
        "a/upout": "../out",
        "a/abs.jpg": str(tmp_path / "out" / "x" / "g.jpg"),
        "a/b/rel.jpg": "c/f.jpg",
        "a/b/chain.jpg": "rel.jpg",
        "a/up.jpg": "../out/x/g.jpg",
        "a/b/dots.jpg": ".//c/./f.jpg",
        "loop1": "loop2",
        "loop2": "loop1",
        "dangling": "missing",
    }
    for link, target in links.items():
        (tmp_path / link).symlink_to(target)
    paths = [*links, "a/b/c/f.jpg", "lb/c/f.jpg", "lb/chain.jpg", "a/upout/x/g.jpg", "lb/../a/b/c/f.jpg", "./a//b/c/f.jpg"]
    paths += [str(tmp_path / "lb" / "rel.jpg"), "nope/x", "a/b/c/", "/"]
    real = RealPaths()
    assert [real(p) for p in paths] == [os.path.realpath(p) for p in paths]


def test_case2_incremental_from_a_symlink_to_the_output_is_refused_untouched(tmp_path, runs):
    out = tmp_path / "out"
    shutil.copytree(runs["first"], out)
    latest = tmp_path / "latest"
    latest.symlink_to(out, target_is_directory=True)
    before = _tree(out)
    code, _, err = _run(
        "--output", out, "--text-input", runs["data"], *runs["model"], "--incremental-from", latest, "--carry-over"
    )
    assert code == 2
    line = _error_line(err)
    assert "--incremental-from" in line and "--output" in line and "rerun" not in line
    assert _tree(out) == before


def test_case2_passthrough_embedded_run_id_is_refused_before_anything_is_touched(tmp_path, runs):
    out = tmp_path / "out"
    shutil.copytree(runs["snapshot"], out)  # an earlier run in the folder: it must survive the refusal
    before, earlier = _tree(out), _tree(runs["first"])
    args = ["--output", out, "--text-input", runs["data"], *runs["model"], "--incremental-from", runs["first"]]
    code, _, err = _run(*args, "--carry-over", "--passthrough", "embedded_run_id")
    assert code == 2
    line = _error_line(err)
    assert "--passthrough 'embedded_run_id'" in line and "clashes with an output column" in line and "rerun" not in line
    assert _tree(out) == before and _tree(runs["first"]) == earlier


def test_case7_an_output_inside_the_input_glob_is_refused(tmp_path, runs):
    d = tmp_path / "d"
    _records(d / "reviews.jsonl", {"a": "good movie", "b": "bad film"})
    before = _tree(d)
    code, _, err = _run("--text-input", f"{d}/**", "--output", d / "out", *runs["model"])
    assert code == 2
    line = _error_line(err)
    assert "--text-input" in line and "--output" in line and "inside that glob" in line
    assert _tree(d) == before and not (d / "out").exists()
    code, _, err = _run("--text-input", f"{d}/*.jsonl", "--output", d / "out", *runs["model"])  # a glob that does not reach it
    assert code == 0, err
    assert _holds_exactly_its_manifest(d / "out")["counts"]["text"]["embedded"] == 2


@pytest.mark.parametrize("runner", [[], ["--runner", "DirectRunner"]], ids=["default", "DirectRunner"])
def test_case8_a_dry_run_on_a_carry_over_snapshot_writes_nothing(runs, runner):
    snapshot = runs["snapshot"]
    before = _tree(snapshot)
    code, out, err = _run(*runs["snapshot_args"], *runner, "--dry_run=true")
    assert code == 0, err
    assert "Dry run" in out and "nothing ran" in out
    assert _tree(snapshot) == before  # every byte the same: nothing rewritten, nothing left or removed
    assert not (snapshot / "_RUNNING.json").exists()


def test_case8_a_dry_run_into_a_new_folder_creates_nothing(tmp_path, runs):
    code, out, err = _run("--output", tmp_path / "new", "--text-input", runs["data"], *runs["model"], "--dry_run=true")
    assert code == 0, err
    assert not (tmp_path / "new").exists()


def _missing_folder(tmp_path, runs):
    return tmp_path / "gone"


def _unfinished(tmp_path, runs):
    folder = tmp_path / "unfinished"
    shutil.copytree(runs["first"], folder)
    (folder / MANIFEST_NAME).unlink()
    return folder


def _corrupt_manifest(tmp_path, runs):
    folder = tmp_path / "corrupt"
    shutil.copytree(runs["first"], folder)
    (folder / MANIFEST_NAME).write_text((runs["first"] / MANIFEST_NAME).read_text()[:40])
    return folder


def _deleted_files(tmp_path, runs):
    folder = tmp_path / "deleted"
    shutil.copytree(runs["first"], folder)
    for path in (folder / "text").glob("*.parquet"):
        path.unlink()
    return folder


@pytest.mark.parametrize(
    "earlier, words",
    [
        (_missing_folder, "no such folder"),
        (_unfinished, "has no _MANIFEST.json"),
        (_corrupt_manifest, "cannot be read"),
        (_deleted_files, "are missing"),
    ],
    ids=["missing", "unfinished", "corrupt", "deleted"],
)
def test_case10_a_broken_incremental_from_run_is_named_at_launch_without_rerun_advice(tmp_path, runs, earlier, words):
    folder = earlier(tmp_path, runs)
    out = tmp_path / "out"
    shutil.copytree(runs["first"], out)  # a folder the run would clear: it must not be claimed or cleared
    before = _tree(out), _tree(folder)
    code, _, err = _run("--output", out, "--text-input", runs["data"], *runs["model"], "--incremental-from", folder)
    assert code == 2
    line = _error_line(err)
    assert f"--incremental-from {str(folder)!r}" in line and words in line and "rerun" not in line
    assert (_tree(out), _tree(folder)) == before
