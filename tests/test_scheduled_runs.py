"""Scheduled runs (issue 22, item 7): an incremental run counts the records that left the input
(`removed`, manifest and summary), every run writes one schema (`embedded_run_id` with or without
`--carry-over`), and the flex template takes several earlier runs (`incremental_from=A,B`, run by
the template's own launcher script). Real runs of the CLI on real files, tiny real models.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.tests_support import PROJECT_ROOT, run_pipeline
from transforms.results import read_embeddings, read_manifest

V1 = [{"id": f"t{i}", "text": f"good film number {i}"} for i in range(12)]
V2 = V1[3:] + [{"id": "t-new", "text": "bad plot"}]  # t0, t1, t2 left; one arrived
V3 = V2[2:]  # t3, t4 left too (t0..t2 were already gone at the second run)


def _images(folder: pathlib.Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        seed = int(name[len("img") : -len(".png")])
        Image.fromarray((np.random.RandomState(seed).rand(20, 20, 3) * 255).astype("uint8")).save(folder / name)


def _jsonl(path: pathlib.Path, records: list) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_text_model, tiny_image_model) -> dict:
    root = tmp_path_factory.mktemp("scheduled")
    _images(root / "images1", ["img0.png", "img1.png", "img2.png", "img3.png"])
    _images(root / "images2", ["img1.png", "img2.png", "img3.png", "img9.png"])  # img0 left, img9 arrived
    models = ("--text-model", tiny_text_model, "--image-model", tiny_image_model, "--image-layer", "features")

    def launch(name, records, images, *flags):
        out = root / name
        done = run_pipeline(
            "run", "--output", out, "--text-input", _jsonl(root / f"{name}.jsonl", records),
            "--image-input", f"{images}/*.png", *models, "--run-id", name, *flags,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return out, done.stdout

    first, _ = launch("r1", V1, root / "images1")
    second, summary = launch("r2", V2, root / "images2", "--incremental-from", first)
    return {"root": root, "r1": first, "r2": second, "summary": summary, "models": models}


def test_an_incremental_run_counts_the_records_that_left_the_input(runs):
    counts = read_manifest(str(runs["r2"]))["counts"]
    assert counts["text"]["removed"] == 3 and counts["image"]["removed"] == 1
    assert counts["text"]["skipped"] == 9 and counts["text"]["embedded"] == 1  # removed is not part of read
    assert counts["text"]["read"] == counts["text"]["embedded"] + counts["text"]["failed"] + counts["text"]["skipped"]
    assert "text: 3 record(s) of the earlier run(s) no longer in the input (removed)" in runs["summary"]
    assert "image: 1 record(s) of the earlier run(s) no longer in the input (removed)" in runs["summary"]
    assert "removed" not in read_manifest(str(runs["r1"]))["counts"]["text"]  # a full run has no earlier run


def test_every_run_writes_one_schema_with_or_without_carry_over(runs, tmp_path):
    done = run_pipeline(
        "run", "--output", tmp_path / "snap", "--text-input", _jsonl(tmp_path / "v2.jsonl", V2),
        *runs["models"][:2], "--run-id", "snap", "--incremental-from", runs["r1"], "--carry-over",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plain = pq.read_schema(next((runs["r2"] / "text").glob("part-*.parquet")))
    snapshot = pq.read_schema(next((tmp_path / "snap" / "text").glob("part-*.parquet")))
    assert plain.names == snapshot.names and "embedded_run_id" in plain.names
    assert set(read_embeddings(str(runs["r1"]), "text").column("embedded_run_id").to_pylist()) == {"r1"}
    duckdb = pytest.importorskip("duckdb")
    files = [str(p) for p in (runs["r1"] / "text").glob("*.parquet")] + [
        str(p) for p in (tmp_path / "snap" / "text").glob("*.parquet")
    ]
    rows = (
        duckdb.connect()
        .sql("SELECT embedded_run_id, count(*) FROM read_parquet($f) GROUP BY 1 ORDER BY 1", params={"f": files})
        .fetchall()
    )
    assert rows == [("r1", 12 + 9), ("snap", 1)]  # no union_by_name: one schema in both folders


def _launch_script() -> str:
    """The flex template's entry point, as the Dockerfile writes it to /template/launch.py."""
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    printf = re.search(r"RUN printf '%s\\n' \\\n(.*?)> /template/launch.py", dockerfile, re.S).group(1)
    return "\n".join(re.findall(r"^\s+'(.*)' \\$", printf, re.M))


def test_the_flex_template_takes_several_earlier_runs_comma_separated(runs, tmp_path):
    metadata = json.loads((PROJECT_ROOT / "flex_template" / "metadata.json").read_text())
    parameter = next(p for p in metadata["parameters"] if p["name"] == "incremental_from")
    regex = re.compile(parameter["regexes"][0])
    assert regex.match("gs://b/emb/2026-11-25") and regex.match("gs://b/emb/2026-11-25,gs://b/emb/2026-11-26")
    assert not regex.match("gs://b/emb/a,/local/run") and not regex.match("/local/run")
    assert "comma" in parameter["helpText"]

    launch = tmp_path / "launch.py"
    launch.write_text(_launch_script())
    env = {k: v for k, v in os.environ.items() if k != "SDK_CONTAINER_IMAGE"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    out = tmp_path / "r3"
    argv = [
        f"--output={out}",
        f"--text_input={_jsonl(tmp_path / 'v3.jsonl', V3)}",
        f"--text_model={runs['models'][1]}",
        f"--incremental_from={runs['r1']},{runs['r2']}",  # one parameter, two earlier runs
        "--carry_over=true",
        "--run_id=r3",
    ]
    done = subprocess.run(
        [sys.executable, str(launch), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = read_manifest(str(out))
    assert manifest["incremental_from"] == [str(runs["r1"]), str(runs["r2"])]
    counts = manifest["counts"]["text"]
    # earlier ids: t0..t11 and t-new; now t5..t11 and t-new: t0..t4 left
    assert (counts["removed"], counts["skipped"], counts["embedded"], counts["carried"]) == (5, len(V3), 0, len(V3))
    assert sorted(read_embeddings(str(out), "text").column("id").to_pylist()) == sorted(r["id"] for r in V3)


def test_incremental_from_takes_repeats_and_commas_alike(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import EmbeddingJobOptions, split_folders

    assert split_folders(["a,b", " c ", "d,"]) == ["a", "b", "c", "d"]
    assert split_folders(None) == []
    repeated = PipelineOptions(["--incremental-from", "gs://b/x", "--incremental-from", "gs://b/y"])
    joined = PipelineOptions(["--incremental_from=gs://b/x,gs://b/y"])
    assert split_folders(repeated.view_as(EmbeddingJobOptions).incremental_from) == split_folders(
        joined.view_as(EmbeddingJobOptions).incremental_from
    )
