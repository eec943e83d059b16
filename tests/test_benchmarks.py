"""The benchmark harness runs and writes valid results. It never asserts a timing."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks.run import marginal, marginal_cpu_ms

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_marginal_rate_cancels_start_up():
    small = {"count": 100, "seconds": 12.0}  # 10 s of start-up + 100 records at 50/s
    large = {"count": 600, "seconds": 22.0}
    assert marginal(small, large) == pytest.approx(50.0)
    assert marginal(small, {"count": 600, "seconds": 11.0}) is None  # noise: no rate rather than a wrong one


def test_marginal_cpu_per_record_cancels_start_up_cpu():
    small = {"count": 100, "cpu_seconds": 7.0, "children_cpu_seconds": 1.0}  # 6 s of start-up + 2 ms a record
    large = {"count": 600, "cpu_seconds": 7.5, "children_cpu_seconds": 1.5}  # child processes' CPU counts too
    assert marginal_cpu_ms(small, large) == pytest.approx(2.0)
    assert marginal_cpu_ms(small, dict(large, cpu_seconds=5.0)) is None


def test_harness_runs_tiny_sizes_and_writes_json(shared_data, tiny_text_model, tmp_path):
    results = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--tiny",
            "--scenarios",
            "a,c",
            "--no-workers2",
            "--repeat",
            "2",
            "--text-model",
            str(tiny_text_model),
            "--work-dir",
            str(tmp_path / "work"),
            "--results-dir",
            str(results),
            "--shared-data",
            str(shared_data),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [json_file] = results.glob("tiny-*.json")
    table = results.joinpath(json_file.stem + ".txt").read_text()
    assert "marginal/s" in table and "round 2 (a)" in table
    assert "TensorFlow with 1 batch in flight" in table  # the image limit is TensorFlow's better of 1 and 2 callers
    report = json.loads(json_file.read_text())
    assert report["mode"] == "tiny"
    for key, records in (("a", 96), ("c", 4096)):
        scenario = report["scenarios"][key]
        job = scenario["job"]
        assert job["counts"][("image" if key == "a" else "text")]["embedded"] == records
        assert sum(job["model_loads"].values()) == 1
        assert job["output"]["read_back"]["shape"][0] == records
        assert job["runs"]["large"]["vmhwm_mb"] > 0
        assert scenario["limit"]["runs"]["large"]["count"] > 0
        assert len(scenario["rounds"]) == 2  # limits and job interleaved, each round with its own ratios
        assert all("job" in r and "job_over_limit" in r["ratios"] for r in scenario["rounds"])
        if importlib.util.find_spec("tensorflow_hub") is None:
            assert "benchmarks/requirements.txt" in scenario["peer"]["error"]
        else:
            assert scenario["job_vs_peer_embeddings"]["common_ids"] == records
            assert scenario["job_vs_peer_embeddings"]["max_abs_diff"] < 1e-3
