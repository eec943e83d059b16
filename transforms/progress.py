"""Progress of a long run: a live line on a terminal, a log line every so often otherwise.

Each worker process keeps its own tallies (the DoFns call `progress.add`); on the local runner
that is the launching process itself, so the user sees the run advance. On Dataflow the lines
go to the worker logs, and the job's counters show the same numbers in the console.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

__all__ = ["add", "reset"]

_LOGGER = logging.getLogger("embeddings.progress")
_LOCK = threading.Lock()
_STATE = {"start": None, "last": float("-inf"), "counts": {}}
TERMINAL_INTERVAL = 0.5
LOG_INTERVAL = 30.0


def reset() -> None:
    """Start counting afresh (a new run in the same process)."""
    with _LOCK:
        _STATE.update(start=None, last=float("-inf"), counts={})


def _line(now: float) -> str:
    elapsed = now - _STATE["start"]
    parts = []
    for modality in ("text", "image"):
        done = _STATE["counts"].get((modality, "embedded"), 0)
        failed = _STATE["counts"].get((modality, "failed"), 0)
        skipped = _STATE["counts"].get((modality, "skipped"), 0)
        if done or failed or skipped:
            rate = done / elapsed if elapsed > 0 else 0.0
            part = f"{modality}: {done:,} embedded, {failed:,} failed"
            if skipped:
                part += f", {skipped:,} skipped"
            parts.append(part + f" ({rate:,.0f}/s)")
    minutes, seconds = divmod(int(elapsed), 60)
    return f"[{minutes:02d}:{seconds:02d}] " + "; ".join(parts)


def add(modality: str, embedded: int = 0, failed: int = 0, skipped: int = 0) -> None:
    """Count a batch's outcome and report if it is time to."""
    now = time.monotonic()
    with _LOCK:
        if _STATE["start"] is None:
            _STATE["start"] = now
        counts = _STATE["counts"]
        for key, n in (("embedded", embedded), ("failed", failed), ("skipped", skipped)):
            counts[(modality, key)] = counts.get((modality, key), 0) + n
        tty = sys.stderr.isatty()
        if now - _STATE["last"] < (TERMINAL_INTERVAL if tty else LOG_INTERVAL):
            return
        _STATE["last"] = now
        line = _line(now)
    if tty:
        sys.stderr.write("\r" + line[:200].ljust(100))
        sys.stderr.flush()
    else:
        _LOGGER.warning("progress %s", line)
