"""`python -m benchmarks.compare_refs --refs A B`: the job's speed at two commits, in one run.

Why: "within 5 % of before" cannot be judged from two runs one after the other on a machine other
work shares (the load moves by more than 5 % in minutes), and `benchmarks.run --job-ref` cannot
measure across a layout move (its worker imports the new module paths from the old tree). Here
each ref runs with ITS OWN harness worker and job, and the two refs alternate within every round,
so the machine's drift hits both alike and each round gives its own ratio.

How:

* each ref is extracted (`git archive`) into its own temporary folder, deleted at the end;
* the inputs (and the text model) are made once by this checkout's harness (`benchmarks.run.prepare`),
  and both refs are given the same paths, model, batch size and job command line
  (`benchmarks.run.job_argv`, the full mode's small and large sizes);
* a run is that ref's `python -m benchmarks.worker` (kind `job`: `pipeline.run.run(argv)` end to end)
  in a fresh process with cwd and `PYTHONPATH` = the ref's folder, same venv and environment;
* every round runs the scenarios, and in each the refs in ABBA order (A, B in odd rounds, B, A in
  even ones), each at the small and the large size;
* per round and ref: the marginal rate (n_large - n_small) / (t_large - t_small) and the marginal CPU
  milliseconds per record (`benchmarks.run.marginal`, `marginal_cpu_ms`); per scenario: the medians
  of each ref, the median B/A ratio of the rounds' own ratios with their min and max, and the
  1-minute load average seen before and after every run.

Needs the refs' `benchmarks/worker.py` to accept the `job` spec (`modality`, `runs` of
`label`/`count`/`argv`/`output`), as it has since 2026-12-01. Results: a table on stdout, JSON and
the table as `benchmarks/results/compare-refs-<UTC time>.json` and `.txt`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from benchmarks import inputs
from benchmarks.measure import run_worker, worker_env
from benchmarks.run import MODES, SCENARIOS, job_argv, make_context, marginal, marginal_cpu_ms, prepare

__all__ = ["main", "abba", "scenario_keys", "summarise", "format_table"]

ALIASES = {"text": "c", "image": "a"}  # the harness's scenario keys: c is text, a the default image one


def scenario_keys(text: str) -> list[str]:
    """`text,image` or harness keys `c,a,b` -> harness keys, in order, without repeats."""
    keys = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        key = ALIASES.get(word, word)
        if key not in SCENARIOS:
            raise SystemExit(f"--scenarios: unknown scenario {word!r} (text, image or one of {', '.join(SCENARIOS)})")
        if key not in keys:
            keys.append(key)
    return keys


def abba(round_index: int, refs: Sequence[str]) -> list[str]:
    """The refs' order in round `round_index` (0-based): A, B, then B, A, and so on."""
    return list(refs) if round_index % 2 == 0 else list(reversed(refs))


def _ratio(b: Optional[float], a: Optional[float]) -> Optional[float]:
    return b / a if a and b else None


def _spread(values: list) -> dict:
    found = [v for v in values if v is not None]
    if not found:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(found), "min": min(found), "max": max(found), "n": len(found)}


def summarise(rounds: list[dict], refs: Sequence[str]) -> dict:
    """Per-ref medians and B/A ratios from rounds of `{ref: {"small": run, "large": run}}`.

    A run is the worker's dict (`count`, `seconds`, `cpu_seconds`, `children_cpu_seconds`). The ratio
    of rates is B/A (above 1: B faster); the ratio of CPU per record is B/A too (above 1: B costs
    more). Both are medians of the rounds' own ratios, with their min and max."""
    a, b = refs
    per_round = []
    for r in rounds:
        rate = {ref: marginal(r[ref]["small"], r[ref]["large"]) for ref in refs}
        cpu = {ref: marginal_cpu_ms(r[ref]["small"], r[ref]["large"]) for ref in refs}
        per_round.append(
            {"rate": rate, "cpu_ms": cpu, "rate_b_over_a": _ratio(rate[b], rate[a]), "cpu_b_over_a": _ratio(cpu[b], cpu[a])}
        )
    return {
        "rounds": per_round,
        "rate": {ref: _spread([p["rate"][ref] for p in per_round]) for ref in refs},
        "cpu_ms_per_record": {ref: _spread([p["cpu_ms"][ref] for p in per_round]) for ref in refs},
        "rate_b_over_a": _spread([p["rate_b_over_a"] for p in per_round]),
        "cpu_b_over_a": _spread([p["cpu_b_over_a"] for p in per_round]),
    }


def _fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """The printed summary: one block per scenario, then the load average."""
    (a, sha_a), (b, sha_b) = report["refs"]
    lines = [
        f"compare-refs run of {report['started_at']}: A = {a} ({sha_a[:12]}), B = {b} ({sha_b[:12]}), "
        f"{report['repeat']} rounds (ABBA), {report['environment']['cpus']} CPUs",
    ]
    for key, sc in report["scenarios"].items():
        s = sc["summary"]
        lines += [
            "",
            f"[{key}] {sc['title']}: job, 1 worker, {sc['sizes']['small']:,} and {sc['sizes']['large']:,} records, batch {sc['batch']}",
            f"  marginal rec/s  A median {_fmt(s['rate'][sha_a]['median'])}  B median {_fmt(s['rate'][sha_b]['median'])}"
            f"  B/A {_fmt(s['rate_b_over_a']['median'], '.3f')} (rounds {_fmt(s['rate_b_over_a']['min'], '.3f')}.."
            f"{_fmt(s['rate_b_over_a']['max'], '.3f')})",
            f"  CPU ms/record   A median {_fmt(s['cpu_ms_per_record'][sha_a]['median'], '.4f')}  B median "
            f"{_fmt(s['cpu_ms_per_record'][sha_b]['median'], '.4f')}  B/A {_fmt(s['cpu_b_over_a']['median'], '.3f')} "
            f"(rounds {_fmt(s['cpu_b_over_a']['min'], '.3f')}..{_fmt(s['cpu_b_over_a']['max'], '.3f')}; above 1: B costs more)",
        ]
        for k, p in enumerate(s["rounds"]):
            lines.append(
                f"  round {k + 1} ({'AB' if k % 2 == 0 else 'BA'}): A {_fmt(p['rate'][sha_a])} rec/s {_fmt(p['cpu_ms'][sha_a], '.4f')} ms, "
                f"B {_fmt(p['rate'][sha_b])} rec/s {_fmt(p['cpu_ms'][sha_b], '.4f')} ms, B/A {_fmt(p['rate_b_over_a'], '.3f')}"
            )
    load = report["load"]
    lines += [
        "",
        f"1-minute load average around the runs: min {_fmt(load['min'], '.2f')}, median {_fmt(load['median'], '.2f')}, "
        f"max {_fmt(load['max'], '.2f')} ({load['n']} readings; 2 CPUs, so above ~1 other work shared them)",
    ]
    return "\n".join(lines)


def _git(*args: str, cwd: pathlib.Path = inputs.PROJECT_ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _extract(sha: str, parent: pathlib.Path) -> pathlib.Path:
    """The whole tree at `sha` (git archive) in a folder of its own."""
    folder = parent / sha[:12]
    folder.mkdir()
    archive = subprocess.run(["git", "archive", sha], cwd=inputs.PROJECT_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _ref_env(work: pathlib.Path, tf_threads: Optional[int], root: pathlib.Path) -> dict:
    """The harness's environment, with only this ref's folder on the path (its worker, its job)."""
    env = worker_env(work, tf_threads, root)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return env


def compare(args: argparse.Namespace) -> dict:
    keys = scenario_keys(args.scenarios)
    shas = [_git("rev-parse", "--verify", f"{ref}^{{commit}}") for ref in args.refs]
    ns = argparse.Namespace(
        work_dir=args.work_dir,
        shared_data=args.shared_data,
        tf_threads=args.tf_threads,
        text_model=args.text_model,
        workers2=False,
        job_ref=None,
        repeat=1,
        keep_outputs=False,
        job_flags="",
    )
    ctx = make_context(ns, args.mode)
    scenarios = [SCENARIOS[k] for k in keys]
    report = {
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "refs": [[ref, sha] for ref, sha in zip(args.refs, shas)],
        "repeat": args.repeat,
        "mode": args.mode,
        "harness_commit": _git("rev-parse", "HEAD"),
        "environment": {"cpus": os.cpu_count(), "python": sys.executable, "run_dir": str(ctx.run_dir)},
        "scenarios": {},
    }
    ctx.log("making inputs and models once (this checkout's harness)")
    made = prepare(ctx, scenarios)
    report["prepared"] = made
    loads: list[float] = []
    runs: dict[str, list[dict]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory(prefix="compare-refs-") as tmp:
        roots = {sha: _extract(sha, pathlib.Path(tmp)) for sha in dict.fromkeys(shas)}
        envs = {sha: _ref_env(ctx.work, args.tf_threads, root) for sha, root in roots.items()}
        for k in range(args.repeat):
            for sc in scenarios:
                _, small, large = MODES[args.mode][sc.key]
                this = {}
                for sha in abba(k, shas):
                    this[sha] = {}
                    for label, n in (("small", small), ("large", large)):
                        out = str(ctx.run_dir / "out" / f"{sc.key}-{sha[:12]}-{label}")
                        spec = {"kind": "job", "modality": sc.modality}
                        spec["runs"] = [{"label": label, "count": n, "argv": job_argv(ctx, sc, made, n, out), "output": out}]
                        ctx.log(f"round {k + 1}/{args.repeat} [{sc.key}] {sha[:12]} {label} ({n:,})")
                        loads.append(os.getloadavg()[0])
                        result = run_worker(spec, f"{sc.key}-{sha[:12]}-{label}-r{k + 1}", ctx.run_dir, envs[sha])
                        run = dict(result["runs"][0], wall_outside=result["outside"]["wall_seconds"])
                        loads.append(run["loadavg_after"])
                        this[sha][label] = run
                        shutil.rmtree(out, ignore_errors=True)
                runs[sc.key].append(this)
    for sc in scenarios:
        _, small, large = MODES[args.mode][sc.key]
        report["scenarios"][sc.key] = {
            "title": sc.title,
            "batch": sc.batch,
            "sizes": {"small": small, "large": large},
            "argv_large_of_a": job_argv(ctx, sc, made, large, "OUTPUT"),
            "summary": summarise(runs[sc.key], shas),
            "runs": runs[sc.key],
        }
    report["load"] = _spread(loads)
    report["load"]["readings"] = loads
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_refs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", nargs=2, required=True, metavar=("A", "B"), help="Two git refs; ratios are B/A.")
    parser.add_argument(
        "--scenarios", default="text,image", help="text, image (= c, a) or harness keys a,b,c (default: text,image)."
    )
    parser.add_argument("--repeat", type=int, default=4, help="Rounds (ABBA order; default 4).")
    parser.add_argument(
        "--mode", choices=sorted(MODES), default="full", help="The harness's sizes (default: full; tiny checks the tool)."
    )
    parser.add_argument(
        "--text-model", help="A train-text .keras model for both refs (default: the harness trains or reuses one)."
    )
    parser.add_argument("--tf-threads", type=int, help="TF intra/inter-op threads for every run.")
    inputs.add_location_flags(parser, "Derived inputs and run files (default: benchmarks/work).")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    args.repeat = max(1, args.repeat)
    started = time.perf_counter()
    report = compare(args)
    report["total_seconds"] = time.perf_counter() - started
    table = format_table(report)
    print(table)
    results = pathlib.Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    base = results / f"compare-refs-{report['started_at'].replace(':', '').replace('-', '')[:15]}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    base.with_suffix(".txt").write_text(table + "\n")
    print(f"\nwrote {base}.json and {base}.txt ({report['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
