"""Memory and time of the job as the corpus grows: `python -m benchmarks.scale`.

For each size (1M and 5M short JSONL text records by default, made by `benchmarks.inputs`), two
local runs, each in a fresh process whose whole process tree is watched (`benchmarks.measure`):

* **plain**: the job over the records (duplicate-id check on, as by default);
* **incremental**: the same command with `--incremental-from` the plain run's output, nothing
  changed, so every record is skipped.

Reported: peak RSS and wall time of every run; the growth of peak RSS between the two sizes in
bytes per record (target: at most 40 for both kinds: nothing a worker holds may grow with the
corpus); and incremental speed relative to plain at the same size (target: at least 1.0, an
all-skipped run at least as fast as embedding everything), in wall time and in CPU seconds of
the process (on a shared machine the load average, also reported, moves wall time a lot). Results go to
`benchmarks/results/scale-<UTC time>.{json,txt}`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
from typing import Optional, Sequence

from benchmarks.inputs import DEFAULT_SHARED_DATA, DEFAULT_WORK_DIR, PROJECT_ROOT, text_set
from benchmarks.measure import run_worker, worker_env

__all__ = ["main", "growth_bytes_per_record", "format_report"]

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
TARGET_GROWTH = 40.0  # bytes per record


def growth_bytes_per_record(small: dict, large: dict) -> Optional[float]:
    """Peak RSS growth between two runs, per extra record."""
    extra = large["count"] - small["count"]
    if extra <= 0:
        return None
    return (large["peak_rss_mb"] - small["peak_rss_mb"]) * 1024 * 1024 / extra


def _text_model(shared: pathlib.Path, work: pathlib.Path) -> str:
    from benchmarks.models import train_text_model

    path = work / "models" / "text-scale.keras"
    if not path.exists():
        train_text_model(shared, path, epochs=2)
    return str(path)


def _one(label: str, count: int, argv: list[str], output: str, folder: pathlib.Path, env: dict) -> dict:
    spec = {"kind": "job", "modality": "text", "runs": [{"label": label, "count": count, "argv": argv, "output": output}]}
    result = run_worker(spec, label, folder, env)
    run = result["runs"][0]
    outside = result["outside"]
    return {
        "label": label,
        "count": count,
        "seconds": run["seconds"],
        "cpu_seconds": run["cpu_seconds"],
        "counts": run.get("counts"),
        "peak_rss_mb": max(outside["peak_tree_rss_mb_sampled"], outside["ru_maxrss_mb"]),
        "peak_tree_rss_mb_sampled": outside["peak_tree_rss_mb_sampled"],
        "ru_maxrss_mb": outside["ru_maxrss_mb"],
        "loadavg_after": run.get("loadavg_after"),
        "rss_timeline_mb": outside["tree_rss_timeline_mb"],
    }


def gbk_probe(count: int, buckets: int = 32, batch_rows: int = 65536) -> dict:
    """The local runner alone: peak RSS of a bare GroupByKey of `count` records shaped like the
    duplicate check's key slices (8-byte hash, 4-byte line, 1-byte file: 13 bytes a record)."""
    import apache_beam as beam
    import numpy as np
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    def slices(i):
        rows = min(batch_rows, count - i * batch_rows)
        rng = np.random.default_rng(i)
        for b in range(buckets):
            k = rows // buckets
            yield b, (rng.integers(0, 2**63, k).astype(np.uint64), np.arange(k, dtype=np.uint32), np.zeros(k, np.uint8))

    with beam.Pipeline(runner=FnApiRunner()) as p:
        (
            p
            | beam.Create(range((count + batch_rows - 1) // batch_rows))
            | beam.FlatMap(slices)
            | beam.GroupByKey()
            | beam.Map(lambda kv: sum(len(v[0]) for v in kv[1]))
        )
    with open("/proc/self/status") as handle:
        peak = next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM"))
    return {"count": count, "shuffled_bytes_per_record": 13, "peak_rss_mb": peak}


def _probe_in_fresh_process(count: int) -> dict:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--gbk-probe", str(count)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_scale(sizes: Sequence[int], shared: pathlib.Path, work: pathlib.Path, log=print) -> dict:
    """Plain and incremental runs at each size; the report (without the formatting)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_dir = work / "scale" / stamp
    env = worker_env(work)
    model = _text_model(shared, work)
    runs = {}
    for n in sizes:
        pattern = text_set(shared, work, n)
        plain_out = str(run_dir / "out" / f"plain-{n}")
        common = ["--text-input", pattern, "--text-model", model]
        log(f"plain {n:,} ...")
        plain = _one(f"plain-{n}", n, common + ["--output", plain_out, "--run-id", f"scale-plain-{n}"], plain_out, run_dir, env)
        log(f"  {plain['seconds']:.1f} s, peak {plain['peak_rss_mb']:.0f} MB, counts {plain['counts']}")
        inc_out = str(run_dir / "out" / f"incremental-{n}")
        log(f"incremental {n:,} ...")
        inc = _one(
            f"incremental-{n}",
            n,
            common + ["--output", inc_out, "--run-id", f"scale-incremental-{n}", "--incremental-from", plain_out],
            inc_out,
            run_dir,
            env,
        )
        log(f"  {inc['seconds']:.1f} s, peak {inc['peak_rss_mb']:.0f} MB, counts {inc['counts']}")
        runs[n] = {"plain": plain, "incremental": inc}
    summary = {}
    ordered = sorted(runs)
    probes = {n: _probe_in_fresh_process(n) for n in ordered}
    if len(ordered) >= 2:
        summary["runner_bare_gbk_growth_bytes_per_record"] = growth_bytes_per_record(probes[ordered[0]], probes[ordered[-1]])
    for kind in ("plain", "incremental"):
        if len(ordered) >= 2:
            summary[f"{kind}_growth_bytes_per_record"] = growth_bytes_per_record(runs[ordered[0]][kind], runs[ordered[-1]][kind])
    for n in ordered:
        summary[f"incremental_speed_vs_plain_{n}"] = runs[n]["plain"]["seconds"] / runs[n]["incremental"]["seconds"]
        summary[f"incremental_cpu_speed_vs_plain_{n}"] = runs[n]["plain"]["cpu_seconds"] / runs[n]["incremental"]["cpu_seconds"]
    return {
        "stamp": stamp,
        "sizes": list(ordered),
        "runs": {str(n): r for n, r in runs.items()},
        "runner_bare_gbk": {str(n): r for n, r in probes.items()},
        "summary": summary,
        "targets": {"growth_bytes_per_record_at_most": TARGET_GROWTH, "incremental_speed_vs_plain_at_least": 1.0},
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "loadavg_at_end": os.getloadavg(),
        },
        "run_dir": str(run_dir),
    }


def format_report(report: dict) -> str:
    """The report as a small text table."""
    lines = [
        f"benchmarks.scale {report['stamp']} (local runner, short JSONL text records)",
        f"{'records':>10} {'kind':<12} {'seconds':>8} {'CPU s':>8} {'load':>5} {'peak RSS MB':>12} {'read':>9} {'embedded':>9} {'skipped':>9}",
    ]
    for n in report["sizes"]:
        for kind in ("plain", "incremental"):
            r = report["runs"][str(n)][kind]
            c = r.get("counts", {}).get("text", {}) if r.get("counts") else {}
            lines.append(
                f"{n:>10,} {kind:<12} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} {r['loadavg_after'] or 0:>5.1f} {r['peak_rss_mb']:>12.0f} "
                f"{c.get('read', 0):>9,} {c.get('embedded', 0):>9,} {c.get('skipped', 0):>9,}"
            )
    s = report["summary"]
    for kind in ("plain", "incremental"):
        value = s.get(f"{kind}_growth_bytes_per_record")
        if value is not None:
            mark = "ok" if value <= TARGET_GROWTH else "ABOVE TARGET"
            lines.append(f"peak RSS growth, {kind}: {value:.1f} bytes/record (target <= {TARGET_GROWTH:.0f}: {mark})")
    bare = s.get("runner_bare_gbk_growth_bytes_per_record")
    if bare is not None:
        lines.append(f"the local runner alone, a bare GroupByKey of 13 bytes a record: {bare:.1f} bytes/record of peak RSS")
    for n in report["sizes"]:
        ratio, cpu = s[f"incremental_speed_vs_plain_{n}"], s[f"incremental_cpu_speed_vs_plain_{n}"]
        mark = "ok" if ratio >= 1.0 else "BELOW TARGET"
        lines.append(
            f"incremental (all skipped) vs plain speed at {n:,}: {ratio:.2f}x wall (target >= 1: {mark}), "
            f"{cpu:.2f}x in CPU seconds"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000], help="record counts (default 1M 5M)")
    parser.add_argument("--shared-data", type=pathlib.Path, default=DEFAULT_SHARED_DATA)
    parser.add_argument("--work", type=pathlib.Path, default=DEFAULT_WORK_DIR, help="generated inputs and run folders")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/scale-*")
    parser.add_argument("--gbk-probe", type=int, metavar="N", help="only: a bare GroupByKey of N key records (JSON)")
    args = parser.parse_args(argv)
    if args.gbk_probe:
        print(json.dumps(gbk_probe(args.gbk_probe)))
        return 0
    report = run_scale(args.sizes, args.shared_data, args.work, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = format_report(report)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"scale-{report['stamp']}.json").write_text(json.dumps(report, indent=2, default=str))
        (RESULTS / f"scale-{report['stamp']}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
