"""Batched embedding DoFns: text tables and image batches in, output tables and dead letters out.

Each DoFn acquires its model through `shared.Shared` in `setup`, so every thread of a worker
process shares one copy that is loaded once. A batch that fails inside the model is split and
retried until the failing records are isolated: only they become dead letters.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import threading
from typing import Callable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.utils import shared

from transforms import progress, quiet
from transforms.embed import decode
from transforms.embed.devices import log_model_devices
from transforms.embed.models import ImageModelSpec, TextModelSpec, load_image_embedder, load_text_embedder
from transforms.io import fileio
from transforms.records import ERRORS, IMAGE, TEXT, ErrorRecord, ImageRef
from transforms.state.carry import CARRIED, CarrySlice
from transforms.state.dedup import duplicate_reason
from transforms.state.incremental import SKIPPED, AttachedRef, attached, is_unchanged
from transforms.state.keys import image_content_key, split_positions

__all__ = [
    "ERRORS",
    "MAX_DECODE_THREADS",
    "SKIPPED",
    "CARRIED",
    "EmbedTextBatchesFn",
    "EmbedImageBatchesFn",
    "embed_isolating_failures",
    "NonFiniteEmbedding",
    "EmptyText",
]

METRICS_NAMESPACE = "embeddings"


class NonFiniteEmbedding(ValueError):
    """The model produced NaN or infinity for this record."""


class EmptyText(ValueError):
    """The text is empty or only whitespace: there is nothing to embed."""


def embed_isolating_failures(
    embed: Callable[[Sequence], np.ndarray], items: Sequence
) -> tuple[np.ndarray, list[Optional[BaseException]]]:
    """Embed `items`; when a batch fails, split it and retry the halves until the failing items are
    isolated. Returns the vectors (rows of failed items are undefined) and a per-item error or None."""
    errors: list[Optional[BaseException]] = [None] * len(items)
    vectors: Optional[np.ndarray] = None

    def run(lo: int, hi: int) -> None:
        nonlocal vectors
        try:
            result = np.asarray(embed(items[lo:hi]), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - any model failure is isolated, then reported
            if hi - lo == 1:
                errors[lo] = exc
                return
            mid = (lo + hi) // 2
            run(lo, mid)
            run(mid, hi)
            return
        if vectors is None:
            vectors = np.zeros((len(items), result.shape[1]), dtype=np.float32)
        vectors[lo:hi] = result
        bad = ~np.isfinite(result).all(axis=1)
        for offset in np.flatnonzero(bad):
            errors[lo + offset] = NonFiniteEmbedding("the model returned NaN or infinity for this record")

    if items:
        run(0, len(items))
    if vectors is None:
        vectors = np.zeros((len(items), 0), dtype=np.float32)
    return vectors, errors


def _l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def _output_table(
    base: pa.Table, keep: np.ndarray, vectors: np.ndarray, model_name: str, model_sha256: str, schema: pa.Schema
) -> pa.Table:
    """Rows `keep` of `base` with their embeddings and the model identity, in the output schema."""
    rows = base.take(pa.array(keep, type=pa.int64()))
    dimension = schema.field("embedding").type.list_size
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    columns = {}
    for field in schema:
        if field.name == "embedding":
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dimension)
        elif field.name == "model":
            columns["model"] = pa.array([model_name] * len(keep), pa.string())
        elif field.name == "model_sha256":
            columns["model_sha256"] = pa.array([model_sha256] * len(keep), pa.string())
        else:
            columns[field.name] = rows.column(field.name).cast(field.type)
    return pa.Table.from_pydict(columns, schema=schema)


class _SharedModelDoFn(beam.DoFn):
    """Acquires one embedder per worker process (shared by its threads) and counts real loads."""

    def __init__(self, spec, loader: Callable, modality: str):
        self._spec = spec
        self._loader = loader
        self._modality = modality
        self._shared = shared.Shared()
        self._model_loads = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{modality}_model_loads")
        self._gpu_model_loads = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{modality}_model_loads_on_gpu")
        self._pending_load_count = 0
        self._pending_gpu_loads = 0  # loads in a process whose TensorFlow sees a GPU (logged at load)
        self._embedded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{modality}_embedded")
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{modality}_failed")

    def setup(self):
        quiet.quiet_start()  # before the model loads: TensorFlow's start-up lines hidden, telemetry off

        def load():
            self._pending_load_count += 1  # only the DoFn instance that really loaded counts it
            self._pending_gpu_loads += log_model_devices(self._modality)
            return self._loader(self._spec)

        self._embedder = self._shared.acquire(load, tag=self._spec.cache_key())

    def _count(self, embedded: int, failed: int, skipped: int) -> None:
        """Beam counters (`<modality>_embedded`, `<modality>_failed`) and the progress line for one
        batch's outcome; in the DoFn's own thread (Beam's metrics are per thread)."""
        self._failed.inc(failed)
        if embedded:
            self._embedded.inc(embedded)
        progress.add(self._modality, embedded=embedded, failed=failed, skipped=skipped)

    def _report_loads(self):
        if self._pending_load_count:
            self._model_loads.inc(self._pending_load_count)
            self._pending_load_count = 0
        if self._pending_gpu_loads:
            self._gpu_model_loads.inc(self._pending_gpu_loads)
            self._pending_gpu_loads = 0


class EmbedTextBatchesFn(_SharedModelDoFn):
    """Embeds a table of text records (id, source, line, text, content_sha256, passthrough...)."""

    def __init__(self, spec: TextModelSpec, schema: pa.Schema, normalize: bool = False):
        super().__init__(spec, load_text_embedder, TEXT)
        self._schema = schema
        self._normalize = normalize

    def process(self, table: pa.Table) -> Iterator:
        """Empty texts become dead letters, the rest is embedded; one output table per input table.
        (The job drops its duplicates and unchanged records before: `transforms.state.screen`.)"""
        self._report_loads()
        table, undecodable = _without_invalid_utf8(table)  # a dead letter each, not a crash (issue 19)
        texts = table.column("text").to_pylist()
        ids = table.column("id").to_pylist()
        sources = table.column("source").to_pylist()
        rejected, candidates = _screen_texts(texts, ids, sources)
        rejected = undecodable + rejected
        keep, vectors, failed = self._embed(texts, candidates, ids, sources)
        for error in rejected + failed:
            yield beam.pvalue.TaggedOutput(ERRORS, error)
        self._count(embedded=len(keep), failed=len(rejected) + len(failed), skipped=0)
        if keep:
            yield _output_table(
                table, np.array(keep), vectors, self._embedder.model_name, self._embedder.model_sha256, self._schema
            )

    def _embed(self, texts: list, candidates: list[int], ids: list, sources: list) -> tuple[list[int], np.ndarray, list]:
        """Embed the `candidates` rows: (rows embedded, their vectors, dead letters of the others)."""
        vectors, errors = embed_isolating_failures(self._embedder.embed, [texts[i] for i in candidates])
        keep, failed = [], []
        for position, error in zip(candidates, errors):
            if error is None:
                keep.append(position)
            else:
                failed.append(_text_embed_error(ids[position], sources[position], error))
        good = np.array([e is None for e in errors], dtype=bool)
        vectors = vectors[good] if len(candidates) else vectors
        if self._normalize:
            vectors = _l2_normalize(vectors)
        return keep, vectors, failed


def _without_invalid_utf8(table: pa.Table) -> tuple[pa.Table, list[ErrorRecord]]:
    """(the rows whose id, text and source are valid UTF-8, a dead letter for each other row).

    A table from the job's reader never holds such bytes (they are dead letters there already); one
    handed to `EmbedTextTables` by other code may, and `to_pylist` would crash the run on it."""
    bad = np.zeros(table.num_rows, dtype=bool)
    for name in ("id", "text", "source"):
        column = table.column(name)
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            for i, value in enumerate(column.cast(pa.binary()).to_pylist()):
                if value is not None and not _decodes(value):
                    bad[i] = True
    if not bad.any():
        return table, []
    ids, sources = (table.column(name).cast(pa.binary()).to_pylist() for name in ("id", "source"))
    errors = [
        ErrorRecord(
            (ids[i] or b"").decode("utf-8", "backslashreplace"),
            TEXT,
            (sources[i] or b"").decode("utf-8", "backslashreplace"),
            "read",
            "InvalidUtf8",
            "the record's id, text or source holds bytes that are not UTF-8",
        )
        for i in np.flatnonzero(bad).tolist()
    ]
    return table.filter(pa.array(~bad)), errors


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _screen_texts(texts: list, ids: list, sources: list) -> tuple[list[ErrorRecord], list[int]]:
    """(dead letters, rows to embed): empty or whitespace-only texts are dead letters, in row order."""
    rejected, candidates = [], []
    for i, text in enumerate(texts):
        if not text or not text.strip():
            rejected.append(
                ErrorRecord.from_exception(ids[i], TEXT, sources[i], "preprocess", EmptyText("text is empty or only whitespace"))
            )
        else:
            candidates.append(i)
    return rejected, candidates


def _text_embed_error(record_id: str, source: Optional[str], error: BaseException) -> ErrorRecord:
    """The dead letter of a text the model failed on; NaN from zero tokens (0/0 mean) is an EmptyText."""
    if isinstance(error, NonFiniteEmbedding):
        empty = EmptyText("text has no words left after the model's standardization (e.g. only punctuation)")
        return ErrorRecord.from_exception(record_id, TEXT, source, "preprocess", empty)
    return ErrorRecord.from_exception(record_id, TEXT, source, "embed", error)


_SKIP = object()


DEFAULT_MAX_IMAGE_BYTES = 256 << 20
MAX_DECODE_THREADS = 64  # each thread holds a batch of images in flight (decode_threads + 1 batches)


def _load_image(
    ref: ImageRef,
    size: tuple[int, int],
    max_pixels: int,
    prior=None,
    model_sha256: str = "",
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    decoder: str = "pillow",
):
    """(pixels, sha256), (None, ErrorRecord), or (_SKIP, ckey) when an earlier run embedded these bytes.

    `prior`: the `ckey`s that earlier runs stored for this id (`incremental.AttachPriorKeys`);
    `decoder`: `transforms.embed.decode.decode_image`'s (the model spec's `decoder`)."""
    try:
        inline = getattr(ref, "data", None)  # bytes given with the record (transforms.embed.api.InlineImageRef)
        data = inline if inline is not None else fileio.read_bytes(ref.uri, limit=max_bytes)
    except fileio.StorageUnavailable:
        raise  # storage is down, not this file: the run fails (issue 12) rather than dead-letter them all
    except Exception as exc:  # noqa: BLE001 - missing file, permission, network: a dead letter
        if isinstance(exc, fileio.FileTooLarge):
            return None, ErrorRecord.from_exception(ref.id, IMAGE, ref.uri, "read", exc)
        message = "file not found" if "not found" in str(exc).lower() or isinstance(exc, FileNotFoundError) else None
        error = ErrorRecord.from_exception(ref.id, IMAGE, ref.uri, "read", exc)
        if message:
            error = ErrorRecord(ref.id, IMAGE, ref.uri, "read", "FileNotFoundError", f"{message}: {ref.uri}")
        return None, error
    digest = hashlib.sha256(data).hexdigest()
    if prior and is_unchanged(prior, digest, model_sha256):
        return _SKIP, image_content_key(digest, model_sha256)
    try:
        return decode.decode_image(data, size, max_pixels, decoder), digest
    except Exception as exc:  # noqa: BLE001 - every decode failure is this record's, not the job's
        return None, ErrorRecord.from_exception(ref.id, IMAGE, ref.uri, "decode", exc)


_MODEL_SLOTS: dict[str, threading.Semaphore] = {}  # one per shared model in this process
_MODEL_SLOTS_LOCK = threading.Lock()


@dataclasses.dataclass
class _ImageBatchResult:
    """What one batch of images became; counted and emitted by the DoFn's own thread."""

    table: Optional[pa.Table] = None
    errors: list = dataclasses.field(default_factory=list)
    skipped: int = 0
    carried: list = dataclasses.field(default_factory=list)  # (earlier position, uri) of skipped images


class EmbedImageBatchesFn(_SharedModelDoFn):
    """Reads, decodes and embeds a list of ImageRefs.

    Each batch of `batch_size` images is read, decoded and embedded by one task of a small thread
    pool (one thread per CPU by default), and a few tasks are kept in flight across elements: while
    one thread decodes (Pillow releases the GIL), another runs the model (so do TensorFlow and
    OpenVINO), so both cores stay busy. TensorFlow runs one model call at a time; OpenVINO one per
    stream (`ImageEmbedder.concurrent_calls`). Results are emitted in order by the DoFn's own thread, which also does
    all metric counting (Beam's metrics are per thread).
    """

    def __init__(
        self,
        spec: ImageModelSpec,
        schema: pa.Schema,
        normalize: bool = False,
        max_pixels: int = decode.DEFAULT_MAX_IMAGE_PIXELS,
        decode_threads: Optional[int] = None,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ):
        super().__init__(spec, load_image_embedder, IMAGE)
        self._schema = schema
        self._normalize = normalize
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes
        self._decode_threads = decode_threads
        self._passthrough = [f.name for f in schema][schema.names.index("model_sha256") + 1 :]

    def setup(self):
        super().setup()
        self._threads = self._decode_threads or max(2, os.cpu_count() or 2)
        # TensorFlow: one model call at a time (two are no faster, and hold twice the activations).
        # OpenVINO: one call per stream (each stream is a share of the cores; see transforms.embed.backends).
        with _MODEL_SLOTS_LOCK:
            self._model_slots = _MODEL_SLOTS.setdefault(
                self._spec.cache_key(), threading.BoundedSemaphore(self._embedder.concurrent_calls)
            )
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="embed-images")

    def teardown(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def start_bundle(self):
        self._pending = collections.deque()

    def process(
        self,
        refs: Sequence,
        window=beam.DoFn.WindowParam,  # before `duplicates`: Beam fills a plain default after them wrongly
        timestamp=beam.DoFn.TimestampParam,
        duplicates: Optional[dict] = None,
    ) -> Iterator:
        """`refs`: ImageRefs, or the `incremental.AttachedRef`s of `incremental.AttachPriorKeys` (the job's
        incremental runs); `duplicates`: the job's {id: first occurrence} of repeated ids, or None.

        A batch in flight remembers its element's window and timestamp, and its outputs are emitted
        in them whenever they are ready (in a later element's call, or at the end of the bundle)."""
        self._report_loads()
        pairs = [attached(r) for r in refs]
        if duplicates:
            unique = []
            for pair in pairs:
                ref = pair.ref
                reason = duplicate_reason(ref.id, (ref.uri, ref.line), duplicates)
                if reason:
                    yield from self._emit(
                        _ImageBatchResult(errors=[ErrorRecord(ref.id, IMAGE, ref.uri, "read", "DuplicateId", reason)])
                    )
                else:
                    unique.append(pair)
            pairs = unique
        batch = self._embedder.spec.batch_size
        for start in range(0, len(pairs), batch):
            self._pending.append((self._pool.submit(self._embed_batch, pairs[start : start + batch]), timestamp, window))
            while len(self._pending) > self._threads + 1:
                yield from self._emit_oldest()

    def finish_bundle(self):
        while self._pending:
            yield from self._emit_oldest()

    def _emit_oldest(self) -> Iterator:
        """The outputs of the oldest batch in flight, in the window of the element it came from."""
        from apache_beam.utils.windowed_value import WindowedValue

        future, timestamp, window = self._pending.popleft()
        for item in self._emit(future.result()):
            if isinstance(item, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(item.tag, WindowedValue(item.value, timestamp, (window,)))
            else:
                yield WindowedValue(item, timestamp, (window,))

    def _emit(self, result: _ImageBatchResult) -> Iterator:
        """Count a finished batch and hand its outputs to Beam (in the DoFn's thread)."""
        embedded = result.table.num_rows if result.table is not None else 0
        self._count(embedded=embedded, failed=len(result.errors), skipped=result.skipped)
        for error in result.errors:
            yield beam.pvalue.TaggedOutput(ERRORS, error)
        if result.skipped:
            yield beam.pvalue.TaggedOutput(SKIPPED, result.skipped)
        for position, uri in result.carried:  # the same shape as the text check's carry rows
            files, groups, rows = split_positions(np.array([position], dtype=np.uint64))
            yield beam.pvalue.TaggedOutput(
                CARRIED,
                (
                    (int(files[0]), int(groups[0])),
                    CarrySlice(rows.astype(np.uint32), [uri], np.zeros(1, np.uint8), np.zeros(1, np.int64)),
                ),
            )
        if embedded:
            yield result.table

    def _embed_batch(self, pairs: list[AttachedRef]) -> _ImageBatchResult:
        """Read, decode and embed one batch of (ref, earlier ckeys, their positions) (runs in a pool
        thread). A skipped image whose earlier row's position is known (carry-over) is carried."""
        embedder = self._embedder
        result = _ImageBatchResult()
        ok_refs, pixels, digests = [], [], []
        for ref, prior, positions in pairs:
            value, extra = _load_image(
                ref, embedder.input_size, self._max_pixels, prior, embedder.model_sha256, self._max_bytes, embedder.spec.decoder
            )
            if value is _SKIP:
                result.skipped += 1
                if positions:
                    result.carried.append((positions[prior.index(extra)], ref.uri))
            elif value is None:
                result.errors.append(extra)
            else:
                ok_refs.append(ref)
                pixels.append(value)
                digests.append(extra)
        if not ok_refs:
            return result
        stacked = np.stack(pixels)
        with self._model_slots:  # as many model calls as the backend runs in parallel; other threads decode
            vectors, errors = embed_isolating_failures(
                lambda rows: embedder.embed(stacked[rows.start : rows.stop]),
                range(len(ok_refs)),  # views, no copies
            )
        keep = [i for i, e in enumerate(errors) if e is None]
        for i, error in enumerate(errors):
            if error is not None:
                result.errors.append(ErrorRecord.from_exception(ok_refs[i].id, IMAGE, ok_refs[i].uri, "embed", error))
        if not keep:
            return result
        vectors = vectors[keep]
        if self._normalize:
            vectors = _l2_normalize(vectors)
        base = {
            "id": [ok_refs[i].id for i in keep],
            "source": [ok_refs[i].uri for i in keep],
            "content_sha256": [digests[i] for i in keep],
        }
        for name in self._passthrough:
            base[name] = [ok_refs[i].passthrough.get(name) for i in keep]
        table = pa.table({k: pa.array(v, pa.string()) for k, v in base.items()})
        result.table = _output_table(
            table, np.arange(len(keep)), vectors, embedder.model_name, embedder.model_sha256, self._schema
        )
        return result
