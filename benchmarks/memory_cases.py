"""Peak memory of the job in the cases of issue 19 (6): `python -m benchmarks.memory_cases`.

Each case is one local run of the CLI (`python -m pipeline run`, the job's default DirectRunner
settings) with the tiny text model of `tests/conftest.py`, in a fresh child process whose peak
RSS is read from `os.wait4` (the child and every descendant it waited for):

* **batch**: 100 records with `--text-batch-size` at its maximum (`--batch` to pick another
  value): a short batch must cost memory for its own size, not the flag's;
* **duplicates**: `--records` records (default 300,000) that all share one id, against as many
  records with unique ids; the difference per duplicate is what a duplicate costs.

One run each (the machine may be shared); prints MB and bytes per duplicate, and with `--json`
writes them to that file. `--job-root DIR` measures the `pipeline/` and `transforms/` of another
checkout (e.g. an earlier commit's worktree) instead of this one's.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Optional

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]

__all__ = ["main", "peak_rss_mb", "write_records"]


def write_records(path: pathlib.Path, count: int, same_id: bool) -> pathlib.Path:
    """`count` JSONL records with short texts; every id the same (`same_id`) or each its own."""
    words = ("good movie", "bad film", "great acting", "awful plot twist")
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            record_id = "same" if same_id else f"r{i}"
            handle.write(json.dumps({"id": record_id, "text": f"{words[i % 4]} {i}"}) + "\n")
    return path


def peak_rss_mb(args: list[str], env: dict, cwd: pathlib.Path) -> tuple[float, int, float, str]:
    """(peak RSS in MB, exit status, wall seconds, last lines of output) of one command."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = "\n".join(log.read().decode("utf-8", "replace").splitlines()[-4:])
    return usage.ru_maxrss / 1024, child.returncode, time.perf_counter() - start, tail


def _run(work: pathlib.Path, name: str, model: pathlib.Path, data: pathlib.Path, env: dict, extra=()) -> dict:
    command = [sys.executable, "-m", "pipeline", "run", "--output", str(work / f"out-{name}")]
    command += ["--text-input", str(data), "--text-model", str(model), *extra]
    mb, code, seconds, tail = peak_rss_mb(command, env, PROJECT_ROOT)
    result = {"case": name, "peak_rss_mb": round(mb, 1), "exit": code, "seconds": round(seconds, 1)}
    print(f"{name:<20} peak {mb:8.1f} MB  exit {code}  {seconds:6.1f} s", flush=True)
    if code != 0:
        print(tail, flush=True)
    return result


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000, help="records of each duplicates run (default 300,000)")
    parser.add_argument("--batch", type=int, help="--text-batch-size of the batch case (default: its maximum)")
    parser.add_argument("--cases", default="batch,duplicates", help="which cases (default: batch,duplicates)")
    parser.add_argument("--job-root", type=pathlib.Path, help="measure this checkout's pipeline/ and transforms/")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results to this file")
    options = parser.parse_args(argv)
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.conftest import make_tiny_text_model

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if options.job_root:
        env["PYTHONPATH"] = os.pathsep.join([str(options.job_root), str(PROJECT_ROOT)])
    results: dict = {"records": options.records, "runs": []}
    cases = set(options.cases.split(","))
    with tempfile.TemporaryDirectory(prefix="memory-cases-") as folder:
        work = pathlib.Path(folder)
        model = make_tiny_text_model(work / "text.keras")
        if "batch" in cases:
            batch = options.batch
            if not batch:
                from transforms.embed.models import MAX_TEXT_BATCH_SIZE

                batch = MAX_TEXT_BATCH_SIZE
            data = write_records(work / "hundred.jsonl", 100, same_id=False)
            results["runs"].append(_run(work, f"batch-{batch}", model, data, env, ["--text-batch-size", str(batch)]))
        if "duplicates" in cases:
            n = options.records
            budget = ["--max-failed-fraction", "1"]  # all but one record of the one-id run are dead letters
            unique = _run(work, "unique-ids", model, write_records(work / "unique.jsonl", n, same_id=False), env, budget)
            same = _run(work, "one-id", model, write_records(work / "same.jsonl", n, same_id=True), env, budget)
            extra = (same["peak_rss_mb"] - unique["peak_rss_mb"]) * 1024 * 1024 / n
            results["runs"] += [unique, same]
            results["bytes_per_duplicate"] = round(extra, 1)
            print(f"one id - unique ids: {extra:.0f} bytes per duplicate ({n:,} records)", flush=True)
    if options.json:
        options.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
