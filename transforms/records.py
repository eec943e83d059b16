"""The records that flow between stages, and the Parquet schemas they end up in.

Every value that leaves a stage carries the record's id, so that an embedding or an error can
always be traced back to its input.
"""

from __future__ import annotations

import dataclasses
import reprlib
from typing import Mapping, Optional, Sequence

import pyarrow as pa

__all__ = [
    "TEXT",
    "IMAGE",
    "MODALITIES",
    "STAGES",
    "ERRORS",
    "ImageRef",
    "ErrorRecord",
    "embedding_schema",
    "ERROR_SCHEMA",
    "MAX_INPUT_CHARS",
    "input_repr",
    "error_table",
    "ErrorBatch",
    "failed_counts",
]

TEXT = "text"
IMAGE = "image"
MODALITIES = (TEXT, IMAGE)
STAGES = ("read", "decode", "preprocess", "embed", "write")
ERRORS = "errors"  # the tagged output every stage sends its ErrorRecords to


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image to embed: where its bytes are and what to call it."""

    id: str
    uri: str
    passthrough: Mapping[str, Optional[str]] = dataclasses.field(default_factory=dict)
    line: Optional[int] = None  # the manifest row it came from (None when found by a glob)


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    """A record that could not be embedded, and why (one row of `DIR/errors/`)."""

    id: str
    modality: str
    source: str
    stage: str
    error_type: str
    message: str
    input: Optional[str] = None  # the failing element itself (its repr, capped: `input_repr`) when no id can name it

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}")
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")

    @classmethod
    def from_exception(cls, id: str, modality: str, source: str, stage: str, exc: BaseException) -> ErrorRecord:
        """One clear line from an exception: its type and first line of message, no traceback."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        if len(message) > 500:
            message = message[:497] + "..."
        return cls(id, modality, source, stage, type(exc).__name__, message)


ERROR_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("modality", pa.string()),
        ("source", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("input", pa.string()),  # nullable: the failing element (capped repr) where the record has no usable id
    ]
)

MAX_INPUT_CHARS = 1024  # `ErrorRecord.input` keeps at most this much of a failing element


class _CappedRepr(reprlib.Repr):
    """A repr that never builds a long one first: strings and bytes are cut before they are shown
    (a record holding 200 MB of image bytes costs a few hundred characters, not 200 MB)."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple = 4, 32, 32, 32
        self.maxstring, self.maxother = MAX_INPUT_CHARS, 200

    def repr_bytes(self, value, level):
        return repr(value) if len(value) <= 48 else f"{bytes(value[:32])!r}... ({len(value):,} bytes)"

    repr_bytearray = repr_bytes

    def repr_memoryview(self, value, level):
        return f"<memoryview of {value.nbytes:,} bytes>"


_REPR = _CappedRepr()


def input_repr(element) -> str:
    """The failing element as a dead letter keeps it: a string as it is, anything else its repr
    (strings and bytes inside shortened first); at most MAX_INPUT_CHARS characters (cut with "...")."""
    if isinstance(element, str):
        text = element
    else:
        try:
            text = _REPR.repr(element)
        except Exception:  # noqa: BLE001 - an object whose repr fails is still named
            text = f"<{type(element).__name__} object (its repr failed)>"
    return text if len(text) <= MAX_INPUT_CHARS else text[: MAX_INPUT_CHARS - 3] + "..."


def error_table(errors: Sequence[ErrorRecord]) -> pa.Table:
    """A batch of error records as a table in ERROR_SCHEMA."""
    columns = {name: [getattr(e, name) for e in errors] for name in ERROR_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=ERROR_SCHEMA)


# Arrow IPC buffer compression of an ErrorBatch between stages (zstd where pyarrow has it).
_ERROR_CODEC = next((codec for codec in ("zstd", "lz4") if pa.Codec.is_available(codec)), None)


class ErrorBatch:
    """Dead letters as one Arrow table in ERROR_SCHEMA: how the job's dead letters travel between stages.

    Between fused stages a runner keeps what crosses them encoded; the local runner holds a whole
    PCollection so (and copies it a few times over its data channel), so an `ErrorRecord` pickled
    one by one (~300 bytes: class, field names, a path and a message each) cost ~1.4 KB of memory
    a dead letter: 300,000 duplicates of one id peaked 400 MB over unique ids (issue 19 (6)). A batch
    pickles as Arrow IPC with compressed buffers, where the repeated parts (ids, paths, reasons)
    cost a few bytes a row. The table is decoded when first used (`table`); `num_rows` is known
    without decoding."""

    __slots__ = ("_table", "_encoded", "num_rows")

    def __init__(self, table: Optional[pa.Table] = None, encoded: Optional[bytes] = None, num_rows: Optional[int] = None):
        if (table is None) == (encoded is None):
            raise ValueError("an ErrorBatch is made from a table or from its encoding, not both")
        if table is not None and not table.schema.equals(ERROR_SCHEMA):
            table = table.select(ERROR_SCHEMA.names).cast(ERROR_SCHEMA)
        self._table = table
        self._encoded = encoded
        self.num_rows = table.num_rows if table is not None else int(num_rows)

    @classmethod
    def from_records(cls, errors: Sequence[ErrorRecord]) -> ErrorBatch:
        return cls(error_table(errors))

    @property
    def table(self) -> pa.Table:
        """The dead letters (ERROR_SCHEMA)."""
        if self._table is None:
            with pa.ipc.open_stream(pa.py_buffer(self._encoded)) as reader:
                self._table = reader.read_all()
            self._encoded = None
        return self._table

    def modality_counts(self) -> dict[str, int]:
        """{modality: dead letters of it} in this batch."""
        counts = self.table.column("modality").value_counts().to_pylist()
        return {entry["values"]: entry["counts"] for entry in counts}

    def __len__(self) -> int:
        return self.num_rows

    def __reduce__(self):
        if self._encoded is not None:
            return ErrorBatch, (None, self._encoded, self.num_rows)
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression=_ERROR_CODEC)
        with pa.ipc.new_stream(sink, ERROR_SCHEMA, options=options) as writer:
            writer.write_table(self._table)
        return ErrorBatch, (None, sink.getvalue().to_pybytes(), self.num_rows)

    def __repr__(self) -> str:
        return f"ErrorBatch({self.num_rows} dead letters)"


def failed_counts(element, counters: Sequence[str] = ("failed",)) -> list[tuple[str, int]]:
    """[(f"{modality}_{counter}", n)] of one dead letter (`ErrorRecord`) or `ErrorBatch`, for each
    of `counters`: the manifest's counters ("failed"; a writer that never counted the records it
    read also adds "read")."""
    if isinstance(element, ErrorBatch):
        by_modality = sorted(element.modality_counts().items())
    else:
        by_modality = [(element.modality, 1)]
    return [(f"{modality}_{counter}", n) for modality, n in by_modality for counter in counters]


def embedding_schema(
    modality: str,
    dimension: int,
    passthrough: Sequence[str] = (),
    metadata: Optional[Mapping[str, str]] = None,
    provenance: bool = False,
) -> pa.Schema:
    """The one explicit schema of `DIR/text/` or `DIR/image/`.

    Passthrough columns are stored as nullable strings: inputs disagree on types (a CSV has none),
    and a string column never fails a write halfway through a run. `provenance` adds
    `embedded_run_id`: the run that embedded each row (carry-over runs copy earlier rows).
    """
    if dimension <= 0:
        raise ValueError(f"embedding dimension must be positive, got {dimension}")
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
    ]
    if modality == TEXT:
        fields.append(pa.field("line", pa.int64()))
    fields += [
        pa.field("content_sha256", pa.string()),
        pa.field("embedding", pa.list_(pa.float32(), dimension)),
        pa.field("model", pa.string()),
        pa.field("model_sha256", pa.string()),
    ]
    if provenance:
        fields.append(pa.field("embedded_run_id", pa.string()))
    reserved = {f.name for f in fields}
    for name in passthrough:
        if name in reserved:
            raise ValueError(f"passthrough column {name!r} clashes with an output column")
        fields.append(pa.field(name, pa.string()))
    meta = {k.encode(): v.encode() for k, v in (metadata or {}).items()}
    return pa.schema(fields, metadata=meta or None)
