"""The `run` command's options: a Beam `PipelineOptions` subclass, validated once into a frozen config.

Every flag is accepted with dashes (`--text-input`) and with underscores (`--text_input`): Beam
re-creates options on workers and in templates from their underscore names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import uuid
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from transforms import fileio
from transforms.decode import DEFAULT_MAX_IMAGE_PIXELS
from transforms.models import NETWORKS, ImageModelSpec, TextModelSpec
from transforms.splits import DEFAULT_MAX_TEXT_BYTES, DEFAULT_SPLIT_BYTES

__all__ = ["EmbeddingJobOptions", "JobConfig", "ConfigError", "config_from_options", "check_output_writable", "check_unknown_flags"]


class ConfigError(ValueError):
    """A flag whose value cannot work. Raised before the pipeline starts; the message names the flag."""


def parse_bool(value: str) -> bool:
    """A boolean flag's value: `--normalize`, `--normalize=true` and `--normalize=false` all work
    (Dataflow flex templates pass every parameter as --name=value)."""
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _flag(parser, name: str, **kwargs) -> None:
    dest = name.lstrip("-").replace("-", "_")
    spellings = [name] + ([f"--{dest}"] if "-" in name.lstrip("-") else [])
    parser.add_argument(*spellings, dest=dest, **kwargs)


class EmbeddingJobOptions(PipelineOptions):
    """Flags of `python -m pipeline run` (Beam's own flags pass through beside them)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _flag(parser, "--output", help="Output folder (local or gs://): text/, image/, errors/ and _MANIFEST.json.")
        # Text
        _flag(parser, "--text-input", action="append", help="Glob of text record files (JSONL, CSV, TSV, Parquet, plain lines). Repeatable.")
        _flag(parser, "--text-model", help="The .keras model made by `train-text` (local or gs://).")
        _flag(parser, "--text-field", default="text", help="Field/column holding the text (default: text).")
        _flag(parser, "--text-id-field", default="id", help="Field/column holding the record id (default: id; file:line where absent).")
        _flag(parser, "--text-encoding", default="utf-8", help="Encoding of text files (default: utf-8; e.g. cp1252).")
        _flag(parser, "--text-batch-size", type=int, default=1024, help="Texts per model call (default: 1024).")
        _flag(parser, "--max-text-bytes", type=int, default=DEFAULT_MAX_TEXT_BYTES, help="A text line (record) longer than this is a RecordTooLarge dead letter, skipped without being held (default: 10,485,760 = 10 MiB).")
        _flag(parser, "--read-split-bytes", type=int, default=DEFAULT_SPLIT_BYTES, help="Large uncompressed text files and image manifests are read in ranges of about this many bytes, spread over workers (default: 67,108,864 = 64 MiB).")
        # Images
        _flag(parser, "--image-input", action="append", help="Glob of image files, or a manifest (.csv, .jsonl, .parquet) with a uri column. Repeatable.")
        _flag(parser, "--image-model", help=f"A Keras Applications network ({', '.join(NETWORKS)}) or a .keras classifier.")
        _flag(parser, "--image-weights", default="imagenet", help="imagenet (Keras download), none (random, seeded) or a weights file path (local or gs://).")
        _flag(parser, "--image-size", type=int, help="Input size in pixels for a named network (default: the network's own).")
        _flag(parser, "--image-alpha", type=float, help="Width multiplier for MobileNet networks (e.g. 0.25).")
        _flag(parser, "--image-layer", help="For a .keras classifier: the layer whose output is the embedding (default: the one feeding the last layer).")
        _flag(parser, "--image-preprocess", help="For a .keras classifier: apply this network's preprocess_input (default: none; the model gets 0..255 pixels).")
        _flag(parser, "--image-uri-field", default="uri", help="Manifest column holding the image uri (default: uri).")
        _flag(parser, "--image-id-field", help="Manifest column holding the image id (default: the uri as written).")
        _flag(parser, "--image-batch-size", type=int, default=32, help="Images per model call (default: 32).")
        _flag(parser, "--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, help=f"Reject images declaring more pixels than this, before decoding (default: {DEFAULT_MAX_IMAGE_PIXELS:,}).")
        _flag(parser, "--max-image-bytes", type=int, default=256 << 20, help="Image files larger than this are dead letters, never read whole (default: 268,435,456 = 256 MiB).")
        _flag(parser, "--decode-threads", type=int, help="Threads decoding images per worker process (default: number of CPUs).")
        # Both
        _flag(parser, "--passthrough", default="", help="Comma-separated input fields copied to the output as strings (e.g. label).")
        _flag(parser, "--normalize", nargs="?", const=True, default=False, type=parse_bool, metavar="true|false", help="L2-normalise embeddings.")
        _flag(parser, "--unsafe-model-loading", nargs="?", const=True, default=False, type=parse_bool, metavar="true|false", help="Allow .keras models with custom Python code (only for files you trust).")
        _flag(parser, "--allow-duplicate-ids", nargs="?", const=True, default=False, type=parse_bool, metavar="true|false", help="Skip the duplicate-id check (by default, every record after the first with an id is a DuplicateId dead letter).")
        _flag(parser, "--incremental-from", action="append", help="An earlier run's output folder (repeatable): records whose id, content_sha256 and model_sha256 match an embedding there are skipped.")
        _flag(parser, "--detach", nargs="?", const=True, default=False, type=parse_bool, metavar="true|false", help="Submit the job and return without waiting (e.g. from a flex-template launcher); the pipeline still writes _MANIFEST.json when it finishes.")
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
    detach: bool = False

    @property
    def has_text(self) -> bool:
        return bool(self.text_inputs)

    @property
    def has_images(self) -> bool:
        return bool(self.image_inputs)

    def describe(self) -> dict:
        """The settings as plain JSON-able values, for the manifest."""
        return dataclasses.asdict(self)


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value}")


def _check_inputs(flag: str, patterns: Sequence[str]) -> None:
    for pattern in patterns:
        try:
            matched = fileio.match_paths([pattern])
        except Exception as exc:  # noqa: BLE001 - bucket missing, no permission
            raise ConfigError(f"{flag} {pattern!r}: cannot list ({type(exc).__name__}: {exc})") from exc
        if not matched:
            raise ConfigError(f"{flag} {pattern!r}: matches no file")


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
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        FileSystems.delete([probe])
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"--output {output!r}: not writable ({type(exc).__name__}: {exc})") from exc


def check_unknown_flags(argv: Sequence[str]) -> None:
    """Refuse flags that neither this job nor Beam knows (Beam alone would only log and drop them)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(argv))
    flags = [a for a in unknown if a.startswith("--")]
    if flags:
        raise ConfigError(f"unknown flag {flags[0].split('=')[0]!r} (see `python -m pipeline run --help`)")


def config_from_options(options: PipelineOptions, check_paths: bool = True) -> JobConfig:
    """Validate the flags into a JobConfig; raises ConfigError naming the first bad flag."""
    o = options.view_as(EmbeddingJobOptions)
    if not o.output:
        raise ConfigError("--output is required (a local folder or gs:// path)")
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
    for name in ("text_batch_size", "image_batch_size", "max_image_pixels", "max_image_bytes", "decode_threads", "image_size",
                 "max_text_bytes", "read_split_bytes"):
        _positive("--" + name.replace("_", "-"), getattr(o, name))
    if o.image_alpha is not None and o.image_alpha <= 0:
        raise ConfigError(f"--image-alpha must be positive, got {o.image_alpha}")
    if o.text_encoding:
        import codecs

        try:
            codecs.lookup(o.text_encoding)
        except LookupError:
            raise ConfigError(f"--text-encoding {o.text_encoding!r}: unknown encoding") from None
    passthrough = tuple(p.strip() for p in (o.passthrough or "").split(",") if p.strip())
    reserved = {"id", "source", "line", "content_sha256", "embedding", "model", "model_sha256", "text"}
    for name in passthrough:
        if name in reserved:
            raise ConfigError(f"--passthrough {name!r}: clashes with an output column of the same name")
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
        image_spec = ImageModelSpec(
            model=o.image_model,
            weights=o.image_weights if is_network else "none",
            image_size=o.image_size,
            alpha=o.image_alpha,
            layer=o.image_layer,
            preprocess=o.image_preprocess,
            batch_size=o.image_batch_size,
            unsafe_loading=o.unsafe_model_loading,
        )
    config = JobConfig(
        output=o.output.rstrip("/") if o.output not in ("/",) else o.output,
        run_id=o.run_id or uuid.uuid4().hex[:12],
        text_inputs=text_inputs,
        text_model=TextModelSpec(o.text_model, o.text_batch_size, o.unsafe_model_loading) if o.text_model else None,
        text_field=o.text_field,
        text_id_field=o.text_id_field,
        text_encoding=o.text_encoding,
        max_text_bytes=o.max_text_bytes,
        read_split_bytes=o.read_split_bytes,
        image_inputs=image_inputs,
        image_model=image_spec,
        image_uri_field=o.image_uri_field,
        image_id_field=o.image_id_field,
        max_image_pixels=o.max_image_pixels,
        max_image_bytes=o.max_image_bytes,
        decode_threads=o.decode_threads,
        passthrough=passthrough,
        normalize=o.normalize,
        allow_duplicate_ids=o.allow_duplicate_ids,
        incremental_from=tuple(d.rstrip("/") for d in (o.incremental_from or ())),
        detach=o.detach,
    )
    if config.output in config.incremental_from:
        raise ConfigError(f"--incremental-from {config.output!r}: is the --output of this run; give the earlier run's folder (one output folder per run)")
    if check_paths:
        _check_inputs("--text-input", text_inputs)
        _check_inputs("--image-input", image_inputs)
    return config
