"""`python -m pipeline run`: validate flags and models up front, run the job, print a summary."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    TestOptions,
)

from pipeline.graph import ModelInfo, build_pipeline
from pipeline.loopback import loopback_only_servers
from pipeline.options import (
    ConfigError,
    JobConfig,
    check_output_writable,
    check_unknown_flags,
    config_from_options,
)
from transforms import progress
from transforms.models import ModelConfigError, load_image_embedder, load_text_embedder
from transforms.records import IMAGE, TEXT
from transforms.write import clear_previous_output, read_manifest, run_files

__all__ = ["run", "inspect_models", "format_summary", "main"]

_LOGGER = logging.getLogger(__name__)


def inspect_models(config: JobConfig) -> dict[str, ModelInfo]:
    """Load each model once in the launcher: proves it is usable and learns its dimension and sha256."""
    models = {}
    if config.text_model is not None:
        embedder = load_text_embedder(config.text_model)
        models[TEXT] = ModelInfo(
            embedder.model_name, embedder.model_sha256, embedder.dimension,
            {"path": config.text_model.path, "sequence_length": embedder.sequence_length},
        )
    if config.image_model is not None:
        embedder = load_image_embedder(config.image_model, hand_off=True)
        spec = config.image_model
        models[IMAGE] = ModelInfo(
            embedder.model_name, embedder.model_sha256, embedder.dimension,
            {"model": spec.model, "weights": spec.weights, "input_size": list(embedder.input_size),
             "layer": spec.layer, "alpha": spec.alpha, **embedder.backend_details},
        )
    return models


def local_runner(options: PipelineOptions):
    """Beam's FnApiRunner, which the DirectRunner picks for batch pipelines like this one.

    Chosen explicitly because the DirectRunner of Beam 2.77 first tries the Prism runner, which
    downloads a binary from the internet: a local run must make no network call. The FnApiRunner
    still honours --direct_num_workers and --direct_running_mode.
    """
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def prior_embedding_files(config: JobConfig) -> dict[str, list[str]]:
    """The Parquet files of the earlier runs named by --incremental-from, by modality."""
    files: dict[str, list[str]] = {}
    for folder in config.incremental_from:
        try:
            manifest = read_manifest(folder)
        except Exception as exc:  # noqa: BLE001 - missing folder, unfinished run
            raise ConfigError(f"--incremental-from {folder!r}: {exc}") from exc
        for modality in (TEXT, IMAGE):
            files.setdefault(modality, []).extend(run_files(folder, manifest, modality))
    return files


def format_summary(manifest: dict, elapsed: float, model_loads: Optional[dict] = None) -> str:
    """The end-of-run table: counts, throughput and where the output went."""
    lines = [f"Run {manifest['run_id']} finished in {elapsed:.1f} s -> {manifest['output']}"]
    lines.append(f"{'modality':<10}{'read':>10}{'embedded':>10}{'failed':>10}{'skipped':>10}{'rec/s':>10}  check")
    for modality, c in manifest["counts"].items():
        rate = c["embedded"] / elapsed if elapsed > 0 else 0.0
        check = "ok" if c["balanced"] else "COUNTS DO NOT ADD UP"
        lines.append(
            f"{modality:<10}{c['read']:>10}{c['embedded']:>10}{c['failed']:>10}{c['skipped']:>10}{rate:>10.1f}  {check}"
        )
    for folder, paths in manifest["files"].items():
        lines.append(f"  {folder + '/':<8} {len(paths)} Parquet file(s)")
    if any(c["failed"] for c in manifest["counts"].values()):
        lines.append(f"  dead letters (id, stage, reason): {manifest['output']}/errors/")
    for modality, info in manifest.get("models", {}).items():
        details = info.get("details", {})
        if details.get("backend"):  # which backend ran the image network, and why when it fell back
            lines.append(f"  {modality} model on {details['backend']} {details.get('precision', '')}: {details.get('backend_note') or info['name']}")
    if model_loads:
        lines.append("  model loads: " + ", ".join(f"{k}={v}" for k, v in sorted(model_loads.items())))
    lines.append(f"  manifest: {manifest['output']}/_MANIFEST.json")
    return "\n".join(lines)


def _model_loads(result) -> dict:
    try:
        metrics = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("embeddings"))
    except Exception:  # noqa: BLE001 - not every runner reports metrics
        return {}
    loads = {}
    for counter in metrics["counters"]:
        if counter.key.metric.name.endswith("_model_loads"):
            name = counter.key.metric.name
            loads[name] = loads.get(name, 0) + (counter.committed or counter.attempted or 0)
    return loads


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = False, test_pipeline=None) -> dict:
    """Run the job; returns the manifest (for a runner that waits) or {} for a submitted job."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_unknown_flags(argv)
    options = PipelineOptions(argv)
    options.view_as(SetupOptions).save_main_session = save_main_session
    config = config_from_options(options)
    prior = prior_embedding_files(config)
    models = inspect_models(config)
    if config.image_model is not None:  # workers run what the launcher chose (auto resolved), as the manifest says
        details = models[IMAGE].details
        config = dataclasses.replace(config, image_model=dataclasses.replace(
            config.image_model, backend=details["backend"], precision=details["precision"]))
    builds_only = bool(options.view_as(GoogleCloudOptions).template_location) or bool(options.view_as(TestOptions).dry_run)
    if not builds_only:  # a template or dry run executes nothing now: leave any earlier output alone
        check_output_writable(config.output)
        cleared = clear_previous_output(config.output)
        if cleared:
            _LOGGER.info("Removed %d file(s) of an earlier run in %s", len(cleared), config.output)
    progress.reset()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.monotonic()
    runner = str(options.view_as(StandardOptions).runner or "DirectRunner")
    local = runner in ("DirectRunner", "direct", "SwitchingDirectRunner")
    pipeline = test_pipeline or beam.Pipeline(runner=local_runner(options) if local else None, options=options)
    build_pipeline(pipeline, config, models, started_at, prior_files=prior)
    with loopback_only_servers() if local else contextlib.nullcontext():
        result = pipeline.run()
        if builds_only:
            return {}
        if config.detach:
            print(f"Submitted run {config.run_id}; when it finishes, {config.output}/_MANIFEST.json holds its counts.")
            return {}
        result.wait_until_finish()
    elapsed = time.monotonic() - start
    try:
        manifest = read_manifest(config.output)
    except Exception:  # noqa: BLE001 - e.g. a template run: nothing ran here
        return {}
    if sys.stderr.isatty():
        sys.stderr.write("\n")  # end the live progress line
    manifest["model_loads"] = _model_loads(result)
    print(format_summary(manifest, elapsed, manifest["model_loads"]))
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: exit 0 on success, 2 on a bad flag or model, 1 on a failed run."""
    try:
        run(argv)
    except (ConfigError, ModelConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
