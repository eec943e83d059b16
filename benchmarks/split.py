"""One big JSONL file, 1 worker process vs 2: does splitting the file spread the work?

    python -m benchmarks.split                       # 1,000,000 records in ONE file (~60 MB)
    python -m benchmarks.split --records 200000 --small 50000   # quicker
    python -m benchmarks.split --split-bytes 16777216           # another --read-split-bytes

Each job is the real CLI (`python -m pipeline run`) in its own process, on one JSONL file made
from the shared rt-polarity corpus (`benchmarks.inputs.text_set` with one shard), with the
`train-text` model. Throughput is marginal, (n_large - n_small) / (t_large - t_small), so start-up
(TensorFlow imports, worker processes, model loads) cancels out; the speed-up is the 2-worker
marginal throughput over the 1-worker one, measured in the same invocation. Results go to
`benchmarks/results/split-<UTC time>.json`. The machine's other load shows in `loadavg`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from benchmarks.inputs import DEFAULT_SHARED_DATA, DEFAULT_WORK_DIR, PROJECT_ROOT, text_set

__all__ = ["main", "run_job"]


def run_job(data: str, model: str, output: pathlib.Path, workers: int, extra: list[str]) -> dict:
    """One CLI run; its wall time and manifest counts."""
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "run", "--output", str(output), "--text-input", data, "--text-model", model] + extra
    if workers > 1:
        cmd += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    start = time.monotonic()
    done = subprocess.run(
        cmd,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT_ROOT)),
    )
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((output / "_MANIFEST.json").read_text())
    parts = sorted((output / "text").glob("part-*.parquet"))
    shutil.rmtree(output, ignore_errors=True)
    return {
        "seconds": round(seconds, 2),
        "counts": manifest["counts"]["text"],
        "text_part_files": len(parts),
        "loadavg_after": os.getloadavg()[0],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=200_000, help="records of the small run (marginal throughput)")
    parser.add_argument("--split-bytes", type=int, help="--read-split-bytes for the job (default: the job's own)")
    parser.add_argument("--allow-duplicate-ids", action="store_true", help="skip the duplicate-id pass")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (1 and 2 workers alternate); medians are used")
    parser.add_argument("--shared", type=pathlib.Path, default=DEFAULT_SHARED_DATA)
    parser.add_argument("--work", type=pathlib.Path, default=DEFAULT_WORK_DIR)
    args = parser.parse_args(argv)

    model = args.work / "models" / "rt-text.keras"
    if not model.exists():
        from benchmarks.models import train_text_model

        train_text_model(args.shared, model)
    extra = (["--read-split-bytes", str(args.split_bytes)] if args.split_bytes else []) + (
        ["--allow-duplicate-ids"] if args.allow_duplicate_ids else []
    )
    sizes = {"small": args.small, "large": args.records}
    files = {name: text_set(args.shared, args.work, n, shards=1) for name, n in sizes.items()}
    import statistics

    runs: dict[str, list] = {}
    for round_ in range(args.repeat):  # alternate 1 and 2 workers, so the machine's load hits both
        for name, n in sizes.items():
            for workers in (1, 2):
                result = run_job(files[name], str(model), args.work / "split-out", workers, extra)
                assert result["counts"]["read"] == n and result["counts"]["balanced"], result
                runs.setdefault(f"{workers}w-{name}", []).append(result)
                print(
                    f"round {round_ + 1}: {workers} worker(s), {n:,} records: {result['seconds']:.1f} s, "
                    f"{result['text_part_files']} part file(s), load {result['loadavg_after']:.1f}",
                    flush=True,
                )
    marginal = {}
    for workers in (1, 2):
        small = statistics.median(r["seconds"] for r in runs[f"{workers}w-small"])
        large = statistics.median(r["seconds"] for r in runs[f"{workers}w-large"])
        marginal[workers] = (sizes["large"] - sizes["small"]) / max(large - small, 1e-9)
    speedup = marginal[2] / marginal[1]
    file_bytes = pathlib.Path(files["large"].replace("*.jsonl", "")).glob("*.jsonl")
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "records": sizes,
        "file_bytes": sum(p.stat().st_size for p in file_bytes),
        "extra_flags": extra,
        "runs": runs,
        "marginal_rec_per_s": {f"{k}w": round(v) for k, v in marginal.items()},
        "speedup_2w_over_1w": round(speedup, 2),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }
    results = PROJECT_ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    (results / f"split-{stamp}.json").write_text(json.dumps(result, indent=2))
    print(f"marginal: 1 worker {marginal[1]:,.0f} rec/s, 2 workers {marginal[2]:,.0f} rec/s -> speed-up {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
