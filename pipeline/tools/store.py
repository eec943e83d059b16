"""Reading a finished run's embeddings a chunk at a time, so that no tool needs the whole matrix in memory.

A run folder is read only when its `_MANIFEST.json` exists (`transforms.results.read_manifest`
refuses it otherwise), and a modality that failed its checks only with `--allow-failed`. Rows come in a fixed global order: the manifest's files in the order it
lists them, and each file's rows in order. A row's position in that order is how a FAISS index
(`pipeline.tools.index`) refers to it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.tools.common import ToolError, check_run_status
from transforms.io import fileio
from transforms.records import MODALITIES
from transforms.results import read_manifest, run_files

__all__ = [
    "OUTPUT_COLUMNS",
    "DEFAULT_BATCH_ROWS",
    "EmbeddingSet",
    "VectorBatch",
    "open_embeddings",
    "resolve_modality",
    "embedding_matrix",
    "unit_rows",
]

# The job's own columns (transforms.records.embedding_schema); every other column is a passthrough.
OUTPUT_COLUMNS = ("id", "source", "line", "content_sha256", "embedding", "model", "model_sha256", "embedded_run_id")
DEFAULT_BATCH_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class VectorBatch:
    """A chunk of rows: their global positions, ids, vectors (float32, one row each) and the other columns read."""

    start: int  # global position of the first row
    ids: list[str]
    vectors: np.ndarray  # (n, dimension) float32, as stored
    valid: np.ndarray  # (n,) bool: False for a null or non-finite embedding
    columns: dict[str, list]

    @property
    def positions(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self.ids), dtype=np.int64)

    def row(self, index: int) -> dict:
        """Row `index` of the chunk as a dict of id and the other columns read."""
        return {"id": self.ids[index], **{name: values[index] for name, values in self.columns.items()}}


def embedding_matrix(column, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed_size_list<float32> column as an (n, dimension) float32 matrix and a mask of usable rows."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    width = column.type.list_size
    if width != dimension:
        raise ToolError(f"embedding column has {width} values per row, the manifest says {dimension}")
    # `.values` ignores the array's own offset; slice it (a null row still holds `width` slots).
    flat = column.values.slice(column.offset * width, n * width).to_numpy(zero_copy_only=False)
    matrix = np.asarray(flat, dtype=np.float32).reshape(n, width)
    valid = np.isfinite(matrix).all(axis=1)
    if column.null_count:
        valid &= ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return matrix, valid


def unit_rows(matrix: np.ndarray, valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to length 1 (cosine similarity is then a dot product); zero rows become invalid and stay 0."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    if valid is not None:
        ok &= valid
    out = np.zeros_like(matrix)
    out[ok] = matrix[ok] / norms[ok, None]
    return out, ok


@dataclasses.dataclass(frozen=True)
class EmbeddingSet:
    """One modality of a finished run: its Parquet files, in manifest order, and what the manifest says."""

    output: str
    modality: str
    manifest: dict
    files: tuple[str, ...]
    dimension: int
    passthrough: tuple[str, ...]

    @property
    def model(self) -> dict:
        """The manifest's record of the model: name, sha256, dimension, details."""
        return self.manifest["models"][self.modality]

    def _open(self, path: str) -> pq.ParquetFile:
        if fileio.is_remote(path):
            return pq.ParquetFile(FileSystems.open(path, compression_type="uncompressed"))
        return pq.ParquetFile(path)

    def num_rows(self) -> int:
        """Rows in all files, from the Parquet footers alone."""
        return sum(self._open(path).metadata.num_rows for path in self.files)

    def record_batches(self, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The rows, `columns` only, in batches of at most `batch_rows` (a file is read one row group at a time)."""
        if batch_rows < 1:
            raise ToolError(f"--batch-rows must be at least 1, got {batch_rows}")
        for path in self.files:
            parquet = self._open(path)
            for group in range(parquet.metadata.num_row_groups):
                yield from fileio.parquet_batches(parquet, batch_rows, columns=columns, row_groups=[group])

    def vector_batches(
        self, batch_rows: int = DEFAULT_BATCH_ROWS, columns: Sequence[str] = (), with_vectors: bool = True
    ) -> Iterator[VectorBatch]:
        """Chunks of (positions, ids, vectors, other `columns`); `with_vectors=False` skips reading the embeddings."""
        wanted = ["id"] + (["embedding"] if with_vectors else []) + [c for c in columns if c not in ("id", "embedding")]
        start = 0
        for batch in self.record_batches(wanted, batch_rows):
            n = batch.num_rows
            if with_vectors:
                vectors, valid = embedding_matrix(batch.column("embedding"), self.dimension)
            else:
                vectors, valid = np.zeros((n, 0), np.float32), np.ones(n, bool)
            extra = {name: batch.column(name).to_pylist() for name in wanted[1:] if name != "embedding"}
            yield VectorBatch(start, batch.column("id").to_pylist(), vectors, valid, extra)
            start += n

    def rows_at(self, positions: Sequence[int], columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS) -> dict[int, dict]:
        """The rows at some global positions (id and `columns`), without reading the embeddings."""
        wanted = set(int(p) for p in positions)
        found: dict[int, dict] = {}
        start = 0
        for path in self.files:
            parquet = self._open(path)
            for group in range(parquet.metadata.num_row_groups):
                n = parquet.metadata.row_group(group).num_rows
                hits = sorted(p - start for p in wanted if start <= p < start + n)
                if hits:
                    table = parquet.read_row_group(group, columns=["id", *columns])
                    for local in hits:
                        found[start + local] = table.slice(local, 1).to_pylist()[0]
                start += n
            if len(found) == len(wanted):
                break
        return found

    def find_id(self, record_id: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> tuple[int, np.ndarray]:
        """The position and stored vector of the row with this id (reads the embeddings of its row group only)."""
        start = 0
        for path in self.files:
            parquet = self._open(path)
            for group in range(parquet.metadata.num_row_groups):
                ids = parquet.read_row_group(group, columns=["id"]).column("id").to_pylist()
                if record_id in ids:
                    local = ids.index(record_id)
                    column = parquet.read_row_group(group, columns=["embedding"]).column("embedding").slice(local, 1)
                    vectors, valid = embedding_matrix(column, self.dimension)
                    if not valid[0]:
                        raise ToolError(f"--id {record_id!r}: its stored embedding is null or not finite")
                    return start + local, vectors[0]
                start += len(ids)
        raise ToolError(f"--id {record_id!r}: no such id in the {self.modality} embeddings of {self.output}")


def resolve_modality(manifest: dict, output: str, modality: Optional[str]) -> str:
    """The modality asked for, or the run's only one; an error naming --modality otherwise."""
    embedded = [m for m in MODALITIES if m in manifest.get("models", {})]
    if modality is not None:
        if modality not in MODALITIES:
            raise ToolError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if modality not in embedded:
            raise ToolError(
                f"--modality {modality}: {output} has no {modality} embeddings (it has: {', '.join(embedded) or 'none'})"
            )
        return modality
    if not embedded:
        raise ToolError(f"{output}: the run embedded nothing")
    if len(embedded) > 1:
        raise ToolError(f"{output} has {' and '.join(embedded)} embeddings: choose one with --modality")
    return embedded[0]


def open_embeddings(output: str, modality: Optional[str] = None, allow_failed: bool = False) -> EmbeddingSet:
    """A finished run's embeddings of one modality (IncompleteOutputError when `_MANIFEST.json` is missing).

    A run that failed its checks is read when that modality is complete in it, or with `allow_failed`
    (`--allow-failed`); either way one `note:` line on stderr says so. Otherwise FailedRunError
    suggests --allow-failed (`pipeline.tools.common.check_run_status`)."""
    output = output.rstrip("/") if len(output) > 1 else output
    manifest = read_manifest(output, allow_failed=True)
    modality = resolve_modality(manifest, output, modality)
    note = check_run_status(output, manifest, modality, allow_failed)
    if note:
        print(note, file=sys.stderr)
    files = tuple(run_files(output, manifest, modality))
    dimension = int(manifest["models"][modality]["dimension"])
    passthrough = tuple(manifest.get("options", {}).get("passthrough", ()))
    if files:
        path = files[0]
        handle = FileSystems.open(path, compression_type="uncompressed") if fileio.is_remote(path) else path
        names = pq.read_schema(handle).names
        passthrough = tuple(n for n in names if n not in OUTPUT_COLUMNS)
    return EmbeddingSet(output, modality, manifest, files, dimension, passthrough)
