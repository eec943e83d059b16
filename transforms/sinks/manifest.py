"""The run's `_MANIFEST.json`, written last: counts, the failure verdict, top error reasons, files, versions.

A run's folder is complete only when `_MANIFEST.json` exists: the job deletes it first when a run
starts (`transforms.sinks.folder`) and `WriteManifestFn`, the pipeline's final step, writes it after
every Parquet file has been finalised (`transforms.sinks.parquet`). Reading it back is
`transforms.results`.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import platform
import sys
from typing import Callable, Iterable, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.io import fileio
from transforms.records import MODALITIES, ErrorBatch
from transforms.results import MANIFEST_NAME

__all__ = [
    "DEFAULT_MAX_FAILED_FRACTION",
    "TOP_REASONS",
    "failure_verdict",
    "line_accounting",
    "TopErrorReasons",
    "WriteManifestFn",
    "versions",
    "utc_now",
]

DEFAULT_MAX_FAILED_FRACTION = 0.1
TOP_REASONS = 5  # error kinds per modality kept in the manifest and printed in the summary


def failure_verdict(
    counts: dict[str, dict],
    max_failed_fraction: dict[str, float],
    max_failed: Optional[int] = None,
    accounting: Optional[dict[str, dict]] = None,
) -> dict[str, str]:
    """{modality: why the run failed} for each modality over its failure budget; empty when all is well.

    A modality fails when its counts do not add up, when the lines of its inputs do not reconcile
    (`accounting`, see `line_accounting`), when it read no record at all, when more than
    `max_failed_fraction[modality]` of its records are dead letters, or more than `max_failed` of them.
    """
    verdict = {}
    accounting = accounting or {}
    for modality, c in counts.items():
        read, failed = c["read"], c["failed"]
        limit = max_failed_fraction.get(modality, DEFAULT_MAX_FAILED_FRACTION)
        lines = accounting.get(modality, {})
        if not c["balanced"] and c.get("carried", 0) > c["skipped"]:
            verdict[modality] = f"counts do not add up: carried {c['carried']} > skipped {c['skipped']}"
        elif not c["balanced"]:
            verdict[modality] = (
                f"counts do not add up: read {read} != embedded {c['embedded']} + failed {failed} + skipped {c['skipped']}"
            )
        elif not lines.get("balanced", True):
            named = "; ".join(lines.get("unaccounted", ())) or (
                f"{lines['lines']} lines != {lines['record_lines']} in records or dead letters + {lines['blank_lines']} blank"
                f" + {lines['header_lines']} header + {lines['continuation_lines']} continuation"
            )
            verdict[modality] = f"the input's lines do not reconcile ({lines['unaccounted_files']} file(s)): {named}"
        elif read == 0:
            verdict[modality] = "no record was read from the inputs (empty files?)"
        elif failed / read > limit:
            verdict[modality] = (
                f"{failed} of {read} records failed ({failed / read:.1%}), more than --max-failed-fraction {limit:g}"
            )
        elif max_failed is not None and failed > max_failed:
            verdict[modality] = f"{failed} of {read} records failed, more than --max-failed {max_failed}"
    return verdict


class _ReasonsFn(beam.CombineFn):
    """{(modality, stage, error_type): [count, example id, example message]}: bounded by the number of
    distinct error kinds, never by the number of records. The example is the smallest id (deterministic)."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, error):
        if isinstance(error, ErrorBatch):  # a batch: its rows in order, as ErrorRecords one by one
            columns = [error.table.column(name).to_pylist() for name in ("modality", "stage", "error_type", "id", "message")]
            for modality, stage, error_type, record_id, message in zip(*columns):
                self._add(accumulator, (modality, stage, error_type), str(record_id), message)
        else:
            self._add(accumulator, (error.modality, error.stage, error.error_type), str(error.id), error.message)
        return accumulator

    @staticmethod
    def _add(accumulator: dict, key: tuple, record_id: str, message: str) -> None:
        entry = accumulator.get(key)
        if entry is None:
            accumulator[key] = [1, record_id, message]
        else:
            entry[0] += 1
            if record_id < entry[1]:
                entry[1], entry[2] = record_id, message

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for key, (count, example, message) in accumulator.items():
                entry = merged.get(key)
                if entry is None:
                    merged[key] = [count, example, message]
                else:
                    entry[0] += count
                    if example < entry[1]:
                        entry[1], entry[2] = example, message
        return merged

    def extract_output(self, accumulator):
        return accumulator


class TopErrorReasons(beam.PTransform):
    """ErrorRecords (or ErrorBatches) -> one {modality: [reason, ...]} dict, the most frequent kinds first (at most
    TOP_REASONS per modality), each reason `{error_type, stage, count, example_id, example_message}`."""

    def expand(self, errors):
        def top(accumulator: dict) -> dict:
            by_modality: dict[str, list] = {}
            for (modality, stage, error_type), (count, example, message) in accumulator.items():
                by_modality.setdefault(modality, []).append(
                    {"error_type": error_type, "stage": stage, "count": count, "example_id": example, "example_message": message}
                )
            return {
                m: sorted(reasons, key=lambda r: (-r["count"], r["error_type"]))[:TOP_REASONS]
                for m, reasons in sorted(by_modality.items())
            }

        return errors | "CountReasons" >> beam.CombineGlobally(_ReasonsFn()) | "TopReasons" >> beam.Map(top)


def _installed(module: str, distributions: Sequence[str]) -> Optional[str]:
    """A package's version without importing it (TensorFlow takes seconds and writes to stderr)."""
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    for name in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return None


def versions() -> dict:
    """The manifest's `versions`: Python, Beam, pyarrow, TensorFlow and Keras (those installed)."""
    found = {"python": platform.python_version(), "apache_beam": beam.__version__, "pyarrow": pa.__version__}
    for module, distributions in (("tensorflow", ("tensorflow-cpu", "tensorflow")), ("keras", ("keras",))):
        version = _installed(module, distributions)
        if version:
            found[module] = version
    return found


def utc_now() -> str:
    """Now, in UTC, as the manifest and the output folder's claim write times (ISO 8601, seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def line_accounting(counts: dict, unaccounted: Sequence[str] = ()) -> dict:
    """The manifest's `accounting.text`: the physical lines of the line-based text inputs (JSONL,
    CSV/TSV, plain lines) against where they went, and Parquet rows against rows read. `balanced`:
    every file's lines = lines read as a record or dead letter + blank + header + continuation
    lines, and its rows = rows read; `unaccounted` names the first few files that do not."""
    get = lambda name: counts.get(f"text_{name}", 0)  # noqa: E731 - a local shorthand
    accounting = {
        name: get(name)
        for name in ("lines", "record_lines", "blank_lines", "header_lines", "continuation_lines", "rows", "record_rows")
    }
    accounting["unaccounted_files"] = get("unaccounted_files")
    accounting["balanced"] = (
        accounting["unaccounted_files"] == 0
        and accounting["lines"]
        == accounting["record_lines"] + accounting["blank_lines"] + accounting["header_lines"] + accounting["continuation_lines"]
        and accounting["rows"] == accounting["record_rows"]
    )
    if unaccounted:
        accounting["unaccounted"] = sorted(unaccounted)
    return accounting


class WriteManifestFn(beam.DoFn):
    """The final step: writes `_MANIFEST.json` once every output file exists (they arrive as side inputs).

    `counts`: {counter: n}; `text_read`, `text_embedded`, ... give `counts` ("read == embedded +
    failed + skipped"), and the reader's line tallies (`text_lines`, `text_record_lines`, ...) give
    `accounting.text` (`line_accounting`); a run whose counts or lines do not reconcile is "failed".
    Each modality's own status is in `modalities` (`transforms.results.modality_status`).
    `release(output, run_id)`, when given, runs once the manifest is written (the job frees its claim
    on the folder there: `transforms.sinks.folder.release_output`)."""

    def __init__(
        self,
        output: str,
        static: dict,
        max_failed_fraction: Optional[dict[str, float]] = None,
        max_failed: Optional[int] = None,
        release: Optional[Callable[[str, str], object]] = None,
    ):
        self._output = output
        self._release = release  # called with (output, run_id) once the manifest is written
        self._static = static
        self._max_failed_fraction = dict(max_failed_fraction or {})
        self._max_failed = max_failed

    def process(
        self, _, counts: dict, files: Iterable[tuple[str, str]], reasons: Sequence[dict] = (), unaccounted: Sequence[str] = ()
    ):
        by_modality = {}
        for modality in MODALITIES:
            if modality not in self._static["models"]:
                continue
            read = counts.get(f"{modality}_read", 0)
            embedded = counts.get(f"{modality}_embedded", 0)
            failed = counts.get(f"{modality}_failed", 0)
            skipped = counts.get(f"{modality}_skipped", 0)
            by_modality[modality] = {
                "read": read,
                "embedded": embedded,
                "failed": failed,
                "skipped": skipped,
                "balanced": read == embedded + failed + skipped,
            }
            if self._static.get("incremental_from"):  # earlier ids no record has now: records that left the input
                by_modality[modality]["removed"] = counts.get(f"{modality}_removed", 0)
            if self._static.get("carry_over"):  # a snapshot: earlier rows copied for skipped records
                carried = counts.get(f"{modality}_carried", 0)
                by_modality[modality]["carried"] = carried
                by_modality[modality]["balanced"] &= carried <= skipped
        grouped: dict[str, list[str]] = {}
        prefix = self._output.rstrip("/") + "/"
        for folder, path in files:  # relative paths: the folder can be moved or copied whole
            grouped.setdefault(folder, []).append(path[len(prefix) :] if path.startswith(prefix) else path)
        accounting = {"text": line_accounting(counts, unaccounted)} if "text" in by_modality else {}
        verdict = failure_verdict(by_modality, self._max_failed_fraction, self._max_failed, accounting)
        manifest = dict(self._static)
        manifest.update(
            status="failed" if verdict else "complete",
            failures=verdict,
            modalities={  # each modality's own status: a tool reads a complete one of a failed run
                m: {"status": "failed", "reason": verdict[m]} if m in verdict else {"status": "complete"} for m in by_modality
            },
            top_errors=reasons[0] if reasons else {},
            finished_at=utc_now(),
            counts=by_modality,
            accounting=accounting,
            files={k: sorted(v) for k, v in sorted(grouped.items())},
            versions=versions(),
        )
        target = fileio.join(self._output, MANIFEST_NAME)
        with FileSystems.create(target, mime_type="application/json") as handle:
            handle.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
        if self._release is not None:  # the job's: the run is over, its output folder is free again
            self._release(self._output, self._static["run_id"])
        yield target
