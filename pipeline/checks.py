"""Every launch check of `python -m pipeline run`, in one place, in the order `launch` runs them.

A run refuses to start (ConfigError: exit 2, one line naming the flag) before it loads a model,
claims its output folder or clears an earlier run there, so that a refused run leaves every folder
as it was. In order:

1. the flags themselves (`check_unknown_flags`, `check_flags`: required pairs, numbers, maxima,
   names, combinations; `check_beam_flags`: Beam flag values Beam would crash on; with Dataflow,
   `check_remote_paths`), then the JobConfig is built (`options.build_config`) and checked as a whole
   (`check_config`: schemes, --incremental-from against --output, --carry-over, BigQuery);
2. the environment: Dataflow's required flags and credentials (`check_dataflow_ready`, before
   anything is read or staged), the inputs (`check_inputs`: each pattern lists and matches),
   inputs outside --output (`check_inputs_outside_output`), the fields the flags name against the
   first records of each input (`check_input_fields`);
3. the earlier runs of --incremental-from (`prior_embedding_files`), then --output: writable
   (`check_output_writable`; on gs:// a probe, bound by --storage-timeout) and holding nothing but
   an earlier run's files (`check_output_folder`).

`pipeline.run.run` then loads the models (a bad model is exit 2 too) and only then claims the folder.
Storage that stays unreachable during these checks is StorageUnreachable (exit 1), not a bad flag.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import itertools
import json
import logging
import os
import posixpath
import re
import stat
import sys
import threading
import uuid
from typing import NamedTuple, Optional, Sequence

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline.options import (
    ConfigError,
    ImageModelOptions,
    InputOptions,
    JobConfig,
    OutputOptions,
    RunOptions,
    StorageUnreachable,
    TextModelOptions,
    build_config,
    declared_default,
    is_dataflow_runner,
    keras_file,
    parse_failed_fraction,
    parse_passthrough,
    runner_name,
    split_folders,
    weights_path,
)
from transforms.embed.dofns import MAX_DECODE_THREADS
from transforms.embed.models import MAX_IMAGE_BATCH_SIZE, MAX_TEXT_BATCH_SIZE, NETWORKS
from transforms.io import fileio
from transforms.records import IMAGE, TEXT, embedding_schema
from transforms.results import MANIFEST_NAME, failure_summary, modality_status, run_files, run_folder_lacks
from transforms.sinks.folder import WRITE_PROBE_PREFIX

__all__ = [
    "Launch",
    "launch",
    "config_from_options",
    "check_unknown_flags",
    "check_flags",
    "check_beam_flags",
    "check_remote_paths",
    "check_config",
    "check_dataflow_ready",
    "check_inputs",
    "check_inputs_outside_output",
    "check_input_fields",
    "prior_embedding_files",
    "check_output_writable",
    "check_output_folder",
    "reserved_output_columns",
    "real_path",
    "same_path",
    "is_inside",
    "SAMPLE_RECORDS",
]

SAMPLE_RECORDS = 20  # records read from the first file of each input to check the field flags ...
SAMPLE_BYTES = 1 << 20  # ... within its first MiB (a longer first record: nothing learned, no check)
CREDENTIALS_TIMEOUT = 20.0  # seconds google.auth.default() may take (it pings the GCE metadata server)


class Launch(NamedTuple):
    """What the launch checks found: the options and config, the earlier runs' files by modality,
    the inputs' listings (each pattern listed once) and whether the job is only built (a template
    or a dry run: nothing runs, --output is left alone)."""

    options: PipelineOptions
    config: JobConfig
    prior: dict
    listing: fileio.InputListing
    builds_only: bool


def launch(argv: Sequence[str]) -> Launch:
    """Every check that needs no model, in order (see the module docstring); ConfigError at the first."""
    from apache_beam.options.pipeline_options import TestOptions

    check_unknown_flags(argv)
    options = PipelineOptions(list(argv))
    listing = fileio.InputListing()
    config = config_from_options(options, listing=listing)
    prior = prior_embedding_files(config)
    template = bool(options.view_as(GoogleCloudOptions).template_location)
    dry_run = bool(options.view_as(TestOptions).dry_run)  # its value was checked by check_beam_flags
    if not template:  # read only: the folder holds nothing but an earlier run's files (a template runs later)
        if not dry_run or not fileio.is_remote(config.output):
            check_output_writable(config.output)  # on gs:// it writes a probe: not in a dry run
        check_output_folder(config.output)
    return Launch(options, config, prior, listing, template or dry_run)


def config_from_options(
    options: PipelineOptions, check_paths: bool = True, listing: Optional[fileio.InputListing] = None
) -> JobConfig:
    """Validate the flags into a JobConfig; raises ConfigError naming the first bad flag. With
    `check_paths`, also what the flags point at (Dataflow's credentials, the inputs and their
    fields); `listing`: where the inputs' listings are kept, to list each input pattern only once."""
    check_flags(options)
    config = build_config(options)
    check_config(config, options)
    if check_paths:
        check_dataflow_ready(options)
        check_inputs("--text-input", config.text_inputs, listing)
        check_inputs("--image-input", config.image_inputs, listing)
        check_inputs_outside_output(config, listing)
        check_input_fields(config, listing)
    return config


# ---- 1. the flags ---------------------------------------------------------------------------------


def check_unknown_flags(argv: Sequence[str]) -> None:
    """Refuse flags that neither this job nor Beam knows (Beam alone would only log and drop them)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(argv))
    flags = [a for a in unknown if a.startswith("--")]
    if flags:
        raise ConfigError(f"unknown flag {flags[0].split('=')[0]!r} (see `python -m pipeline run --help`)")
    if unknown:  # a value no flag takes: most often an unquoted glob that the shell expanded
        stray = unknown[0]
        position = list(argv).index(stray)
        previous = next((a.split("=")[0] for a in reversed(list(argv)[:position]) if a.startswith("-")), None)
        after = f" after {previous}" if previous else ""
        folder, ext = os.path.dirname(stray) or ".", os.path.splitext(stray)[1]
        hint = (
            f"; {len(unknown)} extra value(s): an unquoted glob is expanded by the shell into many files, "
            f"so quote it, e.g. {previous or '--image-input'} '{folder}/*{ext}'"
        )
        raise ConfigError(f"unexpected argument {stray!r}{after} (each flag takes one value){hint}")


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value}")


def check_flags(options: PipelineOptions) -> None:
    """The job's flags, each on its own and in combination (before anything is built or touched)."""
    inputs, text, image = (options.view_as(v) for v in (InputOptions, TextModelOptions, ImageModelOptions))
    output, run = options.view_as(OutputOptions), options.view_as(RunOptions)
    if not output.output:
        raise ConfigError("--output is required (a local folder or gs:// path)")
    check_beam_flags(options)
    check_remote_paths(options)
    text_inputs, image_inputs = inputs.text_input or (), inputs.image_input or ()
    if not text_inputs and not image_inputs:
        raise ConfigError("give --text-input (with --text-model) and/or --image-input (with --image-model)")
    if text_inputs and not text.text_model:
        raise ConfigError("--text-input needs --text-model (a .keras file made by `train-text`)")
    if text.text_model and not text_inputs:
        raise ConfigError("--text-model is set but no --text-input was given")
    if image_inputs and not image.image_model:
        raise ConfigError("--image-input needs --image-model (a network name or a .keras classifier)")
    if image.image_model and not image_inputs:
        raise ConfigError("--image-model is set but no --image-input was given")
    if run.max_failed is not None and run.max_failed < 0:
        raise ConfigError(f"--max-failed must be 0 or more, got {run.max_failed}")
    views = {"storage_timeout": run, "text_batch_size": text, "image_batch_size": image, "decode_threads": image}
    views.update(image_size=image, max_image_pixels=inputs, max_image_bytes=inputs, max_text_bytes=inputs)
    views.update(read_split_bytes=inputs)
    for name in (
        "storage_timeout",
        "text_batch_size",
        "image_batch_size",
        "max_image_pixels",
        "max_image_bytes",
        "decode_threads",
        "image_size",
        "max_text_bytes",
        "read_split_bytes",
    ):
        _positive("--" + name.replace("_", "-"), getattr(views[name], name))
    for flag, value, maximum in (
        ("--text-batch-size", text.text_batch_size, MAX_TEXT_BATCH_SIZE),
        ("--image-batch-size", image.image_batch_size, MAX_IMAGE_BATCH_SIZE),
        ("--decode-threads", image.decode_threads, MAX_DECODE_THREADS),
    ):
        if value is not None and value > maximum:
            raise ConfigError(
                f"{flag} {value:,}: the maximum is {maximum:,} (a batch, or a batch per thread, is held in memory whole)"
            )
    fileio.bound_storage_retries(run.storage_timeout)  # the launch's own gs:// calls (listing, probes) obey it too
    if image.image_alpha is not None and image.image_alpha <= 0:
        raise ConfigError(f"--image-alpha must be positive, got {image.image_alpha}")
    if inputs.text_encoding:
        try:
            codecs.lookup(inputs.text_encoding)
        except LookupError:
            raise ConfigError(f"--text-encoding {inputs.text_encoding!r}: unknown encoding") from None
    passthrough = parse_passthrough(output.passthrough)
    reserved = reserved_output_columns()
    for name in passthrough:
        if name in reserved:
            raise ConfigError(
                f"--passthrough {name!r}: clashes with an output column of the same name ({', '.join(sorted(reserved))})"
            )
    if len(set(passthrough)) != len(passthrough):
        raise ConfigError(f"--passthrough {output.passthrough!r}: names a column twice")
    if image.image_model:
        is_network = image.image_model in NETWORKS
        if not is_network and not keras_file(image.image_model):
            close = [n for n in NETWORKS if n.lower() == image.image_model.lower()]
            hint = f" (did you mean {close[0]}?)" if close else f"; expected a .keras file or one of: {', '.join(NETWORKS)}"
            raise ConfigError(f"--image-model {image.image_model!r}: unknown network{hint}")
        if not is_network:
            if image.image_alpha is not None or image.image_size is not None:
                raise ConfigError("--image-alpha/--image-size apply to a named network, not to a .keras model")
            if image.image_weights not in ("imagenet", None):
                raise ConfigError(f"--image-weights {image.image_weights!r}: applies to a named network, not to a .keras model")
        elif image.image_layer:
            raise ConfigError("--image-layer applies to a .keras classifier, not to a named network")
        if image.image_precision == "bf16" and image.image_backend == "tensorflow":
            raise ConfigError("--image-precision bf16 needs --image-backend openvino (or auto); TensorFlow runs f32")
    parse_failed_fraction(run.max_failed_fraction)  # ConfigError naming the flag


def _known_runner(name: str) -> bool:
    """Whether Beam's `create_runner` would find a runner of this name (as it looks names up)."""
    from apache_beam.options.pipeline_options import StandardOptions

    known = {path.rsplit(".", 1)[-1].lower() for path in StandardOptions.ALL_KNOWN_RUNNERS}
    return "." in name or name.lower() in known or name.lower() + "runner" in known


def check_beam_flags(options: PipelineOptions) -> None:
    """Beam flags this job passes through whose bad values Beam would only crash on, mid-launch
    (`--direct_num_workers -1`: an IndexError; `--runner Bogus`: a ValueError after the output
    folder was claimed; `--dry_run no`, which Beam takes as true): ConfigError naming the flag.
    Values argparse already refuses (a word for a number, an unknown --direct_running_mode) exit 2 there."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions, TestOptions

    workers = options.view_as(DirectOptions).direct_num_workers
    if workers is not None and workers < 0:
        raise ConfigError(f"--direct_num_workers {workers}: must be 0 (one worker per CPU) or a positive number")
    runner = options.view_as(StandardOptions).runner
    if isinstance(runner, str) and runner and not _known_runner(runner):
        raise ConfigError(
            f"--runner {runner!r}: unknown runner; DirectRunner (this machine, the default) or DataflowRunner (Google Cloud)"
        )
    dry_run = options.view_as(TestOptions).dry_run
    if dry_run not in (False, None) and str(dry_run).strip().lower() not in ("true", "1", "yes"):
        raise ConfigError(f"--dry_run {dry_run!r}: Beam takes any value as true; give --dry_run=true, or leave the flag out")


def check_remote_paths(options: PipelineOptions) -> None:
    """With `--runner DataflowRunner`, refuse every local path: workers on Google Cloud cannot read this machine.

    Raises ConfigError naming the first local path's flag (before anything is staged or submitted).
    """
    if not is_dataflow_runner(options):
        return
    inputs, text, image = (options.view_as(v) for v in (InputOptions, TextModelOptions, ImageModelOptions))
    gcp = options.view_as(GoogleCloudOptions)
    checks = [
        ("--output", [options.view_as(OutputOptions).output]),
        ("--text-input", inputs.text_input or []),
        ("--text-model", [text.text_model]),
        ("--image-input", inputs.image_input or []),
        ("--image-model", [keras_file(image.image_model)]),
        ("--image-weights", [weights_path(image.image_weights)]),
        ("--incremental-from", split_folders(options.view_as(RunOptions).incremental_from)),
        ("--temp_location", [gcp.temp_location]),
        ("--staging_location", [gcp.staging_location]),
    ]
    for flag, values in checks:
        for value in values:
            if value and not fileio.is_remote(value):
                raise ConfigError(
                    f"{flag} {value!r}: a local path, but --runner {runner_name(options)} runs on Google Cloud workers "
                    "that cannot read this machine; copy it to Cloud Storage and give its gs:// path"
                )


def check_config(config: JobConfig, options: PipelineOptions) -> None:
    """The built config as a whole: path schemes, --incremental-from against --output, --carry-over, BigQuery."""
    image = options.view_as(ImageModelOptions)
    paths = [
        ("--output", config.output),
        ("--text-model", options.view_as(TextModelOptions).text_model),
        ("--image-model", image.image_model),
        ("--image-weights", image.image_weights),
    ]
    paths += [("--text-input", p) for p in config.text_inputs] + [("--image-input", p) for p in config.image_inputs]
    paths += [("--incremental-from", p) for p in config.incremental_from]
    for flag, path in paths:
        try:
            fileio.check_scheme(path or "", flag)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for earlier in config.incremental_from:  # by real path: a "latest" symlink to --output is --output
        if same_path(earlier, config.output):
            raise ConfigError(
                f"--incremental-from {earlier!r}: is the --output of this run ({config.output!r}), which a run clears "
                "before it writes; give the earlier run's own folder and a new --output (one output folder per run)"
            )
    if config.carry_over and not config.incremental_from:
        raise ConfigError(
            "--carry-over: copies the unchanged records of an earlier run; give that run with --incremental-from DIR"
        )
    if config.bigquery_table:  # PROJECT:DATASET.TABLE, and a gs:// temp location for the load files
        from transforms.sinks.bigquery import BigQueryTableError, check_sink

        try:
            check_sink(config.bigquery_table, options.view_as(GoogleCloudOptions).temp_location)
        except BigQueryTableError as exc:
            raise ConfigError(str(exc)) from None


def reserved_output_columns() -> frozenset[str]:
    """The column names a `--passthrough` field may not take: every column the job itself writes to
    `text/` or `image/`, taken from the output schema (`transforms.records.embedding_schema`), with
    `embedded_run_id` (a carry-over run's provenance; a passthrough column of that name in an earlier
    run would be read as provenance by a later --carry-over run). `text` is allowed: the embedded text,
    stored beside its embedding (an image manifest's `text` column for images)."""
    return frozenset(name for modality in (TEXT, IMAGE) for name in embedding_schema(modality, 1, provenance=True).names) - {
        "text"
    }


# ---- 2. the environment ---------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_logger(name: str):
    """google.auth logs a warning per failed lookup (the GCE metadata server, ...): the check says it in one line."""
    logger = logging.getLogger(name)
    previous = logger.level
    if not logger.isEnabledFor(logging.INFO):  # --verbose keeps them
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _default_credentials(timeout: float) -> Optional[str]:
    """Why google.auth finds no credentials (None when it finds some), looked up once, no retries, in
    at most `timeout` seconds (off Google Cloud the lookup ends by pinging the metadata server)."""
    found: dict = {}

    def look_up() -> None:
        try:
            import google.auth

            found["credentials"] = google.auth.default()[0]
        except Exception as exc:  # noqa: BLE001 - DefaultCredentialsError, a bad key file
            found["error"] = exc

    with _quiet_logger("google.auth"):
        thread = threading.Thread(target=look_up, name="credentials-check", daemon=True)
        thread.start()
        thread.join(timeout)
    if thread.is_alive():
        return f"looking them up took over {timeout:g} s"
    if "error" in found:
        error = found["error"]
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return first if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") else "none found"
    return None


def check_dataflow_ready(options: PipelineOptions, timeout: float = CREDENTIALS_TIMEOUT) -> None:
    """With Dataflow: --project, --region and a gs:// --temp_location given, and Google Cloud
    credentials found; checked before anything is read or staged (ConfigError naming what is missing,
    instead of Beam's retried credential errors and a storage timeout a minute later)."""
    if not is_dataflow_runner(options):
        return
    gcp = options.view_as(GoogleCloudOptions)
    runner = runner_name(options)
    missing = [flag for flag, value in (("--project", gcp.project), ("--region", gcp.region)) if not value]
    if not gcp.temp_location:
        missing.append("--temp_location")
    if missing:
        raise ConfigError(
            f"--runner {runner} needs {', '.join(missing)} (e.g. --project my-project --region europe-west1 "
            "--temp_location gs://my-bucket/tmp)"
        )
    for flag, value in (("--temp_location", gcp.temp_location), ("--staging_location", gcp.staging_location)):
        if value and not value.startswith("gs://"):
            raise ConfigError(f"{flag} {value!r}: --runner {runner} needs a gs:// folder")
    why = _default_credentials(timeout)
    if why is not None:
        raise ConfigError(
            f"--runner {runner}: no Google Cloud credentials ({why}); run `gcloud auth application-default login`, "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
        )


def check_inputs(flag: str, patterns: Sequence[str], listing: Optional[fileio.InputListing] = None) -> None:
    """Every input pattern lists and matches something. An `--image-input` folder is a folder of
    images and must hold one (`check_image_folder`). A local `--text-input` folder named as it is
    (no glob) is refused: a folder is not a file to read, and reading all of it is what `DIR/**` says. A pattern
    with glob characters that names an existing file (`meta/[x].jpg`) is that file
    (`fileio.match_files`), unless as a glob it also matches other files: then it is refused as
    ambiguous. Storage that stays unreachable is StorageUnreachable (exit 1), not a bad flag."""
    listing = fileio.InputListing() if listing is None else listing
    for pattern in patterns:
        if flag == "--image-input" and fileio.is_folder(pattern):
            check_image_folder(pattern, listing)
            continue
        if not fileio.is_remote(pattern) and not fileio.has_glob(pattern) and os.path.isdir(pattern):
            raise ConfigError(
                f"{flag} {pattern!r}: is a folder, not a file; give a glob of the files to read, "
                f"e.g. '{pattern.rstrip('/')}/**' (every file below it) or '{pattern.rstrip('/')}/*.jsonl'"
            )
        others = fileio.glob_also_matches(pattern)
        if others:
            raise ConfigError(
                f"{flag} {pattern!r}: ambiguous: names the file {os.path.basename(pattern)!r} but, as a glob, also "
                f"matches {len(others)} other file(s) (e.g. {others[0]!r}); rename the file or name the other files without glob characters"
            )
        try:
            matched = listing.files(pattern)
        except Exception as exc:  # noqa: BLE001 - bucket missing, no permission
            raise _listing_failed(flag, pattern, exc) from exc
        if not matched:
            raise ConfigError(f"{flag} {pattern!r}: matches no file")


def _listing_failed(flag: str, what: str, exc: Exception) -> Exception:
    """The error to raise when listing `what` (a pattern or folder given to `flag`) failed: storage
    that kept failing transiently is StorageUnreachable (exit 1, nothing started), anything else
    (bucket missing, no permission, a bad path) a ConfigError naming the flag (exit 2)."""
    if fileio.is_transient_storage_error(exc):
        return StorageUnreachable(
            f"storage unreachable: {flag} {what!r} could not be listed: gs:// calls kept failing "
            f"for {fileio.storage_timeout():g} s (--storage-timeout); nothing was started"
        )
    return ConfigError(f"{flag} {what!r}: cannot list ({type(exc).__name__}: {exc})")


def check_image_folder(folder: str, listing: fileio.InputListing) -> None:
    """An `--image-input` folder holds at least one image (else ConfigError naming the flag and the
    folder, before any model loads); the files in it that are not images are named in the log."""
    from transforms.io.image_read import IMAGE_EXTENSIONS, image_folder_files

    try:
        images, others = image_folder_files(folder, listing)
    except Exception as exc:  # noqa: BLE001 - bucket missing, no permission
        raise _listing_failed("--image-input", folder, exc) from exc
    if not images:
        found = f"its {len(others)} file(s) (e.g. {os.path.basename(others[0])!r}) are not images" if others else "it is empty"
        raise ConfigError(
            f"--image-input {folder!r}: a folder with no images below it ({found}; images end in {', '.join(IMAGE_EXTENSIONS)})"
        )
    if others:
        logging.getLogger(__name__).info(
            "--image-input %s: reading the %d image(s) below it; %d other file(s) are not images and are not read (e.g. %s)",
            folder,
            len(images),
            len(others),
            others[0],
        )


def real_path(path: str) -> str:
    """A path as compared for overlaps: locally its real path (symlinks and `..` resolved, even where
    the last parts do not exist yet); a URI normalised as a string (`gs://b/x/../y/` -> `gs://b/y`)."""
    if fileio.is_remote(path):
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{posixpath.normpath(rest)}".rstrip("/")
    return os.path.realpath(os.path.expanduser(path))


def same_path(a: str, b: str) -> bool:
    """Whether two paths name the same place (`real_path`)."""
    return real_path(a) == real_path(b)


def is_inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (`real_path` on both)."""
    return _under(real_path(path), real_path(folder))


def _under(real: str, real_folder: str) -> bool:
    return real == real_folder or real.startswith(real_folder.rstrip("/") + "/")


class RealPaths:
    """`real_path` for many files, exact and cheaper: each folder's real path is resolved once.

    `os.path.realpath` lstat-s every component of a path (and of a symlink's target) on every call:
    0.045 ms a symlinked file here, 1.5 % of an image's CPU at launch. The real path of `d/name`
    when `name` is not a symlink is `realpath(d)/name`, so a file costs one `lstat` (and for a
    symlink, a `readlink` and the same step on its target) with `realpath(d)` kept per folder. A
    path or link target with `..` parts, a missing file or a long chain of links goes to
    `os.path.realpath`."""

    _MAX_LINKS = 40

    def __init__(self):
        self._folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if fileio.is_remote(path) or ".." in path.split("/"):
            return real_path(path)
        return self._local(os.path.abspath(os.path.expanduser(path)), path, 0)

    def _folder(self, folder: str) -> str:
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder)
        return real

    def _local(self, path: str, given: str, links: int) -> str:
        """The real path of the absolute, normalised `path` (`given`, as listed, for the fallback)."""
        folder, name = os.path.split(path)
        if links > self._MAX_LINKS or not name:
            return real_path(given)
        try:
            mode = os.lstat(path).st_mode
            target = os.readlink(path) if stat.S_ISLNK(mode) else None
        except OSError:  # gone, no permission: as os.path.realpath resolves it
            return real_path(given)
        real_folder = self._folder(folder)
        if target is None:
            return os.path.join(real_folder, name)
        if ".." in target.split("/"):  # `..` after a link is not lexical
            return real_path(given)
        return self._local(os.path.normpath(os.path.join(real_folder, target)), given, links + 1)


# Files the job writes in --output, to test an input glob against (`check_inputs_outside_output`).
_OUTPUT_SAMPLES = (
    "_RUNNING.json",
    "_MANIFEST.json",
    "text/part-00000-of-00001.parquet",
    "text/carried-00000-of-00001.parquet",
    "image/part-00000-of-00001.parquet",
    "errors/part-00000-of-00001.parquet",
    "text/beam-temp-part-0/0",
)


def _real_pattern(pattern: str) -> str:
    """A glob with its fixed folder (`fileio.glob_root`) made real (`real_path`), its wildcards kept."""
    root = fileio.glob_root(pattern)
    if not fileio.has_glob(pattern) or not root:
        return real_path(pattern)
    return real_path(root) + pattern[len(root) :]


def check_inputs_outside_output(config: JobConfig, listing: Optional[fileio.InputListing] = None) -> None:
    """Refuse inputs inside `--output` and an input glob that reaches into `--output` (ConfigError
    naming both flags): a run clears the folder before it reads, and would read its own files.

    Paths are compared by real path (symlinks, `..`), gs:// by normalised string: a listed input
    file inside the output, an input glob whose fixed folder is inside it, or a glob that would match
    a file the job writes there (`d/**` with `--output d/out`)."""
    from apache_beam.io.filesystem import FileSystem

    listing = fileio.InputListing() if listing is None else listing
    output = real_path(config.output)
    real = RealPaths()  # every listed file by its real path, each folder resolved once
    samples = [f"{output}/{name}" for name in _OUTPUT_SAMPLES]
    for flag, patterns in (("--text-input", config.text_inputs), ("--image-input", config.image_inputs)):
        for given in patterns:
            pattern = fileio.folder_glob(given) if flag == "--image-input" and fileio.is_folder(given) else given
            inside = is_inside(fileio.glob_root(pattern) or pattern, output) if fileio.has_glob(pattern) else False
            inside = inside or any(_under(real(path), output) for path, _ in listing.files(given))
            if inside:
                raise ConfigError(
                    f"{flag} {given!r}: reads inside --output {config.output!r}, the folder this run clears and "
                    "writes; move the inputs out of it or choose another --output"
                )
            regex = re.compile(FileSystem.translate_pattern(_real_pattern(pattern)))
            if any(regex.match(sample) for sample in samples):
                raise ConfigError(
                    f"{flag} {given!r}: would also read this run's own files, as --output {config.output!r} lies "
                    f"inside that {'glob' if pattern == given else 'folder'}; choose an --output outside it, or a glob that does not reach it"
                )


def _sample_fields(path: str, fmt: str, encoding: str) -> Optional[list[str]]:
    """The field names of the first `SAMPLE_RECORDS` records within the first `SAMPLE_BYTES` of a file
    (decompressed), in order of first sight; for Parquet the schema's columns (from the footer).
    None when nothing could be learned (a file that does not open or parse, no whole record in the
    sample): the run's dead letters then say why."""
    from transforms.io.text_formats import iter_records

    try:
        with fileio.open_input(path) as handle:
            if fmt == "parquet":
                if not path.lower().endswith(".parquet"):
                    return None  # a compressed Parquet file: only a whole read would tell
                import pyarrow.parquet as pq

                return list(pq.ParquetFile(handle).schema_arrow.names)
            head = handle.read(SAMPLE_BYTES)  # bounded: a file of one endless line is read no further
            if len(head) == SAMPLE_BYTES:
                head = head[: head.rfind(b"\n") + 1]  # whole lines only
        fields: dict[str, None] = {}
        records = 0
        for parsed in itertools.islice(iter_records(io.BytesIO(head), fmt, encoding), SAMPLE_RECORDS * 5):
            if parsed.record is not None:
                fields.update(dict.fromkeys(parsed.record))
                records += 1
                if records >= SAMPLE_RECORDS:
                    break
        return list(fields) if records else None
    except Exception:  # noqa: BLE001 - unreadable here is unreadable in the run: a dead letter says why
        return None


def _first_file(pattern: str, listing: fileio.InputListing) -> Optional[str]:
    """The first non-empty file an input pattern matches (in listing order)."""
    return next((path for path, size in sorted(listing.files(pattern)) if size), None)


def _shown(fields: Sequence[str], limit: int = 20) -> str:
    return ", ".join(fields[:limit]) + (f", ... ({len(fields)} fields)" if len(fields) > limit else "")


def check_input_fields(config: JobConfig, listing: Optional[fileio.InputListing] = None) -> None:
    """The fields the flags name, against the first records of the first file of each input (text
    files other than plain lines, image manifests): a field that none of them has would make every
    record a dead letter (or, for --passthrough, an empty column), found only after a full pass; it
    stops the run here, naming the file and the fields it has. A field some sampled records lack is
    fine (those records become dead letters). `--text-id-field`/`--image-id-field` are checked when
    given (records without the default `id` get file:line ids); `--passthrough` must be in some
    sampled input (`text` is the embedded text itself in a text run)."""
    from transforms.io.image_read import is_manifest
    from transforms.io.text_formats import detect_format

    listing = fileio.InputListing() if listing is None else listing
    sampled: list[tuple[str, list[str]]] = []

    def sample(pattern: str, encoding: str) -> Optional[tuple[str, list[str]]]:
        path = _first_file(pattern, listing)
        fmt = detect_format(path) if path else "lines"
        fields = _sample_fields(path, fmt, encoding) if fmt != "lines" else None
        if fields is None:
            return None
        sampled.append((path, fields))
        return path, fields

    def require(flag: str, field: Optional[str], found: Optional[tuple[str, list[str]]]) -> None:
        if field and found and field not in found[1]:
            raise ConfigError(f"{flag} {field!r}: no record of {found[0]} has {field!r} (fields: {_shown(found[1])})")

    for pattern in config.text_inputs:
        found = sample(pattern, config.text_encoding)
        require("--text-field", config.text_field, found)
        if config.text_id_field != declared_default("text_id_field"):
            require("--text-id-field", config.text_id_field, found)
    for pattern in filter(is_manifest, config.image_inputs):
        found = sample(pattern, "utf-8")
        require("--image-uri-field", config.image_uri_field, found)
        require("--image-id-field", config.image_id_field, found)
    if not sampled:
        return
    passthrough = config.text_read_passthrough if config.has_text else config.passthrough
    for name in passthrough:
        if not any(name in fields for _, fields in sampled):
            files = " or ".join(path for path, _ in sampled[:3]) + (" or ..." if len(sampled) > 3 else "")
            union = list(dict.fromkeys(f for _, fields in sampled for f in fields))
            raise ConfigError(f"--passthrough {name!r}: no record of {files} has {name!r} (fields: {_shown(union)})")


# ---- 3. the earlier runs and the output folder ----------------------------------------------------


def _failed_prior_note(flag: str, manifest: dict, config: JobConfig) -> Optional[str]:
    """For an earlier run that failed its checks: ConfigError when it failed on a modality this run embeds
    and --allow-failed is off; otherwise the note line to print (None for a complete run). A modality
    that is complete in the failed run (images fine, text over its budget) is used without the flag."""
    if manifest.get("status") != "failed":
        return None
    embeds = [
        m for m in (TEXT, IMAGE) if m in manifest.get("models", {}) and (config.has_text if m == TEXT else config.has_images)
    ]
    failed = [m for m in embeds if modality_status(manifest, m)["status"] == "failed"]
    run_name = f"run {manifest.get('run_id')}"
    if not failed:
        used = " and ".join(embeds) or "none of its"
        return (
            f"note: {flag}: {run_name} failed ({failure_summary(manifest)}), but its {used} embeddings are complete: using them"
        )
    if not config.allow_failed:
        raise ConfigError(
            f"{flag}: {run_name} failed its checks ({failure_summary(manifest)}), so its {' and '.join(failed)} embeddings "
            "are incomplete; pass --allow-failed to use them anyway (records missing there are embedded again), "
            "or give the folder of a run that completed"
        )
    return f"note: {flag}: {run_name} failed ({failure_summary(manifest)}): using its incomplete {' and '.join(failed)} embeddings (--allow-failed)"


def prior_embedding_files(config: JobConfig) -> dict[str, list[str]]:
    """The Parquet files of the earlier runs named by --incremental-from, by modality.

    Checked at launch, before the output folder is claimed: each folder must hold a finished run
    whose manifest reads and whose listed files all exist; otherwise a ConfigError (exit 2) says
    what is wrong with that folder (a rerun of this command would not help)."""
    files: dict[str, list[str]] = {}
    for folder in config.incremental_from:
        flag = f"--incremental-from {folder!r}"
        manifest_path = fileio.join(folder, MANIFEST_NAME)
        try:
            lacks = run_folder_lacks(folder)
            if lacks == "folder":
                raise ConfigError(f"{flag}: no such folder; give the output folder of an earlier, finished run")
            if lacks:
                raise ConfigError(
                    f"{flag}: has no {MANIFEST_NAME}, so it is not a finished run of this job (that run did not "
                    "finish, or this is not a run's output folder); give the folder of a finished run"
                )
            try:
                manifest = json.loads(fileio.read_bytes(manifest_path))
                listed = {m: run_files(folder, manifest, m) for m in (TEXT, IMAGE)}
            except (ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{flag}: its {MANIFEST_NAME} cannot be read ({type(exc).__name__}: {exc}); give the folder of a finished run"
                ) from None
            note = _failed_prior_note(flag, manifest, config)
            if note:
                print(note, file=sys.stderr)
            wanted = [path for paths in listed.values() for path in paths]
            present = set(fileio.match_paths(sorted({p.rsplit("/", 1)[0] + "/*" for p in wanted})))  # a listing per folder
            missing = [path for path in wanted if path not in present]
            if missing:
                raise ConfigError(
                    f"{flag}: {len(missing)} of the {len(wanted)} embedding file(s) its manifest lists are missing "
                    f"(e.g. {missing[0]!r}); that run's output is incomplete: give a complete run's folder"
                )
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - storage unreachable, no permission
            raise ConfigError(f"{flag}: cannot be read ({type(exc).__name__}: {exc})") from exc
        for modality, paths in listed.items():
            files.setdefault(modality, []).extend(paths)
    return files


def check_output_writable(output: str) -> None:
    """Fail early, naming --output, when the run could not write its results. Locally the nearest
    existing folder must be a writable folder in which a folder can be made (a probe folder, removed
    at once: permissions alone do not tell a read-only or virtual file system such as /proc, and
    root passes every permission check); on gs:// a probe object is written and deleted."""
    if not fileio.is_remote(output):
        existing = os.path.abspath(output)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ConfigError(f"--output {output!r}: {existing!r} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"--output {output!r}: not writable (no write permission on {existing!r})")
        probe = os.path.join(existing, f"{WRITE_PROBE_PREFIX}{uuid.uuid4().hex}")
        try:
            os.mkdir(probe)
        except OSError as exc:
            raise ConfigError(f"--output {output!r}: cannot write in {existing!r} ({exc.strerror or exc})") from None
        os.rmdir(probe)
        return
    from apache_beam.io.filesystems import FileSystems

    probe = fileio.join(output, f"{WRITE_PROBE_PREFIX}{uuid.uuid4().hex}")
    try:
        fileio.write_bytes(probe, b"ok")
        FileSystems.delete([probe])
    except Exception as exc:  # noqa: BLE001
        if fileio.is_transient_storage_error(exc):
            detail = exc if isinstance(exc, fileio.StorageUnavailable) else fileio.storage_outage(probe, exc)
            raise StorageUnreachable(f"--output {output!r}: {detail}; nothing was started") from exc
        raise ConfigError(f"--output {output!r}: not writable ({type(exc).__name__}: {exc})") from exc


def check_output_folder(output: str) -> None:
    """--output holds nothing but an earlier run's files (`transforms.sinks.folder.check_output_folder`),
    as a ConfigError naming the foreign files or the unreadable manifest."""
    from transforms.sinks.folder import ForeignFilesError, UnreadableManifestError
    from transforms.sinks.folder import check_output_folder as check_folder

    try:
        check_folder(output)
    except (ForeignFilesError, UnreadableManifestError) as exc:
        raise ConfigError(str(exc)) from None
