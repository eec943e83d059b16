"""What a run wrote: Parquet file and row-group sizes, and the time to read every embedding back."""

from __future__ import annotations

import glob
import os
import time
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["parquet_files", "describe_parquet", "read_back_seconds", "embeddings_matrix"]


def parquet_files(folder: str) -> list[str]:
    """Every Parquet file under `folder` (not its temp folders), sorted."""
    return sorted(p for p in glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True) if "/.temp" not in p)


def _spread(values: Sequence[int]) -> dict:
    if not values:
        return {"count": 0}
    array = np.asarray(values)
    return {
        "count": int(array.size),
        "min": int(array.min()),
        "median": float(np.median(array)),
        "max": int(array.max()),
        "total": int(array.sum()),
    }


def describe_parquet(files: Sequence[str]) -> dict:
    """File count and sizes, row groups per file, rows and bytes per row group."""
    sizes, groups_per_file, rows_per_group, bytes_per_group = [], [], [], []
    for path in files:
        sizes.append(os.path.getsize(path))
        meta = pq.ParquetFile(path).metadata
        groups_per_file.append(meta.num_row_groups)
        for i in range(meta.num_row_groups):
            rows_per_group.append(meta.row_group(i).num_rows)
            bytes_per_group.append(meta.row_group(i).total_byte_size)
    return {
        "files": len(files),
        "file_bytes": _spread(sizes),
        "row_groups_per_file": _spread(groups_per_file),
        "rows_per_row_group": _spread(rows_per_group),
        "uncompressed_bytes_per_row_group": _spread(bytes_per_group),
    }


def embeddings_matrix(files: Sequence[str]) -> np.ndarray:
    """Every embedding of the files as one float32 matrix (rows in file order)."""
    table = pa.concat_tables([pq.read_table(path, columns=["embedding"]) for path in files])
    column = table.column("embedding").combine_chunks()
    dimension = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dimension)


def read_back_seconds(files: Sequence[str], repeats: int = 3) -> dict:
    """Best-of-`repeats` seconds to read every embedding into one NumPy matrix (files in page cache)."""
    times, shape = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        matrix = embeddings_matrix(files)
        times.append(time.perf_counter() - start)
        shape = list(matrix.shape)
        del matrix
    return {"seconds_best": min(times), "seconds_first": times[0], "shape": shape}
