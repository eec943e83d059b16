"""Timers and batch-size tallies around the job's own functions, for profiling runs only.

`install()` wraps, in this process only (the job's files are untouched):

* the DoFns' `process` generators (`ReadTextFileFn`, `EmbedTextBatchesFn`, `EmbedImageBatchesFn`):
  elements in, and the time spent *inside* the generator (downstream work done between two
  `next()` calls is not counted);
* the embedders' `embed` (model time), `transforms.embed._load_image` (read + hash + decode, per
  image, per thread), `transforms.embed._output_table` (arrow assembly);
* Beam's Parquet sink `write_record` (one row group per table written).

`report()` sums them up. With the in-process runner (one worker) everything runs in this process.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from typing import Callable

import numpy as np

__all__ = ["install", "report"]

_LOCK = threading.Lock()
_DURATIONS: dict[str, list[float]] = defaultdict(list)
_SIZES: dict[str, list[int]] = defaultdict(list)
_SPANS: list[tuple[str, float, float]] = []  # (thread name, start, end) of each image load
_INSTALLED = False


def _record(name: str, seconds: float, size: int | None = None) -> None:
    with _LOCK:
        _DURATIONS[name].append(seconds)
        if size is not None:
            _SIZES[name].append(size)


def _timed(name: str, size_of: Callable = lambda *a, **k: None):
    def wrap(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                _record(name, time.perf_counter() - start, size_of(*args, **kwargs))

        return wrapper

    return wrap


def _timed_generator(name: str, size_of: Callable):
    """Wrap a DoFn's process: count its element's size and the time spent inside the generator."""

    def wrap(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            inside = 0.0
            start = time.perf_counter()
            iterator = iter(function(*args, **kwargs) or ())
            inside += time.perf_counter() - start
            try:
                while True:
                    start = time.perf_counter()
                    try:
                        value = next(iterator)
                    except StopIteration:
                        inside += time.perf_counter() - start
                        return
                    inside += time.perf_counter() - start
                    yield value
            finally:
                _record(name, inside, size_of(*args, **kwargs))

        return wrapper

    return wrap


def _load_image_spans(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            end = time.perf_counter()
            with _LOCK:
                _SPANS.append((threading.current_thread().name, start, end))

    return wrapper


_WRAPPED: list[str] = []
_MISSING: list[str] = []


def _wrap(owner, attribute: str, wrapper) -> None:
    """Replace owner.attribute by wrapper(it); the job's code changes, so a missing name is only noted."""
    label = f"{getattr(owner, '__name__', owner)}.{attribute}"
    original = getattr(owner, attribute, None)
    if original is None:
        _MISSING.append(label)
        return
    setattr(owner, attribute, wrapper(original))
    _WRAPPED.append(label)


def _rows(*args, **kwargs):
    """Rows of the element a DoFn's process or a function got (a table, or a list)."""
    element = args[1] if len(args) > 1 else None
    if element is None:
        return None
    return element.num_rows if hasattr(element, "num_rows") else len(element)


def install() -> None:
    """Wrap the job's functions in this process (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    from apache_beam.io import parquetio

    from transforms import embed, models, text_read

    _wrap(text_read.ReadTextFileFn, "process", _timed_generator("ReadTextFileFn.process (per file)", lambda *a, **k: 1))
    _wrap(embed.EmbedTextBatchesFn, "process", _timed_generator("EmbedTextBatchesFn.process", _rows))
    _wrap(embed.EmbedImageBatchesFn, "process", _timed_generator("EmbedImageBatchesFn.process", _rows))
    _wrap(models.TextEmbedder, "embed", _timed("TextEmbedder.embed", _rows))
    _wrap(models.ImageEmbedder, "embed", _timed("ImageEmbedder.embed", _rows))
    _wrap(embed, "_output_table", _timed("_output_table", lambda *a, **k: len(a[1])))
    _wrap(embed, "_load_image", _load_image_spans)
    _wrap(parquetio._ParquetSink, "write_record",
          _timed("parquet write_record (one row group)", lambda *a, **k: a[2].num_rows))
    from transforms import write

    # The job's own sink, where it has one (it buffers tables into bigger row groups).
    for name in ("_EmbeddingParquetSink", "EmbeddingParquetSink"):
        if hasattr(write, name):
            _wrap(getattr(write, name), "write_record", _timed(f"{name}.write_record", lambda *a, **k: a[2].num_rows))
    if hasattr(write, "_BufferedWriter"):
        _wrap(write._BufferedWriter, "flush", _timed("_BufferedWriter.flush (Parquet row-group write)", lambda *a, **k: None))


def _spread(values) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=float)
    return {"count": int(a.size), "total": float(a.sum()), "mean": float(a.mean()), "min": float(a.min()),
            "median": float(np.median(a)), "max": float(a.max())}


def _union_seconds(spans: list[tuple[float, float]]) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def report() -> dict:
    """Everything recorded, summed: seconds and sizes per wrapped function, image-load concurrency."""
    out = {"wrapped": list(_WRAPPED), "not_found_in_this_version": list(_MISSING), "functions": {}}
    for name, durations in sorted(_DURATIONS.items()):
        out["functions"][name] = {"seconds": _spread(durations), "sizes": _spread(_SIZES.get(name, []))}
        sizes = _SIZES.get(name, [])
        if sizes:
            values, counts = np.unique(np.asarray(sizes), return_counts=True)
            out["functions"][name]["size_histogram"] = {int(v): int(c) for v, c in zip(values[:40], counts[:40])}
    if _SPANS:
        by_thread = defaultdict(list)
        for thread, start, end in _SPANS:
            by_thread[thread].append((start, end))
        first, last = min(s for _, s, _ in _SPANS), max(e for _, _, e in _SPANS)
        out["image_loads"] = {
            "count": len(_SPANS),
            "busy_seconds_summed_over_threads": float(sum(e - s for _, s, e in _SPANS)),
            "wall_seconds_first_to_last": last - first,
            "seconds_with_any_load_running": _union_seconds([(s, e) for _, s, e in _SPANS]),
            "threads": {t: {"loads": len(v), "busy_seconds": float(sum(e - s for s, e in v))} for t, v in by_thread.items()},
        }
    return out
