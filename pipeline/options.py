"""The `run` command's options: a Beam `PipelineOptions` subclass, validated once into a frozen config.

Every flag is accepted with dashes (`--text-input`) and with underscores (`--text_input`): Beam
re-creates options on workers and in templates from their underscore names. `--help` shows the
dash spelling only, in groups (`FLAG_GROUPS`): a flag's group comes from `_GROUP_OF` or, failing
that, from its name (`text_*` -> Text, `image_*` -> Images, anything else -> Behaviour), so a new
flag needs nothing but its one `_flag(...)` line.

Paths are made absolute (local ones) when the config is built, so that the manifest records
paths the tools can use from any folder; with `--runner DataflowRunner` every path must be a
URI (gs://...), checked before anything is submitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import posixpath
import re
import uuid
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.embed.backends import BACKENDS, PRECISIONS
from transforms.embed.decode import DECODERS, DEFAULT_MAX_IMAGE_PIXELS
from transforms.embed.dofns import MAX_DECODE_THREADS
from transforms.embed.models import MAX_IMAGE_BATCH_SIZE, MAX_TEXT_BATCH_SIZE, NETWORKS, ImageModelSpec, TextModelSpec
from transforms.errors import DataError, UserError
from transforms.io import fileio
from transforms.io.splits import DEFAULT_MAX_TEXT_BYTES, DEFAULT_SPLIT_BYTES
from transforms.records import IMAGE, TEXT, embedding_schema
from transforms.sinks.manifest import DEFAULT_MAX_FAILED_FRACTION

__all__ = [
    "EmbeddingJobOptions",
    "JobConfig",
    "ConfigError",
    "StorageUnreachable",
    "FLAG_GROUPS",
    "flag_group",
    "config_from_options",
    "check_output_writable",
    "check_unknown_flags",
    "check_remote_paths",
    "check_inputs_outside_output",
    "reserved_output_columns",
    "real_path",
    "same_path",
    "is_inside",
    "check_beam_flags",
]


class ConfigError(UserError, ValueError):
    """A flag whose value cannot work. Raised before the pipeline starts; the message names the flag."""


class StorageUnreachable(DataError, ConnectionError):
    """gs:// storage that the launcher's own checks (listing the inputs, the write probe of --output)
    could not reach within --storage-timeout: not a bad flag (exit 1, like an outage mid-run)."""


def parse_bool(value: str) -> bool:
    """A boolean flag's value: `--normalize`, `--normalize=true` and `--normalize=false` all work
    (Dataflow flex templates pass every parameter as --name=value)."""
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# Help groups of `run --help`, in the order shown: key -> (title, description).
FLAG_GROUPS = {
    "output": ("Output", "Where the results go and what they hold."),
    "text": ("Text", "Text records, embedded by a model made with `train-text`."),
    "images": ("Images", "Image files (globs) or manifests, embedded by a headless CNN."),
    "behaviour": ("Behaviour", None),
}
# Flags whose group does not follow from their name.
_GROUP_OF = {
    "output": "output",
    "passthrough": "output",
    "normalize": "output",
    "run_id": "output",
    "max_image_pixels": "images",
    "max_image_bytes": "images",
    "decode_threads": "images",
}
# Placeholders shown in --help (argparse would show the upper-cased name).
_METAVARS = {
    "output": "DIR",
    "text_input": "GLOB",
    "image_input": "GLOB_OR_MANIFEST",
    "text_model": "MODEL",
    "text_layer": "LAYER",
    "image_model": "NETWORK_OR_MODEL.keras",
    "image_weights": "WEIGHTS",
    "incremental_from": "DIR",
    "text_field": "FIELD",
    "text_id_field": "FIELD",
    "image_uri_field": "FIELD",
    "image_id_field": "FIELD",
    "text_encoding": "ENCODING",
    "passthrough": "FIELD,...",
    "image_layer": "LAYER",
    "image_preprocess": "NETWORK",
    "run_id": "ID",
    "image_size": "PIXELS",
    "image_alpha": "ALPHA",
    "max_image_pixels": "PIXELS",
    "max_image_bytes": "BYTES",
    "decode_threads": "N",
    "text_batch_size": "N",
    "image_batch_size": "N",
}


def flag_group(dest: str) -> str:
    """The help group (a key of FLAG_GROUPS) of a `run` flag, by its dest name."""
    if dest in _GROUP_OF:
        return _GROUP_OF[dest]
    if dest.startswith("text_"):
        return "text"
    if dest.startswith(("image_", "max_image_")):
        return "images"
    return "behaviour"


def _flag(parser, name: str, **kwargs) -> None:
    """Add one `run` flag, with dashes and with underscores; into its help group when `parser` has them."""
    dest = name.lstrip("-").replace("-", "_")
    spellings = [name] + ([f"--{dest}"] if "-" in name.lstrip("-") else [])
    if dest in _METAVARS and kwargs.get("action") in (None, "append"):
        kwargs.setdefault("metavar", _METAVARS[dest])
    groups = getattr(parser, "embedding_flag_groups", None)  # set by `pipeline.cli` for --help only
    target = groups[flag_group(dest)] if groups else parser
    target.add_argument(*spellings, dest=dest, **kwargs)


class EmbeddingJobOptions(PipelineOptions):
    """Flags of `python -m pipeline run` (Beam's own flags pass through beside them)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _flag(parser, "--output", help="Output folder (local or gs://): text/, image/, errors/ and _MANIFEST.json.")
        _flag(
            parser,
            "--bigquery-table",
            help="Also load the embeddings into BigQuery (PROJECT:DATASET.TABLE): text rows go to TABLE_text, image rows to TABLE_image (created if needed, appended to, embedding as ARRAY<FLOAT64>, with a run_id column); needs --temp_location gs://... Dead letters stay in errors/ (Parquet).",
        )
        # Text
        _flag(
            parser,
            "--text-input",
            action="append",
            help="Glob of text record files (JSONL, CSV, TSV, Parquet, plain lines). Repeatable.",
        )
        _flag(
            parser,
            "--text-model",
            help="The .keras model made by `train-text`, or any text encoder taking a batch of strings: a .keras model or a SavedModel directory (local or gs://).",
        )
        _flag(
            parser,
            "--text-layer",
            help="For another encoder: the layer (.keras) or serving-signature output (SavedModel) that is the embedding (default: text_embedding; a SavedModel's only float (batch, dim) output).",
        )
        _flag(parser, "--text-field", default="text", help="Field/column holding the text (default: text).")
        _flag(
            parser,
            "--text-id-field",
            default="id",
            help="Field/column holding the record id (default: id; file:line where absent).",
        )
        _flag(parser, "--text-encoding", default="utf-8", help="Encoding of text files (default: utf-8; e.g. cp1252).")
        _flag(
            parser,
            "--text-batch-size",
            type=int,
            default=1024,
            help=f"Texts per model call (default: 1024; at most {MAX_TEXT_BATCH_SIZE:,}).",
        )
        _flag(
            parser,
            "--max-text-bytes",
            type=int,
            default=DEFAULT_MAX_TEXT_BYTES,
            help="A text line (record) longer than this is a RecordTooLarge dead letter, skipped without being held (default: 10,485,760 = 10 MiB).",
        )
        _flag(
            parser,
            "--read-split-bytes",
            type=int,
            default=DEFAULT_SPLIT_BYTES,
            help="Large uncompressed text files and image manifests are read in ranges of about this many bytes, spread over workers (default: 67,108,864 = 64 MiB).",
        )
        # Images
        _flag(
            parser,
            "--image-input",
            action="append",
            help="Glob of image files, or a manifest (.csv, .jsonl, .parquet) with a uri column. Repeatable.",
        )
        _flag(parser, "--image-model", help=f"A Keras Applications network ({', '.join(NETWORKS)}) or a .keras classifier.")
        _flag(
            parser,
            "--image-weights",
            default="imagenet",
            help="imagenet (Keras download), none (random, seeded) or a weights file path (local or gs://).",
        )
        _flag(parser, "--image-size", type=int, help="Input size in pixels for a named network (default: the network's own).")
        _flag(parser, "--image-alpha", type=float, help="Width multiplier for MobileNet networks (e.g. 0.25).")
        _flag(
            parser,
            "--image-layer",
            help="For a .keras classifier: the layer whose output is the embedding (default: the one feeding the last layer).",
        )
        _flag(
            parser,
            "--image-preprocess",
            help="For a .keras classifier: apply this network's preprocess_input (default: none; the model gets 0..255 pixels).",
        )
        _flag(parser, "--image-uri-field", default="uri", help="Manifest column holding the image uri (default: uri).")
        _flag(parser, "--image-id-field", help="Manifest column holding the image id (default: the uri as written).")
        _flag(
            parser,
            "--image-batch-size",
            type=int,
            default=32,
            help=f"Images per model call (default: 32; at most {MAX_IMAGE_BATCH_SIZE:,}).",
        )
        _flag(
            parser,
            "--image-backend",
            default="auto",
            choices=BACKENDS,
            help="What runs the image network: openvino, tensorflow, or auto (default: OpenVINO where installed and the network converts, else TensorFlow; the manifest says which).",
        )
        _flag(
            parser,
            "--image-precision",
            default="f32",
            choices=PRECISIONS,
            help="f32 (default; OpenVINO matches TensorFlow to ~1e-6) or bf16 (OpenVINO only: faster on CPUs with bf16, embeddings move to cosine ~0.99; a different model_sha256).",
        )
        _flag(
            parser,
            "--image-decoder",
            default="pillow",
            choices=DECODERS,
            help="How images are decoded and resized: pillow (default) or opencv (the fast-decode extra: ~2x faster on JPEGs, pixels ~1/255 apart, embeddings cosine >= 0.99, a different model_sha256).",
        )
        _flag(
            parser,
            "--max-image-pixels",
            type=int,
            default=DEFAULT_MAX_IMAGE_PIXELS,
            help=f"Reject images declaring more pixels than this, before decoding (default: {DEFAULT_MAX_IMAGE_PIXELS:,}).",
        )
        _flag(
            parser,
            "--max-image-bytes",
            type=int,
            default=256 << 20,
            help="Image files larger than this are dead letters, never read whole (default: 268,435,456 = 256 MiB).",
        )
        _flag(
            parser,
            "--decode-threads",
            type=int,
            help=f"Threads decoding images per worker process (default: number of CPUs; at most {MAX_DECODE_THREADS}: each holds a batch).",
        )
        # Both
        _flag(
            parser,
            "--storage-timeout",
            type=int,
            default=45,
            help="Seconds one gs:// call keeps retrying transient errors (with backoff) before the run fails as storage unreachable (default: 45; with the 60 s request timeout a run fails within 2 minutes of losing its storage).",
        )
        _flag(
            parser, "--passthrough", default="", help="Comma-separated input fields copied to the output as strings (e.g. label)."
        )
        _flag(
            parser,
            "--normalize",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            metavar="true|false",
            help="L2-normalise embeddings.",
        )
        _flag(
            parser,
            "--unsafe-model-loading",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            metavar="true|false",
            help="Allow .keras models with custom Python code (only for files you trust).",
        )
        _flag(
            parser,
            "--max-failed-fraction",
            default="0.1",
            help="Failure budget: the run fails (exit 1, manifest status failed) when more than this fraction of a modality's records are dead letters; one number for both, or per modality as text=0.2,image=0.05 (default: 0.1).",
        )
        _flag(
            parser,
            "--max-failed",
            type=int,
            help="Failure budget as a count: the run fails when a modality has more dead letters than this (default: no limit; --max-failed-fraction still applies).",
        )
        _flag(
            parser,
            "--allow-duplicate-ids",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            metavar="true|false",
            help="Skip the duplicate-id check (by default, every record after the first with an id is a DuplicateId dead letter).",
        )
        _flag(
            parser,
            "--incremental-from",
            action="append",
            help="An earlier run's output folder (repeatable, or several separated by commas): records whose id, content_sha256 and model_sha256 match an embedding there are skipped.",
        )
        _flag(
            parser,
            "--allow-failed",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            metavar="true|false",
            help="With --incremental-from: use an earlier run that failed its checks on a modality this run embeds (its records missing there are embedded again); a modality that is complete in a failed run is used without it.",
        )
        _flag(
            parser,
            "--carry-over",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            metavar="true|false",
            help="With --incremental-from: also copy the earlier embeddings of the skipped (unchanged) text records into this run's output (no re-embedding), so the run folder is a complete snapshot of the current input, one row per record; rows say in which run they were embedded (embedded_run_id). Text and images.",
        )
        _flag(
            parser,
            "--detach",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            metavar="true|false",
            help="Submit the job and return without waiting (e.g. from a flex-template launcher); the pipeline still writes _MANIFEST.json when it finishes.",
        )
        _flag(
            parser,
            "--force-unlock",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            metavar="true|false",
            help="Start even though --output holds another run's _RUNNING.json marker (only once you know that run is dead; a marker of a dead process on this machine is replaced anyway).",
        )
        _flag(parser, "--run-id", help="An id for this run, recorded in the manifest (default: random).")


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Validated settings of one run."""

    output: str
    run_id: str
    text_inputs: tuple[str, ...] = ()
    text_model: Optional[TextModelSpec] = None
    text_field: str = "text"
    text_id_field: str = "id"
    text_encoding: str = "utf-8"
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    read_split_bytes: int = DEFAULT_SPLIT_BYTES
    image_inputs: tuple[str, ...] = ()
    image_model: Optional[ImageModelSpec] = None
    image_uri_field: str = "uri"
    image_id_field: Optional[str] = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = 256 << 20
    decode_threads: Optional[int] = None
    passthrough: tuple[str, ...] = ()
    normalize: bool = False
    allow_duplicate_ids: bool = False
    incremental_from: tuple[str, ...] = ()
    allow_failed: bool = False
    carry_over: bool = False
    detach: bool = False
    bigquery_table: Optional[str] = None
    max_failed_fraction: dict = dataclasses.field(default_factory=lambda: {TEXT: 0.1, IMAGE: 0.1})
    max_failed: Optional[int] = None
    storage_timeout: int = 45
    force_unlock: bool = False

    @property
    def has_text(self) -> bool:
        return bool(self.text_inputs)

    @property
    def has_images(self) -> bool:
        return bool(self.image_inputs)

    @property
    def text_read_passthrough(self) -> tuple[str, ...]:
        """The passthrough fields the text reader copies: `text` is the embedded text itself, always carried."""
        return tuple(name for name in self.passthrough if name != "text")

    def describe(self) -> dict:
        """The settings as plain JSON-able values, for the manifest."""
        return dataclasses.asdict(self)


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value}")


def _check_inputs(flag: str, patterns: Sequence[str], listing: Optional[fileio.InputListing] = None) -> None:
    """Every input pattern lists and matches something. A local folder named as it is (no glob) is
    refused: a folder is not a file to read, and reading all of it is what `DIR/**` says. A pattern
    with glob characters that names an existing file (`meta/[x].jpg`) is that file
    (`fileio.match_files`), unless as a glob it also matches other files: then it is refused as
    ambiguous. Storage that stays unreachable is StorageUnreachable (exit 1), not a bad flag."""
    listing = fileio.InputListing() if listing is None else listing
    for pattern in patterns:
        if not fileio.is_remote(pattern) and not fileio.has_glob(pattern) and os.path.isdir(pattern):
            example = "*.jpg" if flag == "--image-input" else "*.jsonl"
            raise ConfigError(
                f"{flag} {pattern!r}: is a folder, not a file; give a glob of the files to read, "
                f"e.g. '{pattern.rstrip('/')}/**' (every file below it) or '{pattern.rstrip('/')}/{example}'"
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
            if fileio.is_transient_storage_error(exc):
                raise StorageUnreachable(
                    f"storage unreachable: {flag} {pattern!r} could not be listed: gs:// calls kept failing "
                    f"for {fileio.storage_timeout():g} s (--storage-timeout); nothing was started"
                ) from exc
            raise ConfigError(f"{flag} {pattern!r}: cannot list ({type(exc).__name__}: {exc})") from exc
        if not matched:
            raise ConfigError(f"{flag} {pattern!r}: matches no file")


def parse_failed_fraction(value: str) -> dict[str, float]:
    """`--max-failed-fraction`: `0.2` (both modalities) or `text=0.2,image=0.05` -> {modality: fraction}."""
    fractions = {TEXT: DEFAULT_MAX_FAILED_FRACTION, IMAGE: DEFAULT_MAX_FAILED_FRACTION}
    for part in str(value).split(","):
        name, _, number = part.strip().rpartition("=")
        if name and name not in fractions:
            raise ConfigError(f"--max-failed-fraction {value!r}: unknown modality {name!r} (text or image)")
        try:
            fraction = float(number)
        except ValueError:
            raise ConfigError(f"--max-failed-fraction {value!r}: expected a number from 0 to 1, or text=F,image=F") from None
        if not 0 <= fraction <= 1:
            raise ConfigError(f"--max-failed-fraction {value!r}: {fraction:g} is not between 0 and 1")
        for modality in [name] if name else list(fractions):
            fractions[modality] = fraction
    return fractions


def check_output_writable(output: str) -> None:
    """Fail early, naming --output, when the run could not write its results (creates nothing locally)."""
    if not fileio.is_remote(output):
        existing = os.path.abspath(output)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ConfigError(f"--output {output!r}: {existing!r} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"--output {output!r}: not writable (no write permission on {existing!r})")
        return
    from apache_beam.io.filesystems import FileSystems

    probe = fileio.join(output, f".write-probe-{uuid.uuid4().hex}")
    try:
        fileio.write_bytes(probe, b"ok")
        FileSystems.delete([probe])
    except Exception as exc:  # noqa: BLE001
        if fileio.is_transient_storage_error(exc):
            detail = exc if isinstance(exc, fileio.StorageUnavailable) else fileio.storage_outage(probe, exc)
            raise StorageUnreachable(f"--output {output!r}: {detail}; nothing was started") from exc
        raise ConfigError(f"--output {output!r}: not writable ({type(exc).__name__}: {exc})") from exc


def _absolute(path: Optional[str]) -> Optional[str]:
    """A local path made absolute (`~` expanded, a trailing / kept); URIs (gs://...) and None unchanged."""
    if not path or fileio.is_remote(path):
        return path
    absolute = os.path.abspath(os.path.expanduser(path))
    return absolute + "/" if path.endswith(("/", os.sep)) and not absolute.endswith("/") else absolute


def _is_file_path(value: Optional[str], words: Sequence[str] = ()) -> bool:
    return bool(value) and value not in words


_DATAFLOW_RUNNERS = ("DataflowRunner", "dataflow")


def check_remote_paths(options: PipelineOptions) -> None:
    """With `--runner DataflowRunner`, refuse every local path: workers on Google Cloud cannot read this machine.

    Raises ConfigError naming the first local path's flag (before anything is staged or submitted).
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    if name not in _DATAFLOW_RUNNERS:
        return
    o = options.view_as(EmbeddingJobOptions)
    gcp = options.view_as(GoogleCloudOptions)
    image_model = o.image_model if (o.image_model or "").endswith((".keras", ".h5")) else None
    checks = [
        ("--output", [o.output]),
        ("--text-input", o.text_input or []),
        ("--text-model", [o.text_model]),
        ("--image-input", o.image_input or []),
        ("--image-model", [image_model]),
        ("--image-weights", [o.image_weights if _is_file_path(o.image_weights, ("imagenet", "none")) else None]),
        ("--incremental-from", split_folders(o.incremental_from)),
        ("--temp_location", [gcp.temp_location]),
        ("--staging_location", [gcp.staging_location]),
    ]
    for flag, values in checks:
        for value in values:
            if value and not fileio.is_remote(value):
                raise ConfigError(
                    f"{flag} {value!r}: a local path, but --runner {name} runs on Google Cloud workers that cannot "
                    "read this machine; copy it to Cloud Storage and give its gs:// path"
                )


def _known_runner(name: str) -> bool:
    """Whether Beam's `create_runner` would find a runner of this name (as it looks names up)."""
    from apache_beam.options.pipeline_options import StandardOptions

    known = {path.rsplit(".", 1)[-1].lower() for path in StandardOptions.ALL_KNOWN_RUNNERS}
    return "." in name or name.lower() in known or name.lower() + "runner" in known


def check_beam_flags(options: PipelineOptions) -> None:
    """Beam flags this job passes through whose bad values Beam would only crash on, mid-launch
    (`--direct_num_workers -1`: an IndexError; `--runner Bogus`: a ValueError after the output
    folder was claimed): ConfigError naming the flag. Values argparse already refuses (a word for
    a number, an unknown --direct_running_mode) exit 2 there."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    workers = options.view_as(DirectOptions).direct_num_workers
    if workers is not None and workers < 0:
        raise ConfigError(f"--direct_num_workers {workers}: must be 0 (one worker per CPU) or a positive number")
    runner = options.view_as(StandardOptions).runner
    if isinstance(runner, str) and runner and not _known_runner(runner):
        raise ConfigError(
            f"--runner {runner!r}: unknown runner; DirectRunner (this machine, the default) or DataflowRunner (Google Cloud)"
        )


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


def config_from_options(
    options: PipelineOptions, check_paths: bool = True, listing: Optional[fileio.InputListing] = None
) -> JobConfig:
    """Validate the flags into a JobConfig; raises ConfigError naming the first bad flag (`listing`:
    where the inputs' listings are kept, to list each input pattern only once at launch)."""
    o = options.view_as(EmbeddingJobOptions)
    if not o.output:
        raise ConfigError("--output is required (a local folder or gs:// path)")
    check_beam_flags(options)
    check_remote_paths(options)
    text_inputs = tuple(o.text_input or ())
    image_inputs = tuple(o.image_input or ())
    if not text_inputs and not image_inputs:
        raise ConfigError("give --text-input (with --text-model) and/or --image-input (with --image-model)")
    if text_inputs and not o.text_model:
        raise ConfigError("--text-input needs --text-model (a .keras file made by `train-text`)")
    if o.text_model and not text_inputs:
        raise ConfigError("--text-model is set but no --text-input was given")
    if image_inputs and not o.image_model:
        raise ConfigError("--image-input needs --image-model (a network name or a .keras classifier)")
    if o.image_model and not image_inputs:
        raise ConfigError("--image-model is set but no --image-input was given")
    if o.max_failed is not None and o.max_failed < 0:
        raise ConfigError(f"--max-failed must be 0 or more, got {o.max_failed}")
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
        _positive("--" + name.replace("_", "-"), getattr(o, name))
    for flag, value, maximum in (
        ("--text-batch-size", o.text_batch_size, MAX_TEXT_BATCH_SIZE),
        ("--image-batch-size", o.image_batch_size, MAX_IMAGE_BATCH_SIZE),
        ("--decode-threads", o.decode_threads, MAX_DECODE_THREADS),
    ):
        if value is not None and value > maximum:
            raise ConfigError(
                f"{flag} {value:,}: the maximum is {maximum:,} (a batch, or a batch per thread, is held in memory whole)"
            )
    fileio.bound_storage_retries(o.storage_timeout)  # the launch's own gs:// calls (listing, probes) obey it too
    if o.image_alpha is not None and o.image_alpha <= 0:
        raise ConfigError(f"--image-alpha must be positive, got {o.image_alpha}")
    if o.text_encoding:
        import codecs

        try:
            codecs.lookup(o.text_encoding)
        except LookupError:
            raise ConfigError(f"--text-encoding {o.text_encoding!r}: unknown encoding") from None
    passthrough = tuple(p.strip() for p in (o.passthrough or "").split(",") if p.strip())
    reserved = reserved_output_columns()
    for name in passthrough:
        if name in reserved:
            raise ConfigError(
                f"--passthrough {name!r}: clashes with an output column of the same name ({', '.join(sorted(reserved))})"
            )
    if len(set(passthrough)) != len(passthrough):
        raise ConfigError(f"--passthrough {o.passthrough!r}: names a column twice")
    image_spec = None
    if o.image_model:
        is_network = o.image_model in NETWORKS
        if not is_network and not o.image_model.endswith((".keras", ".h5")):
            close = [n for n in NETWORKS if n.lower() == o.image_model.lower()]
            hint = f" (did you mean {close[0]}?)" if close else f"; expected a .keras file or one of: {', '.join(NETWORKS)}"
            raise ConfigError(f"--image-model {o.image_model!r}: unknown network{hint}")
        if not is_network:
            if o.image_alpha is not None or o.image_size is not None:
                raise ConfigError("--image-alpha/--image-size apply to a named network, not to a .keras model")
            if o.image_weights not in ("imagenet", None):
                raise ConfigError(f"--image-weights {o.image_weights!r}: applies to a named network, not to a .keras model")
        elif o.image_layer:
            raise ConfigError("--image-layer applies to a .keras classifier, not to a named network")
        if o.image_precision == "bf16" and o.image_backend == "tensorflow":
            raise ConfigError("--image-precision bf16 needs --image-backend openvino (or auto); TensorFlow runs f32")
        weights = o.image_weights if is_network else "none"
        image_spec = ImageModelSpec(
            model=o.image_model if is_network else _absolute(o.image_model),
            weights=_absolute(weights) if _is_file_path(weights, ("imagenet", "none")) else weights,
            image_size=o.image_size,
            alpha=o.image_alpha,
            layer=o.image_layer,
            preprocess=o.image_preprocess,
            batch_size=o.image_batch_size,
            unsafe_loading=o.unsafe_model_loading,
            backend=o.image_backend or "auto",
            precision=o.image_precision or "f32",
            decoder=o.image_decoder or "pillow",
        )
    output = _absolute(o.output)
    config = JobConfig(
        output=output.rstrip("/") if output not in ("/",) else output,
        run_id=o.run_id or uuid.uuid4().hex[:12],
        text_inputs=tuple(_absolute(p) for p in text_inputs),
        text_model=TextModelSpec(_absolute(o.text_model), o.text_batch_size, o.unsafe_model_loading, o.text_layer)
        if o.text_model
        else None,
        text_field=o.text_field,
        text_id_field=o.text_id_field,
        text_encoding=o.text_encoding,
        max_text_bytes=o.max_text_bytes,
        read_split_bytes=o.read_split_bytes,
        image_inputs=tuple(_absolute(p) for p in image_inputs),
        image_model=image_spec,
        image_uri_field=o.image_uri_field,
        image_id_field=o.image_id_field,
        max_image_pixels=o.max_image_pixels,
        max_image_bytes=o.max_image_bytes,
        decode_threads=o.decode_threads,
        passthrough=passthrough,
        normalize=o.normalize,
        allow_duplicate_ids=o.allow_duplicate_ids,
        incremental_from=tuple(_absolute(d).rstrip("/") for d in split_folders(o.incremental_from)),
        allow_failed=o.allow_failed,
        carry_over=o.carry_over,
        detach=o.detach,
        bigquery_table=o.bigquery_table or None,
        max_failed_fraction=parse_failed_fraction(o.max_failed_fraction),
        max_failed=o.max_failed,
        storage_timeout=o.storage_timeout,
        force_unlock=o.force_unlock,
    )
    paths = [
        ("--output", config.output),
        ("--text-model", o.text_model),
        ("--image-model", o.image_model),
        ("--image-weights", o.image_weights),
    ]
    paths += [("--text-input", p) for p in text_inputs] + [("--image-input", p) for p in image_inputs]
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
        from apache_beam.options.pipeline_options import GoogleCloudOptions

        from transforms.sinks.bigquery import BigQueryTableError, check_sink

        try:
            check_sink(config.bigquery_table, options.view_as(GoogleCloudOptions).temp_location)
        except BigQueryTableError as exc:
            raise ConfigError(str(exc)) from None
    if check_paths:
        _check_inputs("--text-input", config.text_inputs, listing)
        _check_inputs("--image-input", config.image_inputs, listing)
        check_inputs_outside_output(config, listing)
    return config


def split_folders(values: Optional[Sequence[str]]) -> list[str]:
    """`--incremental-from`'s folders: the flag repeated, or several in one value separated by commas
    (a flex template passes each parameter once: `incremental_from=gs://b/run1,gs://b/run2`)."""
    return [part.strip() for value in values or () for part in str(value).split(",") if part.strip()]


def reserved_output_columns() -> frozenset[str]:
    """The column names a `--passthrough` field may not take: every column the job itself writes to
    `text/` or `image/`, taken from the output schema (`transforms.records.embedding_schema`), with
    `embedded_run_id` (a carry-over run's provenance; a passthrough column of that name in an earlier
    run would be read as provenance by a later --carry-over run). `text` is allowed: the embedded text,
    stored beside its embedding (an image manifest's `text` column for images)."""
    return frozenset(name for modality in (TEXT, IMAGE) for name in embedding_schema(modality, 1, provenance=True).names) - {
        "text"
    }


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
    path, folder = real_path(path), real_path(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


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
    samples = [f"{output}/{name}" for name in _OUTPUT_SAMPLES]
    for flag, patterns in (("--text-input", config.text_inputs), ("--image-input", config.image_inputs)):
        for pattern in patterns:
            inside = is_inside(fileio.glob_root(pattern) or pattern, output) if fileio.has_glob(pattern) else False
            inside = inside or any(is_inside(path, output) for path, _ in listing.files(pattern))
            if inside:
                raise ConfigError(
                    f"{flag} {pattern!r}: reads inside --output {config.output!r}, the folder this run clears and "
                    "writes; move the inputs out of it or choose another --output"
                )
            regex = re.compile(FileSystem.translate_pattern(_real_pattern(pattern)))
            if any(regex.match(sample) for sample in samples):
                raise ConfigError(
                    f"{flag} {pattern!r}: would also read this run's own files, as --output {config.output!r} lies "
                    "inside that glob; choose an --output outside it, or a glob that does not reach it"
                )
