"""The `build-index` command: a FAISS index of one modality of a run, for `neighbors` to search.

Writes, beside the run's own output, `DIR/index/<modality>.faiss` (the serialised index over the
L2-normalised vectors, so inner product is cosine), `DIR/index/<modality>.ids.parquet` (for each
index row, the record's id and its global position in the run's Parquet order) and
`DIR/index/<modality>.json` (what it was built from). `neighbors` uses the index only while the
run's manifest is the one it was built from; a rerun of the job makes it stale (brute force again).

`flat` is exact (the same answers as brute force); `hnsw` is approximate and faster on millions of
rows. Both hold every vector in memory while building. FAISS (`faiss-cpu`) is optional: without it
this command fails with a clear message and `neighbors` searches by brute force.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.command_flags import CommandFlag, add_flags
from pipeline.tools.common import (
    ToolError,
    format_fields,
    print_json,
    run_folder,
    write_bytes,
)
from pipeline.tools.flags import ALLOW_FAILED_FLAG, MODALITY_FLAG, batch_rows_flag, json_flag, run_flags
from pipeline.tools.store import DEFAULT_BATCH_ROWS, EmbeddingSet, open_embeddings, unit_rows
from transforms.io import fileio

__all__ = [
    "INDEX_FOLDER",
    "INDEX_KINDS",
    "FaissIndex",
    "faiss_available",
    "require_faiss",
    "build_index",
    "load_index",
    "format_index_info",
    "FLAGS",
    "add_arguments",
    "main_from_args",
]

INDEX_FOLDER = "index"
INDEX_KINDS = ("flat", "hnsw")
_IDS_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("position", pa.int64(), nullable=False)])


def faiss_available() -> bool:
    """Whether the optional `faiss` module imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def require_faiss():
    """The `faiss` module, or a ToolError saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise ToolError(
            "FAISS is not installed (pip install faiss-cpu); `neighbors` still works without an index, by brute force"
        ) from exc
    return faiss


def _paths(embeddings: EmbeddingSet) -> dict[str, str]:
    base = fileio.join(embeddings.output, INDEX_FOLDER)
    return {
        "index": fileio.join(base, f"{embeddings.modality}.faiss"),
        "ids": fileio.join(base, f"{embeddings.modality}.ids.parquet"),
        "info": fileio.join(base, f"{embeddings.modality}.json"),
    }


def _source_fingerprint(embeddings: EmbeddingSet) -> dict:
    """What identifies the run's output an index was built from."""
    manifest = embeddings.manifest
    return {
        "run_id": manifest.get("run_id"),
        "finished_at": manifest.get("finished_at"),
        "files": list(manifest.get("files", {}).get(embeddings.modality, [])),
        "model_sha256": embeddings.model.get("sha256"),
    }


@dataclasses.dataclass
class FaissIndex:
    """A loaded index: FAISS row i is the record `ids[i]` at global position `positions[i]`."""

    index: object
    ids: list[str]
    positions: np.ndarray
    info: dict

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine scores, FAISS rows) of the k best matches of one vector, best first; missing slots are dropped."""
        unit, ok = unit_rows(np.asarray(query, dtype=np.float32).reshape(1, -1))
        if not ok[0]:
            raise ToolError("the query embedding is zero or not finite: it has no direction to compare")
        k = min(k, self.index.ntotal)
        if k == 0:
            return np.empty(0), np.empty(0, dtype=np.int64)
        scores, rows = self.index.search(unit, k)
        keep = rows[0] >= 0
        return scores[0][keep].astype(np.float64), rows[0][keep]


def build_index(
    embeddings: EmbeddingSet, kind: str = "flat", batch_rows: int = DEFAULT_BATCH_ROWS, hnsw_neighbours: int = 32
) -> dict:
    """Build and write the index of one modality (vectors streamed in, then serialised); returns its info."""
    faiss = require_faiss()
    if kind not in INDEX_KINDS:
        raise ToolError(f"--kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    d = embeddings.dimension
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_neighbours, faiss.METRIC_INNER_PRODUCT)
    ids: list[str] = []
    positions: list[np.ndarray] = []
    skipped = 0
    for batch in embeddings.vector_batches(batch_rows):
        unit, ok = unit_rows(batch.vectors, batch.valid)
        skipped += int((~ok).sum())
        if ok.any():
            index.add(np.ascontiguousarray(unit[ok]))
            ids += [batch.ids[i] for i in np.flatnonzero(ok)]
            positions.append(batch.positions[ok])
    paths = _paths(embeddings)
    info = {
        "modality": embeddings.modality,
        "kind": kind,
        "metric": "cosine (inner product of L2-normalised vectors)",
        "rows": len(ids),
        "skipped_invalid": skipped,
        "dimension": d,
        "source": _source_fingerprint(embeddings),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "faiss_version": faiss.__version__,
        "files": paths,
    }
    table = pa.table(
        {"id": ids, "position": np.concatenate(positions) if positions else np.empty(0, np.int64)}, schema=_IDS_SCHEMA
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    # The info file goes last: an index without it is never used.
    if FileSystems.exists(paths["info"]):
        FileSystems.delete([paths["info"]])
    write_bytes(paths["index"], faiss.serialize_index(index).tobytes())
    write_bytes(paths["ids"], buffer.getvalue())
    write_bytes(paths["info"], json.dumps(info, indent=2).encode(), "application/json")
    return info


def load_index(embeddings: EmbeddingSet) -> tuple[Optional[FaissIndex], str]:
    """The run's index for this modality if there is a usable one, else None; and why (for the user)."""
    paths = _paths(embeddings)
    if not FileSystems.exists(paths["info"]):
        return None, "no index (build one with `build-index`)"
    info = json.loads(fileio.read_bytes(paths["info"]))
    if info.get("source") != _source_fingerprint(embeddings):
        return None, f"the index in {paths['info']} was built from another run of this folder: rebuild it with `build-index`"
    if not faiss_available():
        return None, "an index exists but FAISS is not installed (pip install faiss-cpu)"
    faiss = require_faiss()
    index = faiss.deserialize_index(np.frombuffer(fileio.read_bytes(paths["index"]), dtype=np.uint8))
    table = fileio.read_parquet_table(fileio.read_bytes(paths["ids"]))
    if index.ntotal != table.num_rows:
        return None, f"the index in {paths['index']} and its ids disagree: rebuild it with `build-index`"
    return FaissIndex(index, table.column("id").to_pylist(), table.column("position").to_numpy(), info), "faiss " + info["kind"]


def format_index_info(info: dict) -> str:
    """What `build-index` built, as aligned lines."""
    return format_fields(
        [
            (
                "index",
                f"faiss {info['kind']} over {info['rows']:,} {info['modality']} embeddings of dimension {info['dimension']}",
            ),
            ("metric", info["metric"]),
            ("skipped", f"{info['skipped_invalid']:,} rows with a null, zero or non-finite vector"),
            ("run", f"{info['source']['run_id']} (finished {info['source']['finished_at']})"),
            ("files", info["files"]["index"]),
            ("", info["files"]["ids"]),
            ("", info["files"]["info"]),
            ("use", "`neighbors DIR ...` uses it until the run folder is rewritten"),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Command line


FLAGS = (
    *run_flags(),
    MODALITY_FLAG,
    ALLOW_FAILED_FLAG,
    CommandFlag(
        "--kind",
        "flat: exact cosine search; hnsw: approximate, faster for millions of rows (default: %(default)s).",
        default="flat",
        choices=INDEX_KINDS,
    ),
    batch_rows_flag("Rows read per chunk"),
    json_flag("the index's info"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline build-index`: its `FLAGS`."""
    add_flags(parser, FLAGS)


def main_from_args(args: argparse.Namespace) -> int:
    """Run `build-index`: what it built, as a table (`--json`: the index's info)."""
    require_faiss()
    embeddings = open_embeddings(run_folder(args, "build-index RUN"), args.modality, allow_failed=args.allow_failed)
    info = build_index(embeddings, kind=args.kind, batch_rows=args.batch_rows)
    if args.json:
        print_json(info)
    else:
        print(format_index_info(info))
    return 0
