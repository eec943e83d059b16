"""Composable transforms for your own Beam pipelines: `EmbedText` and `EmbedImages`.

Apply them to a PCollection of dicts; each returns an `EmbedResult` of two PCollections:

- `embeddings`: one dict per embedded record: `id`, `embedding` (a 1-D float32 NumPy array),
  `content_sha256`, `model`, `model_sha256`, and the `passthrough` fields (as strings, JSON for
  non-strings, exactly as the job writes them to Parquet);
- `errors`: one dead letter per record that could not be embedded, as a dict with `id`,
  `modality`, `source`, `stage`, `error_type`, `message` and `input` (the columns of the job's
  `errors/`; `input`: the failing element itself, its repr capped at 1 KB, for the dead letters
  of the dict-reading step, which may have no id to name it by; None for the later stages).

`transforms.sinks.run.WriteEmbeddingRun` writes a result as a run folder of the job (Parquet,
`errors/`, `_MANIFEST.json`), which every tool and a later `run --incremental-from` read: the
transforms leave what it needs (the columnar tables, the model's identity) on their result.

Every input record ends up in exactly one of the two: a malformed record is a dead letter, never an
exception. Under the hood they run the job's own DoFns (`transforms.embed.dofns`): the same fixed-shape
batches, one model per worker process shared by its threads (`shared.Shared`, counted by the Beam
metrics `embeddings:text_model_loads` / `image_model_loads`), the same failure isolation, so the
vectors are bit-identical to what `python -m pipeline run` writes for the same records and model.

The model is also loaded once when the transform is applied (as the job's launcher does): a missing
file, an unknown network or layer fails there, naming the argument, before anything runs.

Not done here (the job does them over files it reads itself): the duplicate-id check and
incremental skipping. Ids are the caller's business: make them unique if you join on them.

One level down, the columnar core that both these transforms and the job (`pipeline.graph`) are
built from: `EmbedTextTables` (pyarrow tables of text records in, embedded tables out) and
`EmbedImageRefs` (`ImageRef`s in, embedded tables out), each returning `EmbeddedTables`. The job
feeds them its tables and refs directly (the round trip through dicts halves the text job's
throughput, measured); its duplicate-id check and incremental skipping stay in the job
(`transforms.state`, `pipeline.graph`), not in these arguments.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
import pyarrow as pa

from transforms import quiet
from transforms.embed import decode
from transforms.embed.dofns import (
    CARRIED,
    DEFAULT_MAX_IMAGE_BYTES,
    MAX_DECODE_THREADS,
    SKIPPED,
    EmbedImageBatchesFn,
    EmbedTextBatchesFn,
)
from transforms.embed.models import (
    MAX_IMAGE_BATCH_SIZE,
    MAX_TEXT_BATCH_SIZE,
    ImageModelSpec,
    ModelConfigError,
    TextModelSpec,
    check_batch_size,
    load_image_embedder,
    load_text_embedder,
    model_fields,
)
from transforms.io import fileio
from transforms.io.text_read import TextBatchBuilder, passthrough_value, text_field_problem
from transforms.records import ERRORS, IMAGE, TEXT, ErrorRecord, ImageRef, embedding_schema, input_repr

__all__ = [
    "EmbedText",
    "EmbedImages",
    "EmbedResult",
    "EmbedTextTables",
    "EmbedImageRefs",
    "EmbeddedTables",
    "InlineImageRef",
    "RunBranch",
    "run_branch",
]

# The model specs' fields, as the arguments of these transforms (the loaders' errors name fields):
# the same name, but for the text model's path.
_ARGUMENTS = {"text.path": "model"}


class EmbedResult(NamedTuple):
    """What `EmbedText` / `EmbedImages` return (it unpacks: `embeddings, errors = ...`)."""

    embeddings: beam.PCollection
    errors: beam.PCollection


class EmbeddedTables(NamedTuple):
    """What `EmbedTextTables` / `EmbedImageRefs` return: the columnar outputs of the embedding step."""

    tables: beam.PCollection  # pyarrow tables in the output schema given to the transform
    errors: beam.PCollection  # records.ErrorRecord dead letters


class EmbedTextTables(beam.PTransform):
    """Tables of text records in (`text_read.text_batch_schema`: id, source, line, text,
    content_sha256, passthrough...; one model batch or more each); `EmbeddedTables` out.

    `spec`: the text model (`models.TextModelSpec`); `schema`: the output schema
    (`records.embedding_schema(TEXT, dimension, passthrough)`, its metadata kept). Empty texts,
    bytes that are not UTF-8 and model failures are dead letters; the rest comes out as one table
    per input table.
    """

    def __init__(self, spec: TextModelSpec, schema: pa.Schema, normalize: bool = False, label: Optional[str] = None):
        super().__init__(label)
        self._fn = EmbedTextBatchesFn(spec, schema, normalize)

    def expand(self, tables: beam.PCollection) -> EmbeddedTables:
        out = tables | "EmbedTextBatches" >> beam.ParDo(self._fn).with_outputs(ERRORS, main="tables")
        return EmbeddedTables(out.tables, out[ERRORS])


class EmbedImageRefs(beam.PTransform):
    """`records.ImageRef`s in; `EmbeddedTables` out.

    With `reshuffle` the refs are first spread over the workers; then `spec.batch_size * 8` refs at
    a time are read, decoded and embedded by `dofns.EmbedImageBatchesFn` (a few model batches in
    flight per worker). Windowed input is embedded window by window (`BatchElements` batches per
    window; outputs keep their element's window).
    """

    def __init__(
        self,
        spec: ImageModelSpec,
        schema: pa.Schema,
        normalize: bool = False,
        max_pixels: int = decode.DEFAULT_MAX_IMAGE_PIXELS,
        decode_threads: Optional[int] = None,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        reshuffle: bool = True,
        label: Optional[str] = None,
    ):
        super().__init__(label)
        self._fn = EmbedImageBatchesFn(spec, schema, normalize, max_pixels, decode_threads, max_bytes)
        self._chunk = spec.batch_size * 8  # a few model batches per element
        self._reshuffle = reshuffle

    def expand(self, refs: beam.PCollection) -> EmbeddedTables:
        out = self.embed_batches(refs)
        return EmbeddedTables(out.tables, out[ERRORS])

    def embed_batches(self, refs: beam.PCollection, **side) -> beam.pvalue.DoOutputsTuple:
        """The steps of `expand` with every output of the embedding DoFn: `tables`, ERRORS, and the
        job's SKIPPED and CARRIED (`pipeline.graph` adds its duplicate check as the `duplicates`
        side input and hands on `incremental.AttachedRef`s)."""
        # The image DoFn keeps batches in flight across elements and emits them later, each in the
        # window of the element it came from (`EmbedImageBatchesFn`): windowed input works as text's.
        if self._reshuffle:
            refs = refs | "SpreadImages" >> beam.Reshuffle()
        out = (
            refs
            | "BatchImageRefs" >> beam.BatchElements(min_batch_size=self._chunk, max_batch_size=self._chunk)
            | "EmbedImageBatches" >> beam.ParDo(self._fn, **side).with_outputs(ERRORS, SKIPPED, CARRIED, main="tables")
        )
        return out


@dataclasses.dataclass(frozen=True)
class InlineImageRef(ImageRef):
    """An image whose bytes travel with the record (`image_bytes`) instead of being read from `uri`."""

    data: Optional[bytes] = None


def _error_dict(error: ErrorRecord) -> dict:
    return dataclasses.asdict(error)


@dataclasses.dataclass(frozen=True)
class RunBranch:
    """What `EmbedText` / `EmbedImages` leave on their result for `WriteEmbeddingRun`: one modality
    of a run, as the job's own branch would write it."""

    modality: str
    model: dict  # the manifest's `models` entry: name, sha256, dimension, details
    options: dict  # the manifest's `options` entries: `text_model` / `image_model`, passthrough, normalize
    schema: pa.Schema  # the job's output schema of the modality, its metadata included (no provenance column)
    tables: beam.PCollection  # the embedded tables, in `schema`
    errors: beam.PCollection  # the dead letters, as records.ErrorRecord


_BRANCH_ATTRIBUTE = "_embedding_run_branch"


def run_branch(result: Any) -> RunBranch:
    """The `RunBranch` of an `EmbedText` / `EmbedImages` result (or of its `embeddings`); TypeError
    for anything else (e.g. embeddings filtered or mapped after the transform)."""
    embeddings = getattr(result, "embeddings", result)
    branch = getattr(embeddings, _BRANCH_ATTRIBUTE, None)
    if not isinstance(branch, RunBranch):
        raise TypeError(
            f"expected the result of EmbedText or EmbedImages (or its .embeddings), got {type(result).__name__}; "
            "apply WriteEmbeddingRun to the result as the transform returned it"
        )
    return branch


def _absolute(path: str) -> str:
    """A local path made absolute (as the job records paths, so tools find them from any folder)."""
    return path if fileio.is_remote(path) else os.path.abspath(os.path.expanduser(path))


def _run_schema(modality: str, dimension: int, passthrough: Sequence[str], normalize: bool, details: Mapping) -> pa.Schema:
    """The job's output schema (`pipeline.graph.output_schema`) without its provenance column."""
    metadata = {"dimension": str(dimension), "model": str(details.get("name", "")), "normalized": str(normalize).lower()}
    if modality == IMAGE:
        metadata.update(
            backend=str(details.get("backend", "tensorflow")),
            precision=str(details.get("precision", "f32")),
            decoder=str(details.get("decoder", "pillow")),
        )
    return embedding_schema(modality, dimension, passthrough, metadata=metadata)


def _rows(table: pa.Table, passthrough: Sequence[str]) -> Iterator[dict]:
    """One dict per row of an embedded table (the job's output schema), with a float32 vector each."""
    n = table.num_rows
    vectors = table.column("embedding").combine_chunks()
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(n, vectors.type.list_size)
    ids = table.column("id").to_pylist()
    columns = {name: table.column(name).to_pylist() for name in ("content_sha256", "model", "model_sha256", *passthrough)}
    for i in range(n):
        row = {"id": ids[i], "embedding": matrix[i].copy()}  # its own 1-D array, not a view of the batch
        row.update((name, values[i]) for name, values in columns.items())
        yield row


def _load(transform: str, loader, spec):
    """Load a model in the launcher; a bad argument raises ModelConfigError naming it
    (`EmbedImages(layer=...) 'x': no such layer ...`)."""
    quiet.quiet_start()  # as the DoFns' setup: TensorFlow's start-up lines hidden, OpenVINO telemetry off
    try:
        return loader(spec)
    except ModelConfigError as exc:
        names = {}
        for field in model_fields(exc.modality):
            key = f"{exc.modality}.{field}"
            names[key] = f"{transform}({_ARGUMENTS.get(key, field)}=...)"
        raise ModelConfigError(exc.field, exc.value, exc.reason, exc.modality, names=names) from exc


def _check_common(name: str, passthrough: Sequence[str], batch_size: int, maximum: int, *fields: str) -> tuple[str, ...]:
    if isinstance(passthrough, str):
        raise TypeError(f"{name}: passthrough must be a sequence of field names, not the string {passthrough!r}")
    passthrough = tuple(passthrough)
    if not all(isinstance(p, str) and p for p in passthrough):
        raise TypeError(f"{name}: passthrough must hold field names (strings), got {passthrough!r}")
    problem = check_batch_size("batch_size", batch_size, maximum)
    if problem:
        raise ValueError(f"{name}: {problem}")
    for field in fields:
        if not isinstance(field, str) or not field:
            raise ValueError(f"{name}: field names must be non-empty strings, got {field!r}")
    return passthrough


def _record_id(record: Mapping, id_field: str) -> Optional[str]:
    raw = record.get(id_field)
    return None if raw is None or raw == "" else passthrough_value(raw)


class _TextRecordsToTableFn(beam.DoFn):
    """A batch of dicts in; one table in the job's text batch schema out, a dead letter per bad record.

    The checks and messages are the job's reader's (`ReadTextFileFn`); a record without an id is a
    `MissingId` dead letter (the job would name it after its file and line, which a dict has not).
    Each dead letter keeps the record (`input`, capped). A `text` passthrough is the embedded text
    itself (the batch's `text` column), as the job's `--passthrough text`."""

    def __init__(self, text_field: str, id_field: str, passthrough: Sequence[str]):
        self._text_field = text_field
        self._id_field = id_field
        self._passthrough = tuple(name for name in passthrough if name != "text")  # `text`: the batch's text column

    def _problem(self, record: Any, record_id: Optional[str]) -> Optional[ErrorRecord]:
        if not isinstance(record, Mapping):
            message = f"expected a dict, got {type(record).__name__}"
            return ErrorRecord(None, TEXT, None, "read", "InvalidRecord", message, input_repr(record))
        if record_id is None:
            message = f"record has no {self._id_field!r} value (set id_field)"
            return ErrorRecord(None, TEXT, None, "read", "MissingId", message, input_repr(record))
        problem = text_field_problem(record, self._text_field, "text_field")
        return ErrorRecord(record_id, TEXT, None, "read", "InvalidTextField", problem, input_repr(record)) if problem else None

    def process(self, records: Sequence[Any]) -> Iterator:
        batch = TextBatchBuilder(self._passthrough)
        for record in records:
            record_id = _record_id(record, self._id_field) if isinstance(record, Mapping) else None
            error = self._problem(record, record_id)
            if error is not None:
                yield beam.pvalue.TaggedOutput(ERRORS, error)
                continue
            batch.add(record_id, None, None, record[self._text_field], record)
        if len(batch):
            yield batch.take()


class EmbedText(beam.PTransform):
    """Dicts with a text and an id in; `EmbedResult(embeddings, errors)` out.

    `model` is a `.keras` file made by `train-text` (local or gs://). Records are embedded in
    batches of `batch_size` (at most `models.MAX_TEXT_BATCH_SIZE`; a short batch runs at its own
    size, one traced function for all); `normalize`
    L2-normalises the vectors. Dead letters: not a dict, no id (`MissingId`), a missing, null,
    non-string or NUL-bearing text (`InvalidTextField`), empty text or text with no word the
    model knows how to standardise (`EmptyText`), a model failure (`embed` stage).
    `passthrough=["text"]` keeps the embedded text (the `text_field` value) in a `text` column, as
    the job's `--passthrough text`. Windowed input is embedded window by window.
    """

    def __init__(
        self,
        model: str,
        text_field: str = "text",
        id_field: str = "id",
        passthrough: Sequence[str] = (),
        batch_size: int = 1024,
        normalize: bool = False,
        unsafe_loading: bool = False,
        label: Optional[str] = None,
    ):
        super().__init__(label)
        self._passthrough = _check_common("EmbedText", passthrough, batch_size, MAX_TEXT_BATCH_SIZE, text_field, id_field)
        if not isinstance(model, str) or not model:
            raise ValueError(f"EmbedText: model must be the path of a .keras text model, got {model!r}")
        if len(set(self._passthrough)) != len(self._passthrough):
            raise ValueError(f"EmbedText: passthrough {list(self._passthrough)!r} names a column twice")
        embedding_schema(TEXT, 1, self._passthrough)  # a passthrough name that clashes with an output field fails here
        self._spec = TextModelSpec(model, batch_size, unsafe_loading)
        self._text_field = text_field
        self._id_field = id_field
        self._normalize = normalize

    def expand(self, records: beam.PCollection) -> EmbedResult:
        embedder = _load("EmbedText", load_text_embedder, self._spec)
        path = _absolute(self._spec.path)
        model = {
            "name": embedder.model_name,
            "sha256": embedder.model_sha256,
            "dimension": embedder.dimension,
            "details": {"path": path, "sequence_length": embedder.sequence_length},
        }
        schema = _run_schema(TEXT, embedder.dimension, self._passthrough, self._normalize, model)
        del embedder
        size = self._spec.batch_size
        tables = (
            records
            | "BatchTextRecords" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "TextRecordsToTables"
            >> beam.ParDo(_TextRecordsToTableFn(self._text_field, self._id_field, self._passthrough)).with_outputs(
                ERRORS, main="tables"
            )
        )
        embedded = tables.tables | "EmbedTextTables" >> EmbedTextTables(self._spec, schema, self._normalize)
        embeddings = embedded.tables | "TextEmbeddingDicts" >> beam.FlatMap(_rows, self._passthrough)
        records = (tables[ERRORS], embedded.errors) | "AllTextErrors" >> beam.Flatten()
        errors = records | "TextErrorDicts" >> beam.Map(_error_dict)
        options = {
            "text_model": dataclasses.asdict(dataclasses.replace(self._spec, path=path)),
            "text_field": self._text_field,
            "text_id_field": self._id_field,
            "passthrough": list(self._passthrough),
            "normalize": self._normalize,
        }
        setattr(embeddings, _BRANCH_ATTRIBUTE, RunBranch(TEXT, model, options, schema, embedded.tables, records))
        return EmbedResult(embeddings, errors)


class _ImageRecordToRefFn(beam.DoFn):
    """A dict in; an ImageRef (uri) or InlineImageRef (bytes) out, or a dead letter."""

    def __init__(self, uri_field: str, bytes_field: str, id_field: str, passthrough: Sequence[str], max_bytes: int):
        self._uri_field = uri_field
        self._bytes_field = bytes_field
        self._id_field = id_field
        self._passthrough = tuple(passthrough)
        self._max_bytes = max_bytes

    def process(self, record: Any) -> Iterator:
        if not isinstance(record, Mapping):
            message = f"expected a dict, got {type(record).__name__}"
            yield beam.pvalue.TaggedOutput(
                ERRORS, ErrorRecord(None, IMAGE, None, "read", "InvalidRecord", message, input_repr(record))
            )
            return
        uri = record.get(self._uri_field)
        uri = uri.strip() if isinstance(uri, str) and uri.strip() else None
        data = record.get(self._bytes_field)
        record_id = _record_id(record, self._id_field) or uri  # as in the job's manifests: the uri by default
        source = uri or f"<{self._bytes_field}>"

        def dead(error_type: str, message: str):  # the record kept (capped; long bytes shortened first)
            error = ErrorRecord(record_id, IMAGE, source, "read", error_type, message, input_repr(record))
            return beam.pvalue.TaggedOutput(ERRORS, error)

        if record_id is None:
            yield dead(
                "MissingId", f"record has no {self._id_field!r} value and no {self._uri_field!r} to name it (set id_field)"
            )
            return
        passthrough = {name: passthrough_value(record.get(name)) for name in self._passthrough}
        if data is not None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                yield dead("InvalidRecord", f"{self._bytes_field!r} is a {type(data).__name__}, not bytes")
                return
            if len(data) > self._max_bytes:
                yield dead("FileTooLarge", f"image is larger than {self._max_bytes:,} bytes; not decoded (see max_bytes)")
                return
            yield InlineImageRef(id=record_id, uri=source, passthrough=passthrough, data=bytes(data))
        elif uri is not None:
            yield ImageRef(id=record_id, uri=uri, passthrough=passthrough)
        else:
            yield dead(
                "InvalidRecord", f"record has neither a {self._uri_field!r} value nor {self._bytes_field!r} (set uri_field)"
            )


class EmbedImages(beam.PTransform):
    """Dicts holding an image (`uri`: a local path or gs:// uri, or the bytes in `image_bytes`) in;
    `EmbedResult(embeddings, errors)` out.

    `model` is a Keras Applications network name (see `transforms.embed.models.NETWORKS`; `weights`:
    `imagenet`, `none` or a weights file; `alpha`, `image_size`) or a `.keras` classifier cut at
    `layer` (default: the layer feeding the last one; `preprocess`: a network whose
    `preprocess_input` to apply). The id defaults to the uri; a record with only bytes needs an id.
    Dead letters: not a dict, no id, neither uri nor bytes, an unreadable, too large (`max_bytes`),
    corrupt or too many pixels (`max_pixels`) image, a model failure. With `reshuffle` (default, as
    in the job) the images are spread over the workers before batching. Windowed input is embedded
    window by window, as `EmbedText` does. `decoder`: "pillow" (default) or
    "opencv" (the `fast-decode` extra: about twice as fast on JPEGs, pixels ~1/255 apart, a
    different `model_sha256`; see `transforms.embed.decode`).
    """

    def __init__(
        self,
        model: str,
        weights: str = "imagenet",
        alpha: Optional[float] = None,
        image_size: Optional[int] = None,
        layer: Optional[str] = None,
        preprocess: Optional[str] = None,
        uri_field: str = "uri",
        bytes_field: str = "image_bytes",
        id_field: str = "id",
        passthrough: Sequence[str] = (),
        batch_size: int = 32,
        normalize: bool = False,
        max_pixels: int = decode.DEFAULT_MAX_IMAGE_PIXELS,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        decode_threads: Optional[int] = None,
        unsafe_loading: bool = False,
        reshuffle: bool = True,
        label: Optional[str] = None,
        decoder: str = "pillow",
    ):
        super().__init__(label)
        self._passthrough = _check_common(
            "EmbedImages", passthrough, batch_size, MAX_IMAGE_BATCH_SIZE, uri_field, bytes_field, id_field
        )
        if decode_threads is not None and (
            isinstance(decode_threads, bool)
            or not isinstance(decode_threads, int)
            or not 0 < decode_threads <= MAX_DECODE_THREADS
        ):
            raise ValueError(
                f"EmbedImages: decode_threads must be an integer from 1 to {MAX_DECODE_THREADS}, got {decode_threads!r}"
            )
        if not isinstance(model, str) or not model:
            raise ValueError(f"EmbedImages: model must be a network name or a .keras file, got {model!r}")
        if len(set(self._passthrough)) != len(self._passthrough):
            raise ValueError(f"EmbedImages: passthrough {list(self._passthrough)!r} names a column twice")
        embedding_schema(IMAGE, 1, self._passthrough)  # a clashing passthrough name fails here
        self._spec = ImageModelSpec(
            model=model,
            weights=weights,
            image_size=image_size,
            alpha=alpha,
            layer=layer,
            preprocess=preprocess,
            batch_size=batch_size,
            unsafe_loading=unsafe_loading,
            decoder=decoder,
        )
        self._fields = (uri_field, bytes_field, id_field)
        self._normalize = normalize
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes
        self._decode_threads = decode_threads
        self._reshuffle = reshuffle

    def expand(self, records: beam.PCollection) -> EmbedResult:
        embedder = _load("EmbedImages", load_image_embedder, self._spec)
        spec = self._spec
        if not spec.is_network:
            spec = dataclasses.replace(spec, model=_absolute(spec.model))
        if spec.weights not in (None, "", "imagenet", "none"):
            spec = dataclasses.replace(spec, weights=_absolute(spec.weights))
        details = {
            "model": spec.model,
            "weights": spec.weights,
            "input_size": list(embedder.input_size),
            "layer": spec.layer,
            "alpha": spec.alpha,
            **embedder.backend_details,
        }
        model = {
            "name": embedder.model_name,
            "sha256": embedder.model_sha256,
            "dimension": embedder.dimension,
            "details": details,
        }
        schema = _run_schema(
            IMAGE, embedder.dimension, self._passthrough, self._normalize, {"name": embedder.model_name, **details}
        )
        # as the job's manifest: the backend and precision the launcher resolved ("auto" is not a choice a tool can repeat)
        spec = dataclasses.replace(
            spec, backend=details.get("backend", spec.backend), precision=details.get("precision", spec.precision)
        )
        del embedder
        refs = records | "ImageRecordsToRefs" >> beam.ParDo(
            _ImageRecordToRefFn(*self._fields, self._passthrough, self._max_bytes)
        ).with_outputs(ERRORS, main="refs")
        embedded = refs.refs | "EmbedImageRefs" >> EmbedImageRefs(
            self._spec,
            schema,
            self._normalize,
            self._max_pixels,
            self._decode_threads,
            self._max_bytes,
            reshuffle=self._reshuffle,
        )
        embeddings = embedded.tables | "ImageEmbeddingDicts" >> beam.FlatMap(_rows, self._passthrough)
        records = (refs[ERRORS], embedded.errors) | "AllImageErrors" >> beam.Flatten()
        errors = records | "ImageErrorDicts" >> beam.Map(_error_dict)
        options = {
            "image_model": dataclasses.asdict(spec),
            "image_uri_field": self._fields[0],
            "image_id_field": self._fields[2],
            "passthrough": list(self._passthrough),
            "normalize": self._normalize,
        }
        setattr(embeddings, _BRANCH_ATTRIBUTE, RunBranch(IMAGE, model, options, schema, embedded.tables, records))
        return EmbedResult(embeddings, errors)
