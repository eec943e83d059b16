"""Progress of a long run: a live line on a terminal, an INFO log line every so often otherwise.

Each worker process keeps its own tallies (the DoFns call `progress.add`); on the local runner
that is the launching process itself, so the user sees the run advance. Where the launcher knows
how many records a modality has (`set_total`: the files an image glob matched), the line shows
the total, the percentage done and an estimated time to the end; the totals are known only to the
launching process, so Beam worker processes (multi_processing, Dataflow) show counts and rates.
On Dataflow the lines go to the worker logs, and the job's counters show the same numbers in the
console.

    [00:42] image: 1,250/5,000 (25%), 1,240 embedded, 10 failed, 30/s, ETA 02:05
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Optional

__all__ = ["add", "finish", "reset", "set_total", "format_duration"]

_LOGGER = logging.getLogger("embeddings.progress")
_LOCK = threading.Lock()
_STATE: dict = {"start": None, "last": float("-inf"), "counts": {}, "totals": {}}
TERMINAL_INTERVAL = 0.5
LOG_INTERVAL = 30.0


def reset() -> None:
    """Start counting afresh (a new run in the same process); known totals are forgotten."""
    with _LOCK:
        _STATE.update(start=None, last=float("-inf"), counts={}, totals={})


def set_total(modality: str, total: Optional[int]) -> None:
    """How many records of `modality` the run will process (None: unknown); enables %, and ETA."""
    with _LOCK:
        if total is None or total < 0:
            _STATE["totals"].pop(modality, None)
        else:
            _STATE["totals"][modality] = int(total)


def format_duration(seconds: float) -> str:
    """mm:ss, or h:mm:ss from an hour on."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _line(now: float) -> str:
    elapsed = now - _STATE["start"]
    parts = []
    for modality in ("text", "image"):
        done = _STATE["counts"].get((modality, "embedded"), 0)
        failed = _STATE["counts"].get((modality, "failed"), 0)
        skipped = _STATE["counts"].get((modality, "skipped"), 0)
        total = _STATE["totals"].get(modality)
        if not (done or failed or skipped):
            continue
        processed = done + failed + skipped
        rate = processed / elapsed if elapsed > 0 else 0.0
        part = f"{modality}: "
        if total:
            part += f"{processed:,}/{total:,} ({min(100.0, 100.0 * processed / total):.0f}%), "
        part += f"{done:,} embedded, {failed:,} failed"
        if skipped:
            part += f", {skipped:,} skipped"
        if elapsed > 0:
            part += f", {rate:,.0f}/s"
        if total and rate > 0 and processed < total:
            part += f", ETA {format_duration((total - processed) / rate)}"
        parts.append(part)
    return f"[{format_duration(elapsed)}] " + "; ".join(parts)


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
        _LOGGER.info("progress %s", line)


def finish() -> None:
    """End of the run: on a terminal, the final counts replace the live line, and the line ends."""
    if not sys.stderr.isatty():
        return
    with _LOCK:
        line = _line(time.monotonic()) if _STATE["start"] is not None else ""
    if line:
        sys.stderr.write("\r" + line[:200].ljust(100))
    sys.stderr.write("\n")
    sys.stderr.flush()
