"""`python -m benchmarks.run [--quick]`: the job beside the bare model and a plain RunInference peer.

For each scenario, with the same model, inputs, batch size and thread settings:

* **limit**: the compiled forward pass in a tight loop on ready, decoded, batched tensors
  (TensorFlow's; for images also **limit OV**, OpenVINO's with one batch in flight per stream);
* **peer**: Beam's `RunInference` with `TFModelHandlerNumpy`/`TFModelHandlerTensor` (`benchmarks.peer`);
* **job**: `pipeline.run.run([...])` from files to Parquet, with 1 worker and with 2
  (`--direct_num_workers 2 --direct_running_mode multi_processing`).

Throughput is **marginal**: (n_large - n_small) / (t_large - t_small), so start-up (imports, model
loading, graph tracing, pipeline construction) cancels out. In the full mode every size of every
thing runs in its own process, which also gives each its own peak memory; `--quick` runs a warm-up,
the small and the large size in one process per thing (start-up still cancels, memory is the large
run's). Results: a table on stdout, and JSON + the table under `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from typing import Optional, Sequence

from benchmarks import inputs
from benchmarks.measure import WorkerFailed, run_worker, worker_env

__all__ = [
    "SCENARIOS",
    "MODES",
    "Scenario",
    "Context",
    "main",
    "run_benchmarks",
    "format_table",
    "marginal",
    "marginal_cpu_ms",
    "job_argv",
    "prepare",
    "make_context",
]

MOBILENET_WEIGHTS = "weights/mobilenet_2_5_224_tf_no_top.h5"
PEER_UNAVAILABLE = (
    "Beam's tensorflow_inference needs tensorflow_hub and tf-keras: pip install --no-deps -r benchmarks/requirements.txt"
)
WORKERS2_ARGS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One model and one kind of input, and the target the job should meet."""

    key: str
    title: str
    modality: str  # image | text
    batch: int
    target: str  # what the job is measured against: "peer" or "limit"
    target_ratio: float
    network: Optional[str] = None
    alpha: Optional[float] = None
    weights: Optional[str] = None  # "none" or a path under the shared data
    size: int = 224
    more_targets: tuple = ()  # further (against, ratio) pairs, e.g. ("limit_openvino", 0.85)

    def targets(self) -> list[tuple[str, float]]:
        return [(self.target, self.target_ratio), *self.more_targets]


SCENARIOS = {
    "a": Scenario(
        "a",
        "images, MobileNet a=0.25 @224, shared ImageNet weights, 500x375 JPEGs",
        "image",
        32,
        "peer",
        2.0,
        "MobileNet",
        0.25,
        MOBILENET_WEIGHTS,
        more_targets=(("limit", 1.2),),
    ),
    "b": Scenario(
        "b",
        "images, MobileNetV2 @224, random weights (seed 0), 500x375 JPEGs",
        "image",
        32,
        "limit",
        1.8,
        "MobileNetV2",
        None,
        "none",
        more_targets=(("limit_openvino", 0.85),),
    ),
    "c": Scenario("c", "text, train-text Embedding model, JSONL records from rt-polarity", "text", 256, "limit", 0.3),
}

# (warm-up, small, large) records per scenario; the warm-up only runs in the in-process modes.
MODES = {
    "full": {"a": (32, 1000, 6000), "b": (32, 500, 3000), "c": (4096, 200_000, 1_000_000)},
    "quick": {"a": (32, 128, 512), "b": (16, 48, 128), "c": (1024, 8_000, 32_000)},
    "tiny": {"a": (32, 32, 96), "b": (32, 32, 64), "c": (256, 1024, 4096)},
}


def marginal(small: dict, large: dict) -> Optional[float]:
    """Records per second between two runs; None when the large run was not slower (noise)."""
    dn, dt = large["count"] - small["count"], large["seconds"] - small["seconds"]
    return dn / dt if dt > 0 and dn > 0 else None


@dataclasses.dataclass
class Context:
    """Settings of one invocation. Inputs and models in `work` are shared and reused; everything a
    run writes (specs, logs, results, outputs) goes to its own `run_dir`, so that two invocations
    on one work folder never touch each other's files."""

    shared: pathlib.Path
    work: pathlib.Path
    env: dict
    mode: str
    in_process: bool
    workers2: bool
    text_model: Optional[str]
    log: callable
    run_dir: pathlib.Path = None
    keep_outputs: bool = False
    repeat: int = 1
    job_flags: tuple = ()  # --job-flags: appended to the job's argv only (not the limits or the peer)
    round_label: str = ""  # "-r2" while the scenario's second round runs (file names)


def _image_model_files(ctx: Context, sc: Scenario) -> tuple[str, str]:
    weights = sc.weights if sc.weights == "none" else str(ctx.shared / sc.weights)
    tag = f"{sc.network}-a{sc.alpha}-{sc.size}-{'random' if sc.weights == 'none' else 'imagenet'}"
    return weights, str(ctx.work / "models" / f"peer-{tag}.keras")


def prepare(ctx: Context, scenarios: Sequence[Scenario]) -> dict:
    """Inputs and model files; returns what was made and how."""
    made = {}
    models_dir = ctx.work / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    spec = {"kind": "prepare", "peer_image_models": []}
    for sc in scenarios:
        warm, small, large = MODES[ctx.mode][sc.key]
        if sc.modality == "image":
            ctx.log(f"[{sc.key}] photos: making up to {large} 500x375 JPEGs in {ctx.work / 'photos'}")
            for n in (warm, small, large):
                inputs.image_set(ctx.shared, ctx.work, n)
            weights, peer_model = _image_model_files(ctx, sc)
            spec["peer_image_models"].append(
                {"network": sc.network, "size": sc.size, "alpha": sc.alpha, "weights": weights, "output": peer_model}
            )
        else:
            ctx.log(f"[{sc.key}] text: JSONL sets of {warm}, {small} and {large} records")
            for n in (warm, small, large):
                inputs.text_set(ctx.shared, ctx.work, n)
            if ctx.text_model:
                made["text_model"] = {"path": ctx.text_model, "how": "given with --text-model"}
            else:
                from benchmarks.models import train_text_model

                path = models_dir / "text.keras"
                how_file = models_dir / "text.how"
                if not path.exists():
                    ctx.log(f"[{sc.key}] training the text model -> {path}")
                    how_file.write_text(train_text_model(ctx.shared, path))
                made["text_model"] = {"path": str(path), "how": how_file.read_text() if how_file.exists() else "?"}
            spec["headless_text_model"] = {
                "source": made["text_model"]["path"],
                "output": str(models_dir / f"text-embedding-{_file_tag(made['text_model']['path'])}.keras"),
            }
            made["peer_text_model"] = spec["headless_text_model"]["output"]
    run_worker(spec, "prepare", ctx.run_dir, ctx.env)
    return made


def _file_tag(path: str) -> str:
    stat = os.stat(path)
    return f"{int(stat.st_mtime)}-{stat.st_size}"


def _sizes(ctx: Context, sc: Scenario) -> list[tuple[str, int]]:
    warm, small, large = MODES[ctx.mode][sc.key]
    return ([("warmup", warm)] if ctx.in_process else []) + [("small", small), ("large", large)]


def _pattern(ctx: Context, sc: Scenario, n: int) -> str:
    return inputs.image_set(ctx.shared, ctx.work, n) if sc.modality == "image" else inputs.text_set(ctx.shared, ctx.work, n)


def _run_sized(ctx: Context, sc: Scenario, thing: str, make_run, base_spec: dict, watch_sockets: bool = False) -> dict:
    """Run a thing at the small and large sizes (one process each, or one for all in-process)."""
    sizes = _sizes(ctx, sc)
    items = [make_run(label, n) for label, n in sizes]
    tries: dict[str, list[dict]] = {label: [] for label, _ in sizes}
    for attempt in range(ctx.repeat):
        suffix = ctx.round_label + (f"-r{attempt + 1}" if ctx.repeat > 1 else "")
        if ctx.in_process:
            spec = dict(base_spec, runs=items)
            result = run_worker(spec, f"{sc.key}-{thing}{suffix}", ctx.run_dir, ctx.env, watch_sockets)
            for r in result["runs"]:
                tries[r["label"]].append(dict(r, outside=result["outside"]))
        else:
            for (label, _), item in zip(sizes, items):
                spec = dict(base_spec, runs=[item])
                result = run_worker(spec, f"{sc.key}-{thing}-{label}{suffix}", ctx.run_dir, ctx.env, watch_sockets)
                tries[label].append(dict(result["runs"][0], outside=result["outside"]))
    runs = {label: _median_run(found) for label, found in tries.items()}
    entry = {
        "runs": runs,
        "processes": "one process for all sizes" if ctx.in_process else "one process per size",
        "repeats": ctx.repeat,
    }
    if ctx.in_process:  # the quick modes save a process start: read back here (no reader memory figure)
        from benchmarks import outputs

        files = outputs.parquet_files(runs["large"]["output"])
        entry["output"] = {
            "parquet": outputs.describe_parquet(files),
            "read_back": dict(outputs.read_back_seconds(files), process_peak_rss_mb=None),
        }
        return entry
    inspected = run_worker(
        {"kind": "inspect", "folder": runs["large"]["output"]}, f"{sc.key}-{thing}-inspect", ctx.run_dir, ctx.env
    )
    entry["output"] = {
        "parquet": inspected["parquet"],
        "read_back": dict(inspected["read_back"], process_peak_rss_mb=inspected["process"]["vmhwm_mb"]),
    }
    return entry


def _median_run(found: list[dict]) -> dict:
    """The run of median seconds among repeats of one size (all their seconds kept beside it)."""
    ordered = sorted(found, key=lambda r: r["seconds"])
    return dict(ordered[(len(ordered) - 1) // 2], seconds_all_repeats=[r["seconds"] for r in found])


def _summarise(entry: dict) -> dict:
    runs = entry["runs"]
    small, large = runs["small"], runs["large"]
    entry["marginal_per_second"] = marginal(small, large)
    entry["large_end_to_end_per_second"] = large["count"] / large["seconds"]
    entry["peak_rss_mb"] = {label: r["vmhwm_mb"] for label, r in runs.items()}
    entry["peak_tree_rss_mb"] = {label: r["outside"]["peak_tree_rss_mb_sampled"] for label, r in runs.items()}
    entry["cpu_utilisation_large"] = (large["cpu_seconds"] + large["children_cpu_seconds"]) / large["seconds"]
    entry["marginal_cpu_ms_per_record"] = marginal_cpu_ms(small, large)
    return entry


def marginal_cpu_ms(small: dict, large: dict) -> Optional[float]:
    """CPU milliseconds (all threads and child processes) per record between two runs.

    A steadier cross-check of the marginal rate: another tenant of the machine delays a run's wall
    time by seconds but adds nothing to its CPU time, and where both things keep the cores busy,
    the ratio of their CPU per record is the ratio of their throughputs."""
    cpu = [r["cpu_seconds"] + r["children_cpu_seconds"] for r in (small, large)]
    dn = large["count"] - small["count"]
    return (cpu[1] - cpu[0]) * 1000 / dn if dn > 0 and cpu[1] > cpu[0] else None


def _limit(ctx: Context, sc: Scenario, made: dict, backend: str = "tensorflow") -> dict:
    _, small, large = MODES[ctx.mode][sc.key]
    if sc.modality == "image":
        weights, _ = _image_model_files(ctx, sc)
        spec = {
            "kind": "limit_image",
            "network": sc.network,
            "alpha": sc.alpha,
            "weights": weights,
            "size": sc.size,
            "batch": sc.batch,
            "images": _pattern(ctx, sc, max(small, 128)),
            "counts": [small, large],
            "extras": not ctx.in_process,
            "backend": backend,
        }
    else:
        spec = {
            "kind": "limit_text",
            "model": made["text_model"]["path"],
            "batch": sc.batch,
            "texts": _pattern(ctx, sc, large),
            "counts": [small, large],
            "extras": not ctx.in_process,
        }
    label = f"{sc.key}-limit" + ("" if backend == "tensorflow" else f"-{backend}") + ctx.round_label
    results = [
        run_worker(spec, label + (f"-r{i + 1}" if ctx.repeat > 1 else ""), ctx.run_dir, ctx.env) for i in range(ctx.repeat)
    ]
    result = results[0]
    runs, callers, by_callers = _sized(results, "runs"), 1, None
    if "runs_two_callers" in result:  # TensorFlow's images: the better of one and two batches in flight
        two = _sized(results, "runs_two_callers")
        by_callers = {"1": marginal(runs["small"], runs["large"]), "2": marginal(two["small"], two["large"])}
        if by_callers["2"] and (not by_callers["1"] or by_callers["2"] > by_callers["1"]):
            runs, callers = two, 2
    entry = {
        "runs": runs,
        "callers": callers,
        "processes": "one process, both sizes after a warm-up",
        "model_load_seconds": result["model_load_seconds"],
        "dimension": result["dimension"],
    }
    if "decode_images_per_second" in result:
        entry["decode_images_per_second"] = result["decode_images_per_second"]
    if by_callers:
        entry["per_second_by_callers"] = by_callers
    if "embedder_embed_runs" in result:
        e = result["embedder_embed_runs"]
        entry["embedder_embed_marginal_per_second"] = marginal(e[0], e[1])
    for key in ("backend", "concurrent_calls"):
        if key in result:
            entry[key] = result[key]
    return _summarise(entry)


def _sized(results: list[dict], key: str) -> dict:
    """The median small and large runs under `key` of a limit's repeated results."""
    return {
        label: _median_run([dict(r[key][i], outside=r["outside"]) for r in results]) for i, label in enumerate(("small", "large"))
    }


def job_argv(ctx: Context, sc: Scenario, made: dict, n: int, output: str, workers: int = 1) -> list[str]:
    """The job's command line for `n` records of a scenario."""
    if sc.modality == "image":
        weights, _ = _image_model_files(ctx, sc)
        argv = [
            "--image-input",
            _pattern(ctx, sc, n),
            "--image-model",
            sc.network,
            "--image-weights",
            weights,
            "--image-size",
            str(sc.size),
            "--image-batch-size",
            str(sc.batch),
        ]
        argv += ["--image-alpha", str(sc.alpha)] if sc.alpha is not None else []
    else:
        argv = [
            "--text-input",
            _pattern(ctx, sc, n),
            "--text-model",
            made["text_model"]["path"],
            "--text-batch-size",
            str(sc.batch),
        ]
    argv += ["--output", output, "--run-id", f"bench-{sc.key}-{n}"]
    return argv + list(ctx.job_flags) + (WORKERS2_ARGS if workers == 2 else [])


def _job(ctx: Context, sc: Scenario, made: dict, workers: int) -> dict:
    tag = f"job-w{workers}"

    def make_run(label: str, n: int) -> dict:
        out = str(ctx.run_dir / "out" / f"{sc.key}-{tag}-{label}")
        return {"label": label, "count": n, "argv": job_argv(ctx, sc, made, n, out, workers), "output": out}

    entry = _run_sized(ctx, sc, tag, make_run, {"kind": "job", "modality": sc.modality}, watch_sockets=(workers == 2))
    entry["workers"] = workers
    large = entry["runs"]["large"]
    entry["model_loads"] = large.get("model_loads")
    entry["counts"] = large.get("counts")
    entry["backend"] = large.get("backend")
    if workers == 2:
        entry["listening_sockets"] = large["outside"].get("listening_sockets", [])
    return _summarise(entry)


def _peer(ctx: Context, sc: Scenario, made: dict, dimension: int) -> dict:
    if sc.modality == "image":
        _, model = _image_model_files(ctx, sc)
        base = {"kind": "peer_image", "model": model, "size": sc.size, "batch": sc.batch, "dimension": dimension}
    else:
        base = {"kind": "peer_text", "model": made["peer_text_model"], "batch": sc.batch, "dimension": dimension}

    def make_run(label: str, n: int) -> dict:
        return {
            "label": label,
            "count": n,
            "pattern": _pattern(ctx, sc, n),
            "output": str(ctx.run_dir / "out" / f"{sc.key}-peer-{label}"),
        }

    return _summarise(_run_sized(ctx, sc, "peer", make_run, base))


def _compare_outputs(job_dir: str, peer_dir: str) -> dict:
    """Max |job - peer| over the embeddings of ids both wrote: proof that the peer ran the same model."""
    import numpy as np
    import pyarrow.parquet as pq

    from benchmarks.outputs import parquet_files

    def by_id(folder):
        rows = {}
        for path in parquet_files(folder):
            table = pq.read_table(path, columns=["id", "embedding"])
            ids = table.column("id").to_pylist()
            column = table.column("embedding").combine_chunks()
            matrix = column.flatten().to_numpy().reshape(-1, column.type.list_size)
            rows.update(zip(ids, matrix))
        return rows

    job, peer = by_id(job_dir), by_id(peer_dir)
    common = sorted(set(job) & set(peer))
    if not common:
        return {"common_ids": 0, "job_rows": len(job), "peer_rows": len(peer)}
    diff = np.abs(np.stack([job[i] for i in common]) - np.stack([peer[i] for i in common]))
    scale = float(np.abs(np.stack([job[i] for i in common])).max())
    return {
        "common_ids": len(common),
        "job_rows": len(job),
        "peer_rows": len(peer),
        "max_abs_diff": float(diff.max()),
        "max_abs_value": scale,
    }


def _scenario(ctx: Context, sc: Scenario, made: dict) -> dict:
    """Measure one scenario. With `--repeat N` the limits and the 1-worker job run in N interleaved
    rounds (limit, limit OV, job; then again), so that a shared machine's drift hits all of them
    alike; each round gives its own ratios, and the ratios reported are their medians. The peer
    and the 2-worker job (slow, and far from their targets) run once, in the first round."""
    result = {"scenario": dataclasses.asdict(sc), "sizes": dict(zip(("warmup", "small", "large"), MODES[ctx.mode][sc.key]))}
    rounds = max(1, ctx.repeat)
    once = dataclasses.replace(ctx, repeat=1)
    measured: list[dict] = []
    for k in range(rounds):
        rctx = dataclasses.replace(once, round_label=f"-r{k + 1}" if rounds > 1 else "")
        tag = f"[{sc.key}]" + (f" round {k + 1}/{rounds}:" if rounds > 1 else "")
        this: dict = {}
        ctx.log(f"{tag} limit (model alone)")
        this["limit"] = _limit(rctx, sc, made)
        if sc.modality == "image":
            ctx.log(f"{tag} limit on OpenVINO (model alone, one batch per stream)")
            if importlib.util.find_spec("openvino") is None:
                this["limit_openvino"] = {"error": "the openvino package is not installed (requirements.txt)"}
            else:
                try:
                    this["limit_openvino"] = _limit(rctx, sc, made, "openvino")
                except WorkerFailed as exc:
                    this["limit_openvino"] = {"error": str(exc)}
        if k == 0:
            ctx.log(f"{tag} peer (RunInference)")
            if importlib.util.find_spec("tensorflow_hub") is None:
                result["peer"] = {"error": PEER_UNAVAILABLE}
            else:
                try:
                    result["peer"] = _peer(once, sc, made, this["limit"]["dimension"])
                except WorkerFailed as exc:
                    result["peer"] = {"error": str(exc)}
        ctx.log(f"{tag} job, 1 worker")
        this["job"] = _job(rctx, sc, made, 1)
        measured.append(this)
    for thing in ("limit", "limit_openvino", "job"):
        if thing in measured[0]:
            result[thing] = _merge_rounds([m[thing] for m in measured])
    if ctx.workers2:
        ctx.log(f"[{sc.key}] job, 2 workers (multi_processing)")
        try:
            result["job_2_workers"] = _job(once, sc, made, 2)
        except WorkerFailed as exc:
            result["job_2_workers"] = {"error": str(exc)}
    if "error" not in result["peer"]:
        result["job_vs_peer_embeddings"] = _compare_outputs(
            result["job"]["runs"]["large"]["output"], result["peer"]["runs"]["large"]["output"]
        )
    peer = result["peer"].get("marginal_per_second")
    result["rounds"] = [
        {
            **{thing: m[thing].get("marginal_per_second") for thing in ("limit", "limit_openvino", "job") if thing in m},
            "ratios": _ratios(m["limit"], m.get("limit_openvino", {}), m["job"], peer),
        }
        for m in measured
    ]
    result["ratios"] = _ratios(result["limit"], result.get("limit_openvino", {}), result["job"], peer)
    if rounds > 1:  # the median of the rounds' own ratios: each compares things measured minutes apart, not an hour
        for key in result["ratios"]:
            values = [r["ratios"][key] for r in result["rounds"] if r["ratios"][key] is not None]
            if values and key != "job_over_peer":
                result["ratios"][key] = statistics.median(values)
    result["targets"] = []
    for against, ratio in sc.targets():
        reached = result["ratios"][f"job_over_{against}"]
        result["targets"].append(
            {"ratio": ratio, "against": against, "reached": reached, "met": bool(reached is not None and reached >= ratio)}
        )
    result["target"] = result["targets"][0]
    return result


def _ratios(limit: dict, limit_ov: dict, job: dict, peer: Optional[float]) -> dict:
    """The job's marginal rate over each reference's (None where one is missing)."""
    limit, limit_ov, job = (e.get("marginal_per_second") for e in (limit, limit_ov, job))
    return {
        "job_over_limit": job / limit if job and limit else None,
        "job_over_peer": job / peer if job and peer else None,
        "peer_over_limit": peer / limit if peer and limit else None,
        "job_over_limit_openvino": job / limit_ov if job and limit_ov else None,
        "limit_openvino_over_limit": limit_ov / limit if limit_ov and limit else None,
    }


def _merge_rounds(entries: list[dict]) -> dict:
    """One entry for a thing measured in several rounds: per size, the run of median seconds."""
    ok = [e for e in entries if "error" not in e]
    if len(entries) == 1 or not ok:
        return entries[0]
    merged = dict(ok[0], rounds=len(ok))
    merged["runs"] = {label: _median_run([e["runs"][label] for e in ok]) for label in ok[0]["runs"]}
    if "per_second_by_callers" in ok[0]:
        rates = {n: [e["per_second_by_callers"][n] for e in ok if e["per_second_by_callers"][n]] for n in ("1", "2")}
        merged["per_second_by_callers"] = {n: statistics.median(v) if v else None for n, v in rates.items()}
    return _summarise(merged)


def _fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """The printed table: one row per measured thing, then the targets."""
    head = (
        f"{'scen':<5}{'thing':<14}{'n small':>10}{'n large':>10}{'t small':>9}{'t large':>9}"
        f"{'marginal/s':>12}{'e2e/s':>10}{'x limit':>8}{'x peer':>8}{'RSS MB':>9}{'tree MB':>9}{'CPU':>6}  loads"
    )
    env = report.get("environment", {})
    load = env.get("loadavg_at_start", [None])[0], env.get("loadavg_at_end", [None])[0]
    lines = [
        f"{report['mode']} run of {report.get('started_at', '?')}: job code {str(env.get('job_code_commit', '?'))[:12]}, "
        f"{env.get('cpus')} CPUs ({env.get('cpu_model')}), 1-min load average {_fmt(load[0], '.1f')} at start, "
        f"{_fmt(load[1], '.1f')} at end",
        head,
        "-" * len(head),
    ]
    for key, sc in report["scenarios"].items():
        if "error" in sc:
            lines.append(f"{key:<5}ERROR: {sc['error'].splitlines()[0]}")
            continue
        limit = sc["limit"]["marginal_per_second"]
        peer = sc["peer"].get("marginal_per_second")
        for thing in ("limit", "limit_openvino", "peer", "job", "job_2_workers"):
            entry = sc.get(thing)
            if entry is None:
                continue
            name = {"job_2_workers": "job 2 workers", "job": "job", "limit_openvino": "limit OV"}.get(thing, thing)
            if "error" in entry:
                lines.append(f"{key:<5}{name:<14}ERROR: {entry['error'].splitlines()[0][:90]}")
                continue
            small, large = entry["runs"]["small"], entry["runs"]["large"]
            rate = entry["marginal_per_second"]
            loads = entry.get("model_loads")
            loads_text = ",".join(f"{k.split('_')[0]}={v}" for k, v in sorted(loads.items())) if loads else ""
            lines.append(
                f"{key:<5}{name:<14}{small['count']:>10,}{large['count']:>10,}{small['seconds']:>9.1f}{large['seconds']:>9.1f}"
                f"{_fmt(rate):>12}{_fmt(entry['large_end_to_end_per_second']):>10}"
                f"{_fmt(rate / limit if rate and limit else None, '.2f'):>8}{_fmt(rate / peer if rate and peer else None, '.2f'):>8}"
                f"{large['vmhwm_mb']:>9,.0f}{large['outside']['peak_tree_rss_mb_sampled']:>9,.0f}"
                f"{entry['cpu_utilisation_large']:>6.2f}  {loads_text}"
            )
    lines.append("")
    lines.append(
        "batch sizes: "
        + ", ".join(f"{k} {sc['scenario']['batch']}" for k, sc in report["scenarios"].items() if "scenario" in sc)
        + f"; rounds: {report.get('repeat', 1)} (limits and job interleaved; sizes: the run of median seconds; "
        + "ratios: the median of the rounds' own ratios; peer and 2 workers: once)"
    )
    for key, sc in report["scenarios"].items():
        for k, r in enumerate(sc.get("rounds", []) if len(sc.get("rounds", [])) > 1 else []):
            ratios = r["ratios"]
            lines.append(
                f"round {k + 1} ({key}): limit {_fmt(r.get('limit'))}, limit OV {_fmt(r.get('limit_openvino'))}, "
                f"job {_fmt(r.get('job'))} per s: job / limit {_fmt(ratios['job_over_limit'], '.2f')}, "
                f"job / limit OV {_fmt(ratios['job_over_limit_openvino'], '.2f')}"
            )
    for key, sc in report["scenarios"].items():
        for t in sc.get("targets", [sc["target"]] if "target" in sc else []):
            lines.append(
                f"target ({key}) job >= {t['ratio']} x {t['against']}: {_fmt(t['reached'], '.2f')} -> "
                f"{'MET' if t['met'] else 'NOT MET'}"
            )
    for key, sc in report["scenarios"].items():
        job = sc.get("job")
        if not job or "output" not in job or not job.get("output"):
            continue
        out = job["output"]
        pq = out["parquet"]
        rg = pq["rows_per_row_group"]
        lines.append(
            f"output ({key}) job: {pq['files']} file(s), {pq['file_bytes'].get('total', 0) / 1e6:.1f} MB, "
            f"{rg.get('count', 0)} row groups of {rg.get('min', 0)}..{rg.get('max', 0)} rows (median {rg.get('median', 0):.0f}); "
            f"read back into one matrix {out['read_back']['shape']} in {out['read_back']['seconds_best'] * 1000:.0f} ms "
            f"(reader's peak RSS {_fmt(out['read_back']['process_peak_rss_mb'])} MB)"
        )
        peer_out = sc["peer"].get("output")
        if "error" in sc["peer"]:
            lines.append(f"peer ({key}): not measured: {sc['peer']['error'].splitlines()[0][:160]}")
        if peer_out:
            pq = peer_out["parquet"]
            rg = pq["rows_per_row_group"]
            lines.append(
                f"output ({key}) peer: {pq['files']} file(s), {pq['file_bytes'].get('total', 0) / 1e6:.1f} MB, "
                f"{rg.get('count', 0)} row groups of {rg.get('min', 0)}..{rg.get('max', 0)} rows; "
                f"read back in {peer_out['read_back']['seconds_best'] * 1000:.0f} ms"
            )
        cmp_ = sc.get("job_vs_peer_embeddings", {})
        if cmp_.get("common_ids"):
            lines.append(
                f"same model ({key}): {cmp_['common_ids']} ids in both outputs, max |job - peer| = "
                f"{cmp_['max_abs_diff']:.2e} (values up to {cmp_['max_abs_value']:.3g})"
            )
        limit_entry = sc["limit"]
        ov = sc.get("limit_openvino", {})
        if ov.get("marginal_per_second"):
            b = ov.get("backend", {})
            lines.append(
                f"limit OV ({key}): OpenVINO {b.get('openvino_version')} {b.get('precision')}, "
                f"{ov.get('concurrent_calls')} batch(es) in flight, converted in {_fmt(b.get('convert_seconds'), '.1f')} s: "
                f"{_fmt(sc['ratios'].get('limit_openvino_over_limit'), '.2f')} x TensorFlow's bare forward pass"
            )
        if "decode_images_per_second" in limit_entry:
            d = limit_entry["decode_images_per_second"]
            lines.append(
                f"limit ({key}): job's decode_image alone {d['1_thread']:,.0f} img/s on 1 thread, {_fmt(d.get('2_threads'))} on 2"
            )
        if limit_entry.get("per_second_by_callers"):
            by = limit_entry["per_second_by_callers"]
            lines.append(
                f"limit ({key}): TensorFlow with 1 batch in flight {_fmt(by.get('1'))} img/s, with 2 (two threads) "
                f"{_fmt(by.get('2'))} img/s; the limit is the better ({limit_entry.get('callers', 1)})"
            )
        if limit_entry.get("embedder_embed_marginal_per_second"):
            lines.append(
                f"limit ({key}): the job's TextEmbedder.embed on ready lists of str: "
                f"{limit_entry['embedder_embed_marginal_per_second']:,.0f} rec/s"
            )
        cpu = {  # from the runs, so results written before this line existed show it too
            t: marginal_cpu_ms(sc[t]["runs"]["small"], sc[t]["runs"]["large"]) if "runs" in sc.get(t, {}) else None
            for t in ("limit", "limit_openvino", "job")
        }
        if cpu["job"]:
            lines.append(
                f"CPU per record ({key}), marginal: limit {_fmt(cpu['limit'], '.3f')} ms, limit OV {_fmt(cpu['limit_openvino'], '.3f')} ms, "
                f"job {cpu['job']:.3f} ms: limit / job {_fmt(cpu['limit'] and cpu['limit'] / cpu['job'], '.2f')}, "
                f"limit OV / job {_fmt(cpu['limit_openvino'] and cpu['limit_openvino'] / cpu['job'], '.2f')} "
                "(the throughput ratios where both keep the cores busy, free of start-up noise)"
            )
        mem = job["peak_rss_mb"]
        lines.append(
            f"memory ({key}) job peak RSS by size: "
            + ", ".join(f"{label} {sc['sizes'][label]:,} -> {mb:,.0f} MB" for label, mb in mem.items())
            + ("" if report["mode"] == "full" else " (sizes share one process in this mode)")
        )
        if sc.get("job_2_workers", {}).get("listening_sockets"):
            lines.append(
                f"gRPC ({key}) 2 workers listening: " + "; ".join(s.split()[3] for s in sc["job_2_workers"]["listening_sockets"])
            )
    return "\n".join(lines)


def _environment(ctx: Context) -> dict:
    cpu_model = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "loadavg_at_start": os.getloadavg(),
        "git_head": _git("rev-parse", "HEAD"),
        "job_code": ctx.env["BENCH_JOB_ROOT"],
        "job_code_commit": (pathlib.Path(ctx.env["BENCH_JOB_ROOT"]) / ".done").read_text().strip()
        if (pathlib.Path(ctx.env["BENCH_JOB_ROOT"]) / ".done").exists()
        else "working tree",
        "job_files_changed_since_head": (_git("status", "--porcelain", "--", "transforms", "pipeline") or "").splitlines(),
        "thread_settings": {
            k: ctx.env.get(k)
            for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")
        },
        "decode_threads": "job default (max(2, cpu_count))",
    }


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=inputs.PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _job_tree(work: pathlib.Path, ref: str) -> pathlib.Path:
    """`pipeline/` and `transforms/` as committed at `ref`, extracted (git archive) under the work folder."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    if not sha:
        raise SystemExit(f"--job-ref {ref!r}: not a commit of this repository")
    folder = work / "job-trees" / sha[:12]
    if not (folder / ".done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", sha, "pipeline", "transforms"], cwd=inputs.PROJECT_ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        (folder / ".done").write_text(sha + "\n")
    return folder


def make_context(args: argparse.Namespace, mode: str) -> Context:
    """Folders, environment and settings shared by every measured process of one invocation."""
    work = pathlib.Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shared = pathlib.Path(args.shared_data).resolve()
    if not (shared / "images" / "imagenette-sample").is_dir():
        raise SystemExit(f"shared data not found at {shared} (pass --shared-data)")
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    workers2 = getattr(args, "workers2", None)
    job_root = _job_tree(work, args.job_ref) if getattr(args, "job_ref", None) else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_dir = work / "sessions" / f"{mode}-{stamp}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    return Context(
        shared,
        work,
        worker_env(work, args.tf_threads, job_root),
        mode,
        in_process=(mode != "full"),
        workers2=workers2 if workers2 is not None else mode == "full",
        text_model=args.text_model,
        log=log,
        run_dir=run_dir,
        keep_outputs=getattr(args, "keep_outputs", False),
        repeat=max(1, getattr(args, "repeat", 1) or 1),
        job_flags=tuple(shlex.split(getattr(args, "job_flags", None) or "")),
    )


def _with_batch(sc: Scenario, args: argparse.Namespace) -> Scenario:
    """The scenario with the batch size given on the command line, if any (same for limit, peer and job)."""
    batch = args.image_batch_size if sc.modality == "image" else args.text_batch_size
    return dataclasses.replace(sc, batch=batch) if batch else sc


def run_benchmarks(args: argparse.Namespace) -> dict:
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    started = time.perf_counter()
    ctx = make_context(args, mode)
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    scenarios = [_with_batch(SCENARIOS[k], args) for k in keys]
    report = {
        "mode": mode,
        "repeat": ctx.repeat,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": _environment(ctx),
        "scenarios": {},
    }
    report["environment"]["job_flags"] = list(ctx.job_flags)
    report["prepared"] = prepare(ctx, scenarios)
    report["environment"]["run_dir"] = str(ctx.run_dir)
    for sc in scenarios:
        try:
            report["scenarios"][sc.key] = _scenario(ctx, sc, report["prepared"])
        except WorkerFailed as exc:
            ctx.log(str(exc))
            report["scenarios"][sc.key] = {"error": str(exc)}
        if not ctx.keep_outputs:
            for folder in (ctx.run_dir / "out").glob(f"{sc.key}-*"):
                shutil.rmtree(folder, ignore_errors=True)
    report["environment"]["loadavg_at_end"] = os.getloadavg()
    report["total_seconds"] = time.perf_counter() - started
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smaller sizes, one process per thing (about 2 minutes).")
    parser.add_argument("--tiny", action="store_true", help="Smallest sizes: checks the harness, measures nothing useful.")
    parser.add_argument("--scenarios", default="a,b,c", help="Comma-separated scenario keys (default: a,b,c).")
    parser.add_argument(
        "--workers2",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Also run the job with 2 workers (multi_processing); default: on in the full mode only "
        "(each such run starts 2 worker processes that import TensorFlow: ~25 s of start-up).",
    )
    parser.add_argument("--text-model", help="Use this train-text .keras model instead of training one.")
    parser.add_argument("--tf-threads", type=int, help="Set TF intra/inter-op threads for every measured process.")
    parser.add_argument("--table", metavar="RESULTS.json", help="Run nothing: print (and rewrite the .txt of) an earlier result.")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Run every measured process this many times and keep the median (the machine is shared).",
    )
    parser.add_argument("--image-batch-size", type=int, help="Images per model call for limit, peer and job (default: 32).")
    parser.add_argument("--text-batch-size", type=int, help="Texts per model call for limit, peer and job (default: 256).")
    parser.add_argument("--keep-outputs", action="store_true", help="Keep the Parquet outputs (default: deleted per scenario).")
    parser.add_argument(
        "--job-flags",
        default="",
        help='Extra flags for the job\'s command line only, e.g. "--image-decoder opencv" (the limits and the peer are unchanged).',
    )
    parser.add_argument(
        "--job-ref",
        help="Measure the job as committed at this git ref (e.g. HEAD, a tag) instead of "
        "the working tree's pipeline/ and transforms/.",
    )
    inputs.add_location_flags(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.table:
        path = pathlib.Path(args.table)
        table = format_table(json.loads(path.read_text()))
        path.with_suffix(".txt").write_text(table + "\n")
        print(table)
        return 0
    report = run_benchmarks(args)
    table = format_table(report)
    print(table)
    results = pathlib.Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    stamp = report["started_at"].replace(":", "").replace("-", "")[:15]
    base = results / f"{report['mode']}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    base.with_suffix(".txt").write_text(table + "\n")
    print(f"\nwrote {base}.json and {base}.txt ({report['total_seconds']:.0f} s)")
    return 1 if any("error" in s for s in report["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
