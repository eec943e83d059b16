"""The benchmark harness runs and writes valid results. It never asserts a timing."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import profile
from benchmarks.run import marginal

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_marginal_rate_cancels_start_up():
    small = {"count": 100, "seconds": 12.0}  # 10 s of start-up + 100 records at 50/s
    large = {"count": 600, "seconds": 22.0}
    assert marginal(small, large) == pytest.approx(50.0)
    assert marginal(small, {"count": 600, "seconds": 11.0}) is None  # noise: no rate rather than a wrong one


def test_profile_categorises_collapsed_stacks(tmp_path):
    collapsed = tmp_path / "stacks.txt"
    collapsed.write_text(
        "thread (7): MainThread;main (benchmarks/worker.py:1);BundleProcessor.process_bundle (apache_beam/runners/worker/"
        "bundle_processor.py:1350);quick_execute (tensorflow/python/eager/execute.py:53) 30\n"
        "thread (8);_worker (concurrent/futures/thread.py:83);decode_image (transforms/decode.py:130) 20\n"
        "thread (8): decode_0;_worker (concurrent/futures/thread.py:83);Condition.wait (threading.py:327) 5\n"
        "thread (7): MainThread 1\n"
    )
    summary = profile.summarise_samples(profile.parse_collapsed(collapsed), rate=10)
    main = summary["groups"]["MainThread"]["categories"]
    assert main["model forward (TF call)"]["seconds"] == pytest.approx(3.0)
    assert "MainThread, inside bundles" in summary["groups"]
    decode = summary["groups"]["decode threads"]  # the unnamed sample of thread 8 is named from the other
    assert decode["categories"]["image decode + resize (Pillow)"]["seconds"] == pytest.approx(2.0)
    assert decode["busy_seconds"] == pytest.approx(2.0)


@pytest.mark.slow
@pytest.mark.shared_data
def test_harness_runs_tiny_sizes_and_writes_json(shared_data, tiny_text_model, tmp_path):
    results = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--scenarios", "a,c", "--no-workers2",
         "--text-model", str(tiny_text_model), "--work-dir", str(tmp_path / "work"),
         "--results-dir", str(results), "--shared-data", str(shared_data)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [json_file] = results.glob("tiny-*.json")
    assert "marginal/s" in results.joinpath(json_file.stem + ".txt").read_text()
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
        if importlib.util.find_spec("tensorflow_hub") is None:
            assert "benchmarks/requirements.txt" in scenario["peer"]["error"]
        else:
            assert scenario["job_vs_peer_embeddings"]["common_ids"] == records
            assert scenario["job_vs_peer_embeddings"]["max_abs_diff"] < 1e-3
