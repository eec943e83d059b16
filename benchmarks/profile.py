"""`python -m benchmarks.profile --scenario a|c [--count N]`: where the job's time goes.

Two runs of the job (1 worker, the in-process runner), each in its own process:

1. **instrumented** (`benchmarks.instrument`): batch sizes that reach each DoFn, seconds inside each
   DoFn, in the model, in arrow assembly and in the Parquet sink, and how much the image decode
   threads overlap;
2. **sampled** by py-spy (`--threads --idle`, Python frames only): every sample is put in one
   category by its leaf-most recognisable frame (and, for project code, by the source line it is
   on: `json.loads`, `hashlib.sha256`, `pa.Table.from_pydict` ...), per thread.

TensorFlow's own worker threads are C++ and invisible to py-spy without `--native`: model time is
the time the calling Python thread spends inside the TF call. The summary goes to stdout and to
`benchmarks/results/profile-<scenario>-<mode>.json`; the raw collapsed stacks stay in the work folder.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import linecache
import pathlib
import re
import shutil
import sys
from typing import Optional, Sequence

from benchmarks import inputs
from benchmarks.measure import run_worker
from benchmarks.run import MODES, SCENARIOS, _with_batch, job_argv, make_context, prepare

__all__ = ["main", "categorise", "parse_collapsed", "summarise_samples"]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_collapsed(path: pathlib.Path) -> list[tuple[str, list[tuple[str, str, int]], int]]:
    """("thread (TID)[: NAME]", frames root->leaf as (function, file, line), samples) per line of py-spy's raw output."""
    stacks = []
    for raw in path.read_text(errors="replace").splitlines():
        if not raw.strip():
            continue
        body, _, count = raw.rpartition(" ")
        parts = body.split(";")
        head = parts[0]  # "thread (TID)" or "thread (TID): NAME"
        frames = []
        for part in parts[1:]:
            match = _FRAME.match(part)
            if match:
                frames.append((match["func"], match["file"], int(match["line"] or 0)))
            else:
                frames.append((part, "", 0))
        stacks.append((head, frames, int(count)))
    return stacks


_SOURCE_ROOTS = [inputs.PROJECT_ROOT]  # where project frames' files are looked up (the job's code first)


def _source_line(file: str, line: int) -> str:
    for candidate in ([file] if file.startswith("/") else []) + [str(root / file) for root in _SOURCE_ROOTS]:
        text = linecache.getline(candidate, line)
        if text:
            return text.strip()
    if "apache_beam" in file or "pyarrow" in file:
        site = pathlib.Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        return linecache.getline(str(site / file), line).strip()
    return ""


# (category, test on one frame) checked on each frame from the leaf up; the first frame that
# matches any rule decides. Project frames are judged by the source line they stand on.
def _frame_category(func: str, file: str, line: int) -> Optional[str]:
    project = file.startswith(("transforms/", "pipeline/")) or "/transforms/" in file or "/pipeline/" in file
    if project:
        text = _source_line(file, line)
        if "sha256" in text or "hexdigest" in text:
            return "sha256 hashing"
        if "json.loads" in text:
            return "JSON parsing"
        if ".decode(" in text and "text_formats" in file:
            return "bytes -> str decode (per line)"
        if "enumerate(binary" in text:
            return "file read (line iteration)"
        if file.endswith("decode.py"):
            return "image decode + resize (Pillow)"
        if "read_bytes" in text or file.endswith("fileio.py"):
            return "file read (whole image)"
        if "_forward(" in text or ".numpy()" in text:
            return "model forward (TF call)"
        if "np.array(chunk" in text or "tf.constant" in text:
            return "str list -> tensor conversion"
        if "future.result" in text:
            return "waiting for decoded images (future.result)"
        if any(k in text for k in ("pa.", "to_pylist", "from_pydict", ".cast(", ".take(", "_table(", "_output_table(")):
            return "pyarrow conversions"
        if "np.stack" in text:
            return "numpy stack of a batch"
        return f"job Python ({file.rsplit('/', 1)[-1]}:{func})"
    if "importlib" in file:
        return "imports (start-up)"
    if file.startswith(("json/", "json\\")) or "/json/" in file:
        return "JSON parsing"
    if "parquetio" in file or "pyarrow/parquet" in file:
        return "Parquet write"
    if "pyarrow" in file:
        return "pyarrow conversions"
    if "tensorflow" in file or "keras" in file or file.startswith(("tf_keras", "tensorflow_hub")):
        return "model forward (TF call)"
    if "PIL" in file:
        return "image decode + resize (Pillow)"
    if "apache_beam/ml/inference" in file:
        return "RunInference machinery"
    if "apache_beam/transforms/util.py" in file and ("Batch" in func or "batch" in func):
        return "BatchElements"
    if "apache_beam/io/" in file and "parquetio" not in file:
        return "file read (Beam FileSystems)"
    if "apache_beam/coders" in file:
        return "Beam coders"
    if "apache_beam/" in file:
        return "Beam runner / per-element overhead"
    if file.startswith(("threading.py", "queue.py", "selectors.py")) or "concurrent/futures" in file:
        return "idle / waiting (threads, queues)"
    if "grpc" in file:
        return "idle / waiting (threads, queues)"
    return None


def categorise(frames: Sequence[tuple[str, str, int]]) -> str:
    """One category for a sampled stack (see `_frame_category`)."""
    funcs = {f for f, _, _ in frames}
    if any(f in ("load_image_embedder", "load_text_embedder", "inspect_models", "_load_keras_file") for f in funcs):
        return "model load (start-up)"
    if funcs & {"func_graph_from_py_func", "_create_concrete_function"}:
        return "tf.function tracing (start-up)"
    if not frames:
        return "no Python frame (interpreter start-up or native code)"
    for func, file, line in reversed(frames):
        category = _frame_category(func, file, line)
        if category:
            if category.startswith("idle") and any(f == "Future.result" for f in funcs):
                return "waiting for decoded images (future.result)"
            return category
    leaf = frames[-1] if frames else ("?", "?", 0)
    return f"other ({leaf[1] or leaf[0]})"


def _thread_group(name: str) -> str:
    if name.startswith("decode"):
        return "decode threads"
    if name == "MainThread":
        return "MainThread"
    return "other threads"


def summarise_samples(stacks, rate: int, top: int = 25) -> dict:
    """Samples per thread group and category, top leaf lines of the busiest thread, top functions."""
    by_group: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    leaves: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    threads = collections.Counter()
    names = {}  # py-spy gives a thread's name only once it knows it: name every sample of that thread
    for head, _, _ in stacks:
        tid, _, name = head.partition(": ")
        if name:
            names[tid] = name
    for head, frames, count in stacks:
        name = names.get(head.partition(": ")[0], head)
        category = categorise(frames)
        threads[name] += count
        groups = [_thread_group(name)]
        if any(func.endswith("BundleProcessor.process_bundle") for func, _, _ in frames):
            groups.append(f"{groups[0]}, inside bundles")
        for group in groups:
            by_group[group][category] += count
            if frames and not category.startswith("idle"):
                func, file, line = frames[-1]
                text = _source_line(file, line) if line else ""
                leaves[group][f"{func} ({file}:{line})" + (f"  | {text[:90]}" if text else "")] += count
    out = {"rate_hz": rate, "threads": dict(threads.most_common(20)), "groups": {}}
    for group, counter in by_group.items():
        total = sum(counter.values())
        busy = sum(n for c, n in counter.items() if not c.startswith("idle"))
        out["groups"][group] = {
            "samples": total,
            "seconds": total / rate,
            "busy_seconds": busy / rate,
            "categories": {c: {"seconds": n / rate, "share": n / total} for c, n in counter.most_common()},
            "top_leaf_lines": [{"samples": n, "where": w} for w, n in leaves[group].most_common(top)],
        }
    return out


def _format(summary: dict, instrumentation: dict, run: dict, scenario: str) -> str:
    lines = [f"profile of scenario {scenario}: {run['count']:,} records in {run['seconds']:.1f} s "
             f"({run['count'] / run['seconds']:,.0f}/s incl. start-up) under py-spy; CPU {run['cpu_seconds']:.1f} s"]
    for group in ("MainThread", "MainThread, inside bundles", "decode threads", "other threads", "other threads, inside bundles"):
        g = summary["groups"].get(group)
        if not g:
            continue
        lines.append(f"\n{group}: {g['seconds']:.1f} s sampled, {g['busy_seconds']:.1f} s busy")
        for category, v in list(g["categories"].items())[:16]:
            lines.append(f"  {v['seconds']:8.2f} s {v['share'] * 100:5.1f}%  {category}")
        if group.startswith("MainThread"):
            lines.append("  top leaf lines (busy samples):")
            for item in g["top_leaf_lines"][:15]:
                lines.append(f"    {item['samples'] / summary['rate_hz']:7.2f} s  {item['where'][:150]}")
    lines.append("\ninstrumented run (no py-spy):")
    for name, v in instrumentation.get("functions", {}).items():
        s, z = v["seconds"], v["sizes"]
        size_text = f"; sizes min {z['min']:.0f} median {z['median']:.0f} max {z['max']:.0f}" if z.get("count") else ""
        lines.append(f"  {name:<42} calls {s['count']:>7,}  total {s['total']:8.2f} s  mean {s['mean'] * 1000:8.2f} ms{size_text}")
    loads = instrumentation.get("image_loads")
    if loads:
        lines.append(f"  image loads: {loads['count']:,}, {loads['busy_seconds_summed_over_threads']:.1f} s busy over "
                     f"{len(loads['threads'])} threads, some load running {loads['seconds_with_any_load_running']:.1f} s "
                     f"of {loads['wall_seconds_first_to_last']:.1f} s")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--count", type=int, help="Records to run (default: the scenario's large size in the mode).")
    parser.add_argument("--quick", action="store_true", help="The quick mode's large size.")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default: 100).")
    parser.add_argument("--no-py-spy", action="store_true", help="Only the instrumented run.")
    parser.add_argument("--resummarise", action="store_true",
                        help="Run nothing: summarise the last profile's saved stacks again (after changing the categories).")
    parser.add_argument("--text-model", help="Use this train-text .keras model instead of training one.")
    parser.add_argument("--tf-threads", type=int)
    parser.add_argument("--image-batch-size", type=int, help="Images per model call (default: 32).")
    parser.add_argument("--text-batch-size", type=int, help="Texts per model call (default: 256).")
    parser.add_argument("--job-ref", help="Profile the job as committed at this git ref instead of the working tree.")
    parser.add_argument("--work-dir", default=str(inputs.DEFAULT_WORK_DIR))
    parser.add_argument("--results-dir", default=str(inputs.PROJECT_ROOT / "benchmarks" / "results"))
    parser.add_argument("--shared-data", default=str(inputs.DEFAULT_SHARED_DATA))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    mode = "quick" if args.quick else "full"
    results = pathlib.Path(args.results_dir)
    base = results / f"profile-{args.scenario}-{mode}"
    if args.resummarise:
        return _resummarise(base, args.rate)
    ctx = make_context(args, mode)
    _SOURCE_ROOTS.insert(0, pathlib.Path(ctx.env["BENCH_JOB_ROOT"]))
    sc = _with_batch(SCENARIOS[args.scenario], args)
    count = args.count or MODES[mode][sc.key][2]
    made = prepare(ctx, [sc])
    output = str(ctx.run_dir / "out" / f"{sc.key}-profile")
    run = {"label": "profile", "count": count, "argv": job_argv(ctx, sc, made, count, output), "output": output}
    spec = {"kind": "job", "modality": sc.modality, "runs": [run]}

    ctx.log(f"[{sc.key}] instrumented job run, {count:,} records")
    instrumented = run_worker(dict(spec, instrument=True), f"{sc.key}-profile-instrumented", ctx.run_dir, ctx.env)
    report = {"scenario": sc.key, "count": count, "job_code": ctx.env["BENCH_JOB_ROOT"], "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "instrumented": {"run": instrumented["runs"][0], "functions": instrumented["instrumentation"]}}
    summary, sampled_run = {}, instrumented["runs"][0]
    if not args.no_py_spy:
        py_spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
        raw = ctx.run_dir / f"{sc.key}-profile.collapsed.txt"
        wrap = [py_spy, "record", "--threads", "--idle", "--rate", str(args.rate), "--format", "raw", "-o", str(raw), "--"]
        ctx.log(f"[{sc.key}] py-spy job run -> {raw}")
        sampled = run_worker(spec, f"{sc.key}-profile-py-spy", ctx.run_dir, ctx.env, wrap=wrap)
        sampled_run = sampled["runs"][0]
        summary = summarise_samples(parse_collapsed(raw), args.rate)
        report["py_spy"] = {"run": sampled_run, "summary": summary, "collapsed_stacks": str(raw)}
    text = _format(summary or {"groups": {}, "rate_hz": args.rate}, report["instrumented"]["functions"], sampled_run, sc.key)
    print(text)
    _write(base, report, text)
    return 0


def _write(base: pathlib.Path, report: dict, text: str) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    base.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwrote {base}.json and {base}.txt")


def _resummarise(base: pathlib.Path, rate: int) -> int:
    report = json.loads(base.with_suffix(".json").read_text())
    _SOURCE_ROOTS.insert(0, pathlib.Path(report["job_code"]))
    spied = report["py_spy"]
    spied["summary"] = summarise_samples(parse_collapsed(pathlib.Path(spied["collapsed_stacks"])), rate)
    text = _format(spied["summary"], report["instrumented"]["functions"], spied["run"], report["scenario"])
    print(text)
    _write(base, report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
