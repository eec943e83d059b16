"""The `run` command's options: per-concern views of Beam's `PipelineOptions`, and the JobConfig built from them.

As Beam splits `PipelineOptions` into `StandardOptions`, `GoogleCloudOptions`, ..., the job's flags
come in five views, read with `options.view_as(...)`: `InputOptions` (what is read and which fields),
`TextModelOptions`, `ImageModelOptions`, `OutputOptions` and `RunOptions` (failure budget, earlier
runs, launch behaviour). Each flag is declared once, in its view's `FLAGS` table (`Flag`, `switch`),
with its default and help; the help's `{default}` is filled from that default, and `JobConfig`'s
defaults are read from the same table (`declared_default`). `EmbeddingJobOptions` is every view at
once (the parser of `run --help`, the flex template's parameters).

Every flag is accepted with dashes (`--text-input`) and with underscores (`--text_input`): Beam
re-creates options on workers and in templates from their underscore names. `--help` shows the
dash spelling only, in groups (`FLAG_GROUPS`): a flag's group is its `Flag.group` or, failing
that, follows from its name (`text_*` -> Text, `image_*` -> Images, anything else -> Behaviour).

Checks live in `pipeline.checks` (`config_from_options` validates the flags, then calls
`build_config` here): this module only declares and converts. Paths are made absolute (local ones)
when the config is built, so that the manifest records paths the tools can use from any folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import uuid
from typing import Any, Callable, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.embed.backends import BACKENDS, PRECISIONS
from transforms.embed.decode import DECODERS, DEFAULT_MAX_IMAGE_PIXELS
from transforms.embed.dofns import DEFAULT_MAX_IMAGE_BYTES, MAX_DECODE_THREADS
from transforms.embed.models import MAX_IMAGE_BATCH_SIZE, MAX_TEXT_BATCH_SIZE, NETWORKS, ImageModelSpec, TextModelSpec
from transforms.errors import DataError, UserError
from transforms.io.splits import DEFAULT_MAX_TEXT_BYTES, DEFAULT_SPLIT_BYTES
from transforms.records import IMAGE, TEXT
from transforms.sinks.manifest import DEFAULT_MAX_FAILED_FRACTION

__all__ = [
    "Flag",
    "switch",
    "InputOptions",
    "TextModelOptions",
    "ImageModelOptions",
    "OutputOptions",
    "RunOptions",
    "JOB_VIEWS",
    "EmbeddingJobOptions",
    "declared_default",
    "JobConfig",
    "ConfigError",
    "StorageUnreachable",
    "FLAG_GROUPS",
    "flag_group",
    "parse_bool",
    "parse_failed_fraction",
    "parse_passthrough",
    "build_config",
    "runner_name",
    "split_folders",
    "is_local_runner",
    "is_dataflow_runner",
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


@dataclasses.dataclass(frozen=True)
class Flag:
    """One `run` flag, declared once: its dashed name, help (`{default}` is filled in), default and
    argparse details. `repeatable`: given several times, a list. `group`: its `run --help` group
    when its name does not say it (`flag_group`)."""

    name: str
    help: str
    default: Any = None
    type: Optional[Callable] = None
    repeatable: bool = False
    choices: Optional[Sequence[str]] = None
    metavar: Optional[str] = None
    group: Optional[str] = None
    is_switch: bool = False

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def spellings(self) -> list[str]:
        """`--text-input` and `--text_input` (one spelling for a one-word flag)."""
        return [self.name] + ([f"--{self.dest}"] if "-" in self.name.lstrip("-") else [])

    def add_to(self, parser) -> None:
        """Add the flag to an argparse parser (into its help group when `parser` has them: `pipeline.cli`)."""
        kwargs: dict = {"dest": self.dest, "default": self.default, "help": self.help.format(default=self.default)}
        if self.is_switch:
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="true|false")
        else:
            kwargs.update({k: v for k, v in (("type", self.type), ("choices", self.choices), ("metavar", self.metavar)) if v})
            if self.repeatable:
                kwargs["action"] = "append"
        groups = getattr(parser, "embedding_flag_groups", None)  # set by `pipeline.cli` for --help only
        target = groups[self.group or flag_group(self.dest)] if groups else parser
        target.add_argument(*self.spellings, **kwargs)


def switch(name: str, help: str, group: Optional[str] = None) -> Flag:
    """A boolean flag, off by default: `--name`, `--name=true`, `--name=false`."""
    return Flag(name, help, default=False, group=group, is_switch=True)


def flag_group(dest: str) -> str:
    """The help group (a key of FLAG_GROUPS) a `run` flag's name implies (`Flag.group` overrides it)."""
    if dest.startswith("text_"):
        return "text"
    if dest.startswith(("image_", "max_image_")):
        return "images"
    return "behaviour"


def _add_flags(parser, flags: Sequence[Flag]) -> None:
    for flag in flags:
        flag.add_to(parser)


class InputOptions(PipelineOptions):
    """What is read: the text and image inputs, the fields that hold text, ids and image uris, and
    the bounds of what one record or read may be."""

    FLAGS = (
        Flag(
            "--text-input",
            "Glob of text record files (JSONL, CSV, TSV, Parquet, plain lines). Repeatable.",
            repeatable=True,
            metavar="GLOB",
        ),
        Flag("--text-field", "Field/column holding the text (default: {default}).", default="text", metavar="FIELD"),
        Flag(
            "--text-id-field",
            "Field/column holding the record id (default: {default}; file:line where absent).",
            default="id",
            metavar="FIELD",
        ),
        Flag(
            "--text-encoding",
            "Encoding of text files (default: {default}; e.g. cp1252).",
            default="utf-8",
            metavar="ENCODING",
        ),
        Flag(
            "--max-text-bytes",
            "A text line (record) longer than this is a RecordTooLarge dead letter, skipped without being held (default: {default:,} = 10 MiB).",
            default=DEFAULT_MAX_TEXT_BYTES,
            type=int,
        ),
        Flag(
            "--read-split-bytes",
            "Large uncompressed text files and image manifests are read in ranges of about this many bytes, spread over workers (default: {default:,} = 64 MiB).",
            default=DEFAULT_SPLIT_BYTES,
            type=int,
        ),
        Flag(
            "--image-input",
            "Glob of image files, a folder (the images below it, at any depth), or a manifest (.csv, .jsonl, .parquet) with a uri column. Repeatable.",
            repeatable=True,
            metavar="GLOB_OR_MANIFEST",
        ),
        Flag("--image-uri-field", "Manifest column holding the image uri (default: {default}).", default="uri", metavar="FIELD"),
        Flag("--image-id-field", "Manifest column holding the image id (default: the uri as written).", metavar="FIELD"),
        Flag(
            "--max-image-pixels",
            "Reject images declaring more pixels than this, before decoding (default: {default:,}).",
            default=DEFAULT_MAX_IMAGE_PIXELS,
            type=int,
            metavar="PIXELS",
        ),
        Flag(
            "--max-image-bytes",
            "Image files larger than this are dead letters, never read whole (default: {default:,} = 256 MiB).",
            default=DEFAULT_MAX_IMAGE_BYTES,
            type=int,
            metavar="BYTES",
        ),
    )

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_flags(parser, cls.FLAGS)


class TextModelOptions(PipelineOptions):
    """The text model and how many texts it gets per call."""

    FLAGS = (
        Flag(
            "--text-model",
            "The .keras model made by `train-text`, or any text encoder taking a batch of strings: a .keras model or a SavedModel directory (local or gs://).",
            metavar="MODEL",
        ),
        Flag(
            "--text-layer",
            "For another encoder: the layer (.keras) or serving-signature output (SavedModel) that is the embedding (default: text_embedding; a SavedModel's only float (batch, dim) output).",
            metavar="LAYER",
        ),
        Flag(
            "--text-batch-size",
            f"Texts per model call (default: {{default}}; at most {MAX_TEXT_BATCH_SIZE:,}).",
            default=1024,
            type=int,
            metavar="N",
        ),
    )

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_flags(parser, cls.FLAGS)


class ImageModelOptions(PipelineOptions):
    """The image network or classifier, what runs it, and how images are decoded and batched."""

    FLAGS = (
        Flag(
            "--image-model",
            f"A Keras Applications network ({', '.join(NETWORKS)}) or a .keras classifier.",
            metavar="NETWORK_OR_MODEL.keras",
        ),
        Flag(
            "--image-weights",
            "imagenet (Keras download), none (random, seeded) or a weights file path (local or gs://).",
            default="imagenet",
            metavar="WEIGHTS",
        ),
        Flag(
            "--image-size",
            "Input size in pixels for a named network (default: the network's own).",
            type=int,
            metavar="PIXELS",
        ),
        Flag("--image-alpha", "Width multiplier for MobileNet networks (e.g. 0.25).", type=float, metavar="ALPHA"),
        Flag(
            "--image-layer",
            "For a .keras classifier: the layer whose output is the embedding (default: the one feeding the last layer).",
            metavar="LAYER",
        ),
        Flag(
            "--image-preprocess",
            "For a .keras classifier: apply this network's preprocess_input (default: none; the model gets 0..255 pixels).",
            metavar="NETWORK",
        ),
        Flag(
            "--image-batch-size",
            f"Images per model call (default: {{default}}; at most {MAX_IMAGE_BATCH_SIZE:,}).",
            default=32,
            type=int,
            metavar="N",
        ),
        Flag(
            "--image-backend",
            "What runs the image network: openvino, tensorflow, or auto (default: OpenVINO where installed and the network converts, else TensorFlow; the manifest says which).",
            default="auto",
            choices=BACKENDS,
        ),
        Flag(
            "--image-precision",
            "f32 (default; OpenVINO matches TensorFlow to ~1e-6) or bf16 (OpenVINO only: faster on CPUs with bf16, embeddings move to cosine ~0.99; a different model_sha256).",
            default="f32",
            choices=PRECISIONS,
        ),
        Flag(
            "--image-decoder",
            "How images are decoded and resized: pillow (default) or opencv (the fast-decode extra: ~2x faster on JPEGs, pixels ~1/255 apart, embeddings cosine >= 0.99, a different model_sha256).",
            default="pillow",
            choices=DECODERS,
        ),
        Flag(
            "--decode-threads",
            f"Threads decoding images per worker process (default: number of CPUs; at most {MAX_DECODE_THREADS}: each holds a batch).",
            type=int,
            metavar="N",
            group="images",
        ),
    )

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_flags(parser, cls.FLAGS)


class OutputOptions(PipelineOptions):
    """Where the results go and what they hold."""

    FLAGS = (
        Flag(
            "--output",
            "Output folder (local or gs://): text/, image/, errors/ and _MANIFEST.json.",
            metavar="DIR",
            group="output",
        ),
        Flag(
            "--bigquery-table",
            "Also load the embeddings into BigQuery (PROJECT:DATASET.TABLE): text rows go to TABLE_text, image rows to TABLE_image (created if needed, appended to, embedding as ARRAY<FLOAT64>, with a run_id column); needs --temp_location gs://... Dead letters stay in errors/ (Parquet).",
        ),
        Flag(
            "--passthrough",
            "Comma-separated input fields copied to the output as strings (e.g. label).",
            default="",
            metavar="FIELD,...",
            group="output",
        ),
        switch("--normalize", "L2-normalise embeddings.", group="output"),
        Flag("--run-id", "An id for this run, recorded in the manifest (default: random).", metavar="ID", group="output"),
    )

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_flags(parser, cls.FLAGS)


class RunOptions(PipelineOptions):
    """How the run behaves: storage retries, trust in model files, the failure budget, the earlier
    runs it builds on, and how it treats its output folder and its launcher."""

    FLAGS = (
        Flag(
            "--storage-timeout",
            "Seconds one gs:// call keeps retrying transient errors (with backoff) before the run fails as storage unreachable (default: {default}; with the 60 s request timeout a run fails within 2 minutes of losing its storage).",
            default=45,
            type=int,
        ),
        switch("--unsafe-model-loading", "Allow .keras models with custom Python code (only for files you trust)."),
        Flag(
            "--max-failed-fraction",
            "Failure budget: the run fails (exit 1, manifest status failed) when more than this fraction of a modality's records are dead letters; one number for both, or per modality as text=0.2,image=0.05 (default: {default}).",
            default=str(DEFAULT_MAX_FAILED_FRACTION),
        ),
        Flag(
            "--max-failed",
            "Failure budget as a count: the run fails when a modality has more dead letters than this (default: no limit; --max-failed-fraction still applies).",
            type=int,
        ),
        switch(
            "--allow-duplicate-ids",
            "Skip the duplicate-id check (by default, every record after the first with an id is a DuplicateId dead letter).",
        ),
        Flag(
            "--incremental-from",
            "An earlier run's output folder (repeatable, or several separated by commas): records whose id, content_sha256 and model_sha256 match an embedding there are skipped.",
            repeatable=True,
            metavar="DIR",
        ),
        switch(
            "--allow-failed",
            "With --incremental-from: use an earlier run that failed its checks on a modality this run embeds (its records missing there are embedded again); a modality that is complete in a failed run is used without it.",
        ),
        switch(
            "--carry-over",
            "With --incremental-from: also copy the earlier embeddings of the skipped (unchanged) text records into this run's output (no re-embedding), so the run folder is a complete snapshot of the current input, one row per record; rows say in which run they were embedded (embedded_run_id). Text and images.",
        ),
        switch(
            "--detach",
            "Submit the job and return without waiting (e.g. from a flex-template launcher); the pipeline still writes _MANIFEST.json when it finishes.",
        ),
        switch(
            "--force-unlock",
            "Start even though --output holds another run's _RUNNING.json marker (only once you know that run is dead; a marker of a dead process on this machine is replaced anyway).",
        ),
    )

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_flags(parser, cls.FLAGS)


# The job's option views, in the order `run --help` and the flex template list their flags.
JOB_VIEWS = (OutputOptions, InputOptions, TextModelOptions, ImageModelOptions, RunOptions)
_FLAGS = {flag.dest: flag for view in JOB_VIEWS for flag in view.FLAGS}


class _AllJobViews(PipelineOptions):
    """Keeps `EmbeddingJobOptions` out of `PipelineOptions.__subclasses__()`, whose every member adds
    its flags to Beam's parsers: its flags are the views' own, and argparse refuses a flag twice."""


class EmbeddingJobOptions(_AllJobViews):
    """Every flag of `python -m pipeline run` in one view (Beam's own flags pass through beside them)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        for view in JOB_VIEWS:
            view._add_argparse_args(parser)


def declared_default(dest: str):
    """The default a flag is declared with (by its dest name, e.g. `max_image_bytes`)."""
    return _FLAGS[dest].default


def parse_failed_fraction(value: str) -> dict[str, float]:
    """`--max-failed-fraction`: `0.2` (both modalities) or `text=0.2,image=0.05` -> {modality: fraction}."""
    fraction = float(DEFAULT_MAX_FAILED_FRACTION)
    fractions = {TEXT: fraction, IMAGE: fraction}
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


def parse_passthrough(value: Optional[str]) -> tuple[str, ...]:
    """`--passthrough a, b` -> ("a", "b")."""
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Validated settings of one run (built by `pipeline.checks.config_from_options`). The defaults
    are the flags' own (`declared_default`), converted as `build_config` converts the flags."""

    output: str
    run_id: str
    text_inputs: tuple[str, ...] = ()
    text_model: Optional[TextModelSpec] = None
    text_field: str = declared_default("text_field")
    text_id_field: str = declared_default("text_id_field")
    text_encoding: str = declared_default("text_encoding")
    max_text_bytes: int = declared_default("max_text_bytes")
    read_split_bytes: int = declared_default("read_split_bytes")
    image_inputs: tuple[str, ...] = ()
    image_model: Optional[ImageModelSpec] = None
    image_uri_field: str = declared_default("image_uri_field")
    image_id_field: Optional[str] = declared_default("image_id_field")
    max_image_pixels: int = declared_default("max_image_pixels")
    max_image_bytes: int = declared_default("max_image_bytes")
    decode_threads: Optional[int] = declared_default("decode_threads")
    passthrough: tuple[str, ...] = parse_passthrough(declared_default("passthrough"))
    normalize: bool = declared_default("normalize")
    allow_duplicate_ids: bool = declared_default("allow_duplicate_ids")
    incremental_from: tuple[str, ...] = ()
    allow_failed: bool = declared_default("allow_failed")
    carry_over: bool = declared_default("carry_over")
    detach: bool = declared_default("detach")
    bigquery_table: Optional[str] = declared_default("bigquery_table")
    max_failed_fraction: dict = dataclasses.field(
        default_factory=lambda: parse_failed_fraction(declared_default("max_failed_fraction"))
    )
    max_failed: Optional[int] = declared_default("max_failed")
    storage_timeout: int = declared_default("storage_timeout")
    force_unlock: bool = declared_default("force_unlock")

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


def absolute(path: Optional[str]) -> Optional[str]:
    """A local path made absolute (`~` expanded, a trailing / kept); URIs (gs://...) and None unchanged."""
    from transforms.io import fileio

    if not path or fileio.is_remote(path):
        return path
    result = os.path.abspath(os.path.expanduser(path))
    return result + "/" if path.endswith(("/", os.sep)) and not result.endswith("/") else result


def weights_path(weights: Optional[str]) -> Optional[str]:
    """`--image-weights` when it names a file (not `imagenet` or `none`), else None."""
    return weights if weights and weights not in ("imagenet", "none") else None


def keras_file(model: Optional[str]) -> Optional[str]:
    """`--image-model` when it names a .keras/.h5 file rather than a network, else None."""
    return model if (model or "").endswith((".keras", ".h5")) else None


def build_config(options: PipelineOptions) -> JobConfig:
    """The JobConfig of flags already checked (`pipeline.checks.check_flags`): values converted,
    local paths made absolute, the run id drawn when none is given."""
    inputs, text, image = (options.view_as(v) for v in (InputOptions, TextModelOptions, ImageModelOptions))
    output, run = options.view_as(OutputOptions), options.view_as(RunOptions)
    image_spec = None
    if image.image_model:
        is_network = image.image_model in NETWORKS
        weights = image.image_weights if is_network else "none"
        image_spec = ImageModelSpec(
            model=image.image_model if is_network else absolute(image.image_model),
            weights=absolute(weights) if weights_path(weights) else weights,
            image_size=image.image_size,
            alpha=image.image_alpha,
            layer=image.image_layer,
            preprocess=image.image_preprocess,
            batch_size=image.image_batch_size,
            unsafe_loading=run.unsafe_model_loading,
            backend=image.image_backend,
            precision=image.image_precision,
            decoder=image.image_decoder,
        )
    folder = absolute(output.output)
    return JobConfig(
        output=folder.rstrip("/") if folder != "/" else folder,
        run_id=output.run_id or uuid.uuid4().hex[:12],
        text_inputs=tuple(absolute(p) for p in inputs.text_input or ()),
        text_model=TextModelSpec(absolute(text.text_model), text.text_batch_size, run.unsafe_model_loading, text.text_layer)
        if text.text_model
        else None,
        text_field=inputs.text_field,
        text_id_field=inputs.text_id_field,
        text_encoding=inputs.text_encoding,
        max_text_bytes=inputs.max_text_bytes,
        read_split_bytes=inputs.read_split_bytes,
        image_inputs=tuple(absolute(p) for p in inputs.image_input or ()),
        image_model=image_spec,
        image_uri_field=inputs.image_uri_field,
        image_id_field=inputs.image_id_field,
        max_image_pixels=inputs.max_image_pixels,
        max_image_bytes=inputs.max_image_bytes,
        decode_threads=image.decode_threads,
        passthrough=parse_passthrough(output.passthrough),
        normalize=output.normalize,
        allow_duplicate_ids=run.allow_duplicate_ids,
        incremental_from=tuple(absolute(d).rstrip("/") for d in split_folders(run.incremental_from)),
        allow_failed=run.allow_failed,
        carry_over=run.carry_over,
        detach=run.detach,
        bigquery_table=output.bigquery_table or None,
        max_failed_fraction=parse_failed_fraction(run.max_failed_fraction),
        max_failed=run.max_failed,
        storage_timeout=run.storage_timeout,
        force_unlock=run.force_unlock,
    )


_LOCAL_RUNNERS = ("directrunner", "direct", "switchingdirectrunner")
_DATAFLOW_RUNNERS = ("dataflowrunner", "dataflow")


def split_folders(values: Optional[Sequence[str]]) -> list[str]:
    """`--incremental-from`'s folders: the flag repeated, or several in one value separated by commas
    (a flex template passes each parameter once: `incremental_from=gs://b/run1,gs://b/run2`)."""
    return [part.strip() for value in values or () for part in str(value).split(",") if part.strip()]


def runner_name(options: PipelineOptions) -> str:
    """`--runner` as given (a runner object: its class name); DirectRunner when none is given."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner is None or runner == "":
        return "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__


def is_local_runner(options: PipelineOptions) -> bool:
    """Whether the job runs on this machine (DirectRunner in any spelling Beam accepts: `directrunner`, `direct`)."""
    return runner_name(options).lower() in _LOCAL_RUNNERS


def is_dataflow_runner(options: PipelineOptions) -> bool:
    """Whether the job runs on Google Cloud Dataflow (`DataflowRunner`, `dataflow`, any case)."""
    return runner_name(options).lower() in _DATAFLOW_RUNNERS
