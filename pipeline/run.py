"""`python -m pipeline run`: validate flags and models up front, run the job, print a summary."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import logging
import os
import re
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    PipelineOptions,
    SetupOptions,
)

from pipeline.checks import launch, prior_embedding_files  # noqa: F401 - prior_embedding_files: its old home
from pipeline.graph import ModelInfo, build_pipeline
from pipeline.loopback import loopback_only_servers
from pipeline.options import ConfigError, JobConfig, is_local_runner
from pipeline.shutdown import CLAIMED as _CLAIMED
from pipeline.shutdown import UNFINISHED, signals_end_the_run, stop_workers
from transforms import progress
from transforms.embed.models import load_image_embedder, load_text_embedder
from transforms.errors import DataError, UserError
from transforms.io import fileio
from transforms.records import IMAGE, TEXT
from transforms.results import modality_status, read_manifest
from transforms.sinks.folder import (
    ForeignFilesError,
    OutputInUseError,
    UnreadableManifestError,
    claim_output,
    clear_previous_output,
    discard_unfinished,
    release_output,
)

__all__ = [
    "run",
    "inspect_models",
    "format_summary",
    "local_in_process",
    "known_image_count",
    "main",
    "run_command",
    "RunFailed",
    "RunStopped",
]

_LOGGER = logging.getLogger(__name__)


class RunFailed(DataError, RuntimeError):
    """The pipeline finished but the run failed its checks (failure budget, counts): the manifest
    says `"status": "failed"`. Carries the manifest. Exit code 1."""

    def __init__(self, manifest: dict):
        self.manifest = manifest
        why = "; ".join(f"{m}: {r}" for m, r in sorted(manifest.get("failures", {}).items()))
        super().__init__(f"run {manifest.get('run_id')} failed: {why} (dead letters: {manifest.get('output')}/errors/)")


class RunStopped(DataError, RuntimeError):
    """The run stopped with an exception before it finished (storage unreachable, disk full, a pipeline
    error): the message is `failure_message`'s one line, the exception its `__cause__`. Exit code 1."""


def inspect_models(config: JobConfig) -> dict[str, ModelInfo]:
    """Load each model once in the launcher: proves it is usable and learns its dimension and sha256."""
    models = {}
    if config.text_model is not None:
        embedder = load_text_embedder(config.text_model)
        models[TEXT] = ModelInfo(
            embedder.model_name,
            embedder.model_sha256,
            embedder.dimension,
            {"path": config.text_model.path, "layer": config.text_model.layer, "sequence_length": embedder.sequence_length},
        )
    if config.image_model is not None:
        embedder = load_image_embedder(config.image_model, hand_off=True)
        spec = config.image_model
        models[IMAGE] = ModelInfo(
            embedder.model_name,
            embedder.model_sha256,
            embedder.dimension,
            {
                "model": spec.model,
                "weights": spec.weights,
                "input_size": list(embedder.input_size),
                "layer": spec.layer,
                "alpha": spec.alpha,
                **embedder.backend_details,
            },
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


def local_in_process(options: PipelineOptions) -> bool:
    """Whether the DoFns run in this process (the local runner, in memory or threads), so progress can use totals."""
    from apache_beam.options.pipeline_options import DirectOptions

    mode = options.view_as(DirectOptions).direct_running_mode or "in_memory"
    return is_local_runner(options) and mode != "multi_processing"


def known_image_count(config: JobConfig, listing: Optional[fileio.InputListing] = None) -> Optional[int]:
    """How many images the run will see, when every --image-input is a glob or a folder (a manifest's rows are not counted)."""
    from transforms.io.image_read import image_input_paths, is_manifest

    if not config.has_images or any(is_manifest(i) for i in config.image_inputs):
        return None
    return len(image_input_paths(config.image_inputs, listing))


def format_summary(manifest: dict, elapsed: float, model_loads: Optional[dict] = None, total: Optional[float] = None) -> str:
    """The end-of-run table: counts, throughput, the input lines' reconciliation and where the output went.
    `elapsed`: seconds the pipeline ran (rec/s is per these); `total`: seconds since the command
    started (`command_started`), the wall time the user waited."""
    failures = manifest.get("failures", {})
    status = "FAILED" if manifest.get("status") == "failed" else "finished"
    took = f"{elapsed:.1f} s" if total is None else f"{total:.1f} s (the pipeline itself {elapsed:.1f} s)"
    lines = [f"Run {manifest['run_id']} {status} in {took} -> {manifest['output']}"]
    lines.append(f"{'modality':<10}{'read':>10}{'embedded':>10}{'failed':>10}{'skipped':>10}{'rec/s':>10}  check")
    for modality, c in manifest["counts"].items():
        rate = c["embedded"] / elapsed if elapsed > 0 else 0.0
        check = "ok" if c["balanced"] else "COUNTS DO NOT ADD UP"
        if modality in failures and c["balanced"]:
            check = "FAILED: " + failures[modality]
        lines.append(f"{modality:<10}{c['read']:>10}{c['embedded']:>10}{c['failed']:>10}{c['skipped']:>10}{rate:>10.1f}  {check}")
    for modality, c in manifest["counts"].items():  # --carry-over: the folder is a complete snapshot
        if "carried" in c:
            lines.append(
                f"  {modality}: {c['carried']} earlier embedding(s) carried over: {c['embedded'] + c['carried']} rows in {modality}/"
            )
    for modality, c in manifest["counts"].items():  # --incremental-from: what left the input since the earlier run(s)
        if "removed" in c:
            lines.append(f"  {modality}: {c['removed']} record(s) of the earlier run(s) no longer in the input (removed)")
    for modality, a in manifest.get("accounting", {}).items():  # every input line accounted for (issue 19)
        parts = []
        if a["lines"] or not a["rows"]:
            parts.append(
                f"{a['lines']} lines = {a['record_lines']} read + {a['blank_lines']} blank + {a['header_lines']} header"
                f" + {a['continuation_lines']} continuation"
            )
        if a["rows"]:
            parts.append(f"{a['rows']} Parquet rows = {a['record_rows']} read")
        verdict = "ok" if a["balanced"] else f"LINES UNACCOUNTED in {a['unaccounted_files']} file(s)"
        lines.append(f"  {modality} inputs: {'; '.join(parts)}: {verdict}")
    if manifest.get("status") == "failed":  # each modality's own status beside the run's (manifest "modalities")
        statuses = {m: modality_status(manifest, m)["status"] for m in manifest["counts"]}
        complete = [m for m, status in statuses.items() if status == "complete"]
        parts = [f"{m} {status}" for m, status in statuses.items()]
        usable = f"; tools read its {' and '.join(complete)} embeddings as they are" if complete else ""
        lines.append(f"  status: run failed ({', '.join(parts)}){usable}; --allow-failed reads the rest")
    for folder, paths in manifest["files"].items():
        lines.append(f"  {folder + '/':<8} {len(paths)} Parquet file(s)")
    for modality, reasons in manifest.get("top_errors", {}).items():
        if reasons:
            lines.append(f"  top reasons ({modality}):")
        for r in reasons:
            message = r["example_message"] if len(r["example_message"]) <= 100 else r["example_message"][:97] + "..."
            lines.append(f"    {r['count']:>8} x {r['error_type']} ({r['stage']}), e.g. {r['example_id']!r}: {message}")
    if any(c["failed"] for c in manifest["counts"].values()):
        lines.append(f"  dead letters (id, stage, reason): {manifest['output']}/errors/")
    for modality, info in manifest.get("models", {}).items():
        details = info.get("details", {})
        if details.get("backend"):  # which backend ran the image network, and why when it fell back
            lines.append(
                f"  {modality} model on {details['backend']} {details.get('precision', '')}: {details.get('backend_note') or info['name']}"
            )
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


_IMPORTED = time.monotonic()
_command_start: Optional[float] = None  # when the command that runs now started (`command_started`)


def command_started() -> float:
    """`time.monotonic()` when the user's command started, for the summary's "finished in". When
    this is the process's first run and the process was started to run it (this module imported
    within 30 s of the process's start: `python -m pipeline run`, `beam-embeddings`, the flex
    template's launcher), the process's own start: Python, Beam and TensorFlow start-up, the launch
    checks and model loading are part of the wait (Linux: /proc; elsewhere the module's import).
    Otherwise (a later run in the process, a notebook) this run's call."""
    now = time.monotonic()
    if _command_start is not None:
        return now
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime: clock ticks after boot
            age = float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
        process_start = now - age
    except (OSError, ValueError, IndexError):
        process_start = _IMPORTED
    return process_start if 0 <= _IMPORTED - process_start < 30 else now


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = False, test_pipeline=None) -> dict:
    """Run the job; returns the manifest (for a runner that waits) or {} for a submitted job.

    Launch order: every check that needs no model (`pipeline.checks.launch`: flags, Dataflow's
    credentials, inputs and their fields, earlier runs, --output writable and free of foreign files),
    then the models load (a bad model is exit 2 too), and only then is --output claimed and cleared."""
    global _command_start
    _command_start = command_started()
    argv = list(sys.argv[1:] if argv is None else argv)
    options, config, prior, listing, builds_only = launch(argv)
    options.view_as(SetupOptions).save_main_session = save_main_session
    os.environ[fileio.STORAGE_TIMEOUT_ENV] = str(config.storage_timeout)  # local worker processes inherit it
    fileio.bound_storage_retries(config.storage_timeout)
    models = inspect_models(config)
    if config.image_model is not None:  # workers run what the launcher chose (auto resolved), as the manifest says
        details = models[IMAGE].details
        config = dataclasses.replace(
            config,
            image_model=dataclasses.replace(config.image_model, backend=details["backend"], precision=details["precision"]),
        )
    if builds_only:  # a template or a dry run: built (and checked) only, nothing runs, --output is left alone
        return _run_claimed(pipeline_factory(options, test_pipeline), options, config, models, prior, True, listing)
    try:
        claim_output(config.output, config.run_id, force=config.force_unlock, detached=config.detach)
    except OutputInUseError as exc:
        raise ConfigError(str(exc)) from None
    _CLAIMED.update(output=config.output, run_id=config.run_id)
    try:
        try:
            cleared = clear_previous_output(config.output)
        except (ForeignFilesError, UnreadableManifestError) as exc:  # changed since the check above
            raise ConfigError(str(exc)) from None
        if cleared:
            _LOGGER.info("Removed %d file(s) of an earlier run in %s", len(cleared), config.output)
        try:
            return _run_claimed(pipeline_factory(options, test_pipeline), options, config, models, prior, False, listing)
        except Exception:
            if not config.detach:  # stopped before its manifest: what it wrote goes, so a rerun finds a clean folder
                with contextlib.suppress(Exception):
                    discard_unfinished(config.output)
            raise
    finally:
        _CLAIMED.clear()
        if not config.detach:  # a detached run frees the folder itself, when it writes its manifest
            with contextlib.suppress(Exception):
                release_output(config.output, config.run_id)


def pipeline_factory(options: PipelineOptions, test_pipeline=None) -> beam.Pipeline:
    """The pipeline to build into: the test's, the local FnApiRunner, or the runner named by --runner."""
    local = is_local_runner(options)
    return test_pipeline or beam.Pipeline(runner=local_runner(options) if local else None, options=options)


def _run_claimed(
    pipeline, options, config: JobConfig, models, prior, builds_only: bool, listing: Optional[fileio.InputListing] = None
) -> dict:
    progress.reset()
    progress.set_total(IMAGE, known_image_count(config, listing) if local_in_process(options) else None)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.monotonic()
    local = is_local_runner(options)
    build_pipeline(pipeline, config, models, started_at, prior_files=prior, listing=listing)
    if listing is not None:
        listing.clear()  # built: the workers list the inputs again themselves
    if builds_only and local:  # the local runners ignore --dry_run: check the built job without running it
        pipeline.to_runner_api()  # every step's code and coders serialise, as a runner would need them
        print(f"Dry run: the job was built and checked; nothing ran and nothing was written to {config.output}.")
        return {}
    with loopback_only_servers() if local else contextlib.nullcontext():
        result = pipeline.run()
        if builds_only:
            return {}
        if config.detach:
            print(f"Submitted run {config.run_id}; when it finishes, {config.output}/_MANIFEST.json holds its counts.")
            return {}
        result.wait_until_finish()
    elapsed = time.monotonic() - start
    # The pipeline finished: its manifest must be there. Any failure to read it back (storage gone,
    # no manifest) fails the run loudly (`main`: one line, exit 1) rather than passing without counts.
    manifest = read_manifest(config.output, allow_failed=True)
    progress.finish()  # the final counts end the live progress line
    manifest["model_loads"] = _model_loads(result)
    total = time.monotonic() - (_command_start if _command_start is not None else start)
    print(format_summary(manifest, elapsed, manifest["model_loads"], total=max(total, elapsed)))
    if manifest.get("status") == "failed":
        raise RunFailed(manifest)
    return manifest


def _chain(exc: BaseException) -> list[BaseException]:
    found = []
    while exc is not None and len(found) < 20 and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def failure_message(exc: BaseException) -> str:
    """One line naming the real cause of a run that stopped with an exception (no traceback)."""
    chain = _chain(exc)
    text = "\n".join(f"{type(e).__name__}: {e}" for e in chain)
    step = re.search(r"\[while running '([^']+)'\]", text)
    parts = step.group(1).split("/") if step else []
    # The top-level step, inside a modality's branch the branch's step: 'WriteManifest', 'Images/EmbedImages'.
    where = f" in step {'/'.join(parts[:2] if parts[0] in ('Text', 'Images') else parts[:1])!r}" if parts else ""
    outage = re.search(r"storage unreachable: .*?(?= \[while running|\n|$)", text)
    if any(isinstance(e, fileio.StorageUnavailable) for e in chain) or outage:
        detail = outage.group(0) if outage else "storage unreachable"
        return f"{detail}{where}; {UNFINISHED}"
    # Beam's gcsio batch copy/delete (the sinks' finalisation) reads `response.status_code` of a batch
    # answer that never came when the storage endpoint is gone: an AttributeError on None, not a bug here.
    no_answer = "'NoneType' object has no attribute 'status_code'" in text
    if "RetryError" in text or "Timeout of" in text or no_answer or any(fileio.is_transient_storage_error(e) for e in chain[:1]):
        return (
            f"storage unreachable{where}: gs:// calls kept failing for more than "
            f"{fileio.storage_timeout():g} s (--storage-timeout); {UNFINISHED}"
        )
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain) or "No space left on device" in text:
        return f"no space left on device{where} (writing --output or a temp folder); {UNFINISHED}, once there is space again"
    first = next((line for line in str(chain[-1]).splitlines() if line.strip()), "")[:300]
    return f"the run failed{where}: {type(chain[-1]).__name__}: {first} (--verbose shows the traceback); {UNFINISHED}"


_BEAM_ERROR_LOGGERS = (
    "apache_beam.runners.common",
    "apache_beam.runners.worker.sdk_worker",
    "apache_beam.runners.portability.fn_api_runner.worker_handlers",
)


def run_command(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m pipeline run`'s body: run the job; a failure is raised as a `UserError` for the CLI's exit path.

    A bad flag or model raises `ConfigError`/`ModelConfigError` (exit 2), a run over its failure
    budget `RunFailed` (exit 1), and any other exception of the run (storage unreachable, disk full,
    a pipeline error) `RunStopped` (exit 1) with one line naming the cause; its traceback is logged
    for --verbose only. Ctrl-C and SIGTERM end the process at once (130, 143; see
    `pipeline.shutdown.signals_end_the_run`).
    """
    quiet = [] if logging.getLogger().isEnabledFor(logging.INFO) else [logging.getLogger(name) for name in _BEAM_ERROR_LOGGERS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # Beam logs each failure with its whole traceback; the one line below says it
        logger.setLevel(logging.CRITICAL)
    try:
        with signals_end_the_run():
            run(argv)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the pipeline failed: one line, the traceback only with --verbose
        stop_workers()
        # Its own logger, outside "pipeline" (kept at INFO for progress): shown only with --verbose.
        logging.getLogger("beam_embeddings.traceback").info("The run failed", exc_info=True)
        raise RunStopped(failure_message(exc)) from exc
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry (also the flex template's): exit 0 on success, 2 on a bad flag or model, 1 on a
    failed run (over its failure budget, storage unreachable, disk full, ...), 130 on Ctrl-C and 143 on
    SIGTERM; every failure ends with one `error:` line on stderr. The same exit path as
    `python -m pipeline run` (`pipeline.cli.exit_status`)."""
    from pipeline.cli import exit_status
    from transforms import quiet

    quiet.install()  # the flex template's launcher starts here, not in `pipeline.cli.main`
    return exit_status("run", lambda: run_command(argv))
