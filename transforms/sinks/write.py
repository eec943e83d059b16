"""Writing the run's output: Parquet tables, dead letters, and `_MANIFEST.json` last of all.

A run's folder is complete only when `_MANIFEST.json` exists: it is deleted first when a run
starts and written by the pipeline's final step, after every Parquet file has been finalised.
The folder is the job's only where the job wrote it: a run deletes nothing but the files an earlier
run's manifest names and the job's own temp files, and refuses a folder holding anything else
(`check_output_folder`), before it claims it.
Reading a finished run is `transforms.results`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import posixpath
import re
import socket
from typing import Iterable, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import UserError
from transforms.io import fileio
from transforms.records import ERROR_SCHEMA, MODALITIES, error_table
from transforms.results import MANIFEST_NAME, OUTPUT_FOLDERS

__all__ = [
    "DEFAULT_MAX_FAILED_FRACTION",
    "failure_verdict",
    "line_accounting",
    "TopErrorReasons",
    "clear_previous_output",
    "check_output_folder",
    "output_leftovers",
    "discard_unfinished",
    "ForeignFilesError",
    "UnreadableManifestError",
    "RUNNING_NAME",
    "OutputInUseError",
    "claim_output",
    "release_output",
    "WriteTables",
    "WriteErrors",
    "WriteManifestFn",
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
        key = (error.modality, error.stage, error.error_type)
        entry = accumulator.get(key)
        if entry is None:
            accumulator[key] = [1, str(error.id), error.message]
        else:
            entry[0] += 1
            if str(error.id) < entry[1]:
                entry[1], entry[2] = str(error.id), error.message
        return accumulator

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
    """ErrorRecords -> one {modality: [reason, ...]} dict, the most frequent kinds first (at most
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


RUNNING_NAME = "_RUNNING.json"


class OutputInUseError(UserError, RuntimeError):
    """Another run is writing into the same output folder (its `_RUNNING.json` marker is there)."""


def _read_marker(path: str) -> Optional[dict]:
    try:
        return json.loads(fileio.read_bytes(path))
    except FileNotFoundError:
        return None
    except ValueError:  # a half-written or foreign file: still a claim, of an unknown run
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_output(output: str, run_id: str, force: bool = False, detached: bool = False) -> dict:
    """Mark `output` as being written by this run (`OUT/_RUNNING.json`: run id, host, pid, start time),
    or raise OutputInUseError naming the run that already claimed it.

    A marker left by a dead process on this host is stale and replaced (with a warning). A marker
    from another host cannot be checked: clear it with `force` (`--force-unlock`) or by deleting the
    file, once you know that run is gone; so can a `detached` run's marker (its launcher exits at once,
    the job frees the folder when it writes its manifest). Locally the claim is atomic (O_EXCL); on gs:// it is checked
    then written, so two launches within the same second can still both start."""
    import logging

    marker = fileio.join(output, RUNNING_NAME)
    mine = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started_at": _now(), "detached": detached}
    existing = _read_marker(marker)
    if existing is not None and not force:
        stale = (
            not existing.get("detached")
            and existing.get("host") == mine["host"]
            and isinstance(existing.get("pid"), int)
            and not _pid_alive(existing["pid"])
        )
        if not stale:
            raise OutputInUseError(
                f"--output {output!r}: run {existing.get('run_id', '?')} (pid {existing.get('pid', '?')} on "
                f"{existing.get('host', '?')}, started {existing.get('started_at', '?')}) is writing there "
                f"({RUNNING_NAME}); wait for it, use another --output, or if that run is dead, pass --force-unlock"
            )
        logging.getLogger(__name__).warning(
            "%s: replacing the stale %s of run %s (pid %s is gone)",
            output,
            RUNNING_NAME,
            existing.get("run_id"),
            existing.get("pid"),
        )
    data = json.dumps(mine, indent=2).encode()
    if fileio.is_remote(output) or existing is not None:
        fileio.write_bytes(marker, data, mime_type="application/json")
        return mine
    os.makedirs(output, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another run claimed it between our check and now
        return claim_output(output, run_id, force=False, detached=detached)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return mine


def release_output(output: str, run_id: str) -> bool:
    """Delete the `_RUNNING.json` marker if it is this run's; returns whether it did."""
    marker = fileio.join(output, RUNNING_NAME)
    existing = _read_marker(marker)
    if not existing or existing.get("run_id") != run_id:
        return False
    FileSystems.delete([marker])
    return True


class ForeignFilesError(UserError, RuntimeError):
    """`--output` holds files this job did not write: the run stops before it claims or deletes anything."""


class UnreadableManifestError(UserError, RuntimeError):
    """`--output` holds an earlier `_MANIFEST.json` that cannot be read: which files are the job's is
    unknown, so nothing is deleted and the run stops."""


WRITE_PROBE_PREFIX = ".write-probe-"  # `pipeline.options.check_output_writable`'s probe on gs://
_SHARD_NAME = re.compile(r"(part|carried)-\d{5,}-of-\d{5,}\.parquet")  # WriteTables' file names
_LISTED_FOREIGN = 5  # foreign files named in the message; the rest are counted


def _output_entries(output: str) -> list[str]:
    """Every file under `output` (recursively), as paths relative to it with `/`; locally also every
    symlink and other non-folder entry (a symlinked folder is one entry, never followed)."""
    if fileio.is_remote(output):
        prefix = output.rstrip("/") + "/"
        return sorted(p[len(prefix) :] for p in fileio.match_paths([prefix + "**"]) if p.startswith(prefix))
    if not os.path.isdir(output):
        return []
    found = []
    for folder, dirs, files in os.walk(output):
        relative = os.path.relpath(folder, output)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            found.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
    return sorted(found)


def _manifest_named(output: str, entries: Sequence[str]) -> set[str]:
    """The files an earlier run's manifest in `output` names (relative paths inside `output`; a path
    outside it is never the folder's to delete); UnreadableManifestError when the manifest cannot be read."""
    if MANIFEST_NAME not in entries:
        return set()
    path = fileio.join(output, MANIFEST_NAME)
    try:
        manifest = json.loads(fileio.read_bytes(path))
        files = manifest["files"]
        named = [p for paths in files.values() for p in paths]
        if not all(isinstance(p, str) for p in named):
            raise TypeError("a file name that is not a string")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableManifestError(
            f"--output {output!r}: its {MANIFEST_NAME} cannot be read ({type(exc).__name__}: {exc}), so which files an "
            "earlier run wrote there is unknown; nothing was deleted: move the folder's contents away or choose another --output"
        ) from None
    prefix = output.rstrip("/") + "/"
    inside = set()
    for p in named:
        if fileio.is_remote(p) or p.startswith("/"):  # an absolute path (an older manifest): only inside the folder
            if not p.startswith(prefix):
                continue
            p = p[len(prefix) :]
        normal = posixpath.normpath(p)
        if not normal.startswith(("../", "/")) and normal not in (".", ".."):
            inside.add(normal)
    return inside


def output_leftovers(output: str) -> tuple[list[str], list[str]]:
    """(the job's files, other files) in `output`, as paths relative to it.

    The job's: the files an earlier run's manifest names and the manifest itself, the `_RUNNING.json`
    marker, Beam's temp files (`text/`, `image/`, `errors/` `beam-temp-*/`), the gs:// write probe;
    and, while a `_RUNNING.json` marker is there, the shard files (`part-*`/`carried-*-of-*.parquet`
    in text/image/errors) of the run that left it (killed before its manifest: the claim proves the
    job wrote them). Everything else is someone else's. Raises UnreadableManifestError."""
    entries = _output_entries(output)
    named = _manifest_named(output, entries)
    claimed = RUNNING_NAME in entries
    ours, foreign = [], []
    for rel in entries:
        parts = rel.split("/")
        job_folder = len(parts) >= 2 and parts[0] in OUTPUT_FOLDERS
        if (
            rel in named
            or rel in (MANIFEST_NAME, RUNNING_NAME)
            or (job_folder and len(parts) >= 3 and parts[1].startswith("beam-temp-"))
            or (len(parts) == 1 and rel.startswith(WRITE_PROBE_PREFIX))
            or (claimed and job_folder and len(parts) == 2 and _SHARD_NAME.fullmatch(parts[1]))
        ):
            ours.append(rel)
        else:
            foreign.append(rel)
    return ours, foreign


def check_output_folder(output: str) -> list[str]:
    """The job's files in `output` (`output_leftovers`), or ForeignFilesError listing the others (a few,
    then how many more) / UnreadableManifestError: read only, nothing is created or deleted."""
    ours, foreign = output_leftovers(output)
    if foreign:
        shown = ", ".join(foreign[:_LISTED_FOREIGN])
        more = f" and {len(foreign) - _LISTED_FOREIGN} more" if len(foreign) > _LISTED_FOREIGN else ""
        unfinished = any(_SHARD_NAME.fullmatch(f.rsplit("/", 1)[-1]) for f in foreign)
        hint = (
            " (part-*/carried-* Parquet files that no manifest names are an unfinished run's: delete them if so)"
            if unfinished
            else ""
        )
        raise ForeignFilesError(
            f"--output {output!r} holds {len(foreign)} file(s) that no earlier run of this job wrote (no {MANIFEST_NAME} "
            f"there names them): {shown}{more}; nothing was deleted: move them away or choose another --output{hint}"
        )
    return ours


def _remove_job_folders(output: str) -> None:
    """Locally, the job's folders left empty once its files are gone: Beam's `beam-temp-*` folders
    (whose files were just deleted: only the job's own files were there) and an empty `text/`,
    `image/` or `errors/` (an earlier run's modality this run lacks). A folder with anything in it stays."""
    if fileio.is_remote(output):
        return
    for folder in OUTPUT_FOLDERS:
        base = os.path.join(output, folder)
        if not os.path.isdir(base) or os.path.islink(base):
            continue
        for name in os.listdir(base):
            temp = os.path.join(base, name)
            if name.startswith("beam-temp-") and os.path.isdir(temp) and not os.path.islink(temp):
                with contextlib.suppress(OSError):
                    os.rmdir(temp)
        with contextlib.suppress(OSError):
            os.rmdir(base)


def clear_previous_output(output: str) -> list[str]:
    """Delete an earlier run's files so a rerun leaves no leftovers: its manifest first (from then on
    the folder reads as unfinished), then the files it names, and temp files of a killed run.

    Only the job's own files (`output_leftovers`) are ever deleted; a folder holding anything else
    raises ForeignFilesError (and one whose manifest is unreadable UnreadableManifestError) before
    anything is touched. The run's own `_RUNNING.json` stays. Returns the deleted paths.
    """
    ours = check_output_folder(output)
    paths = [fileio.join(output, rel) for rel in ours if rel != RUNNING_NAME]
    manifest = fileio.join(output, MANIFEST_NAME)
    deleted = []
    if manifest in paths:
        FileSystems.delete([manifest])  # first: from here on the folder reads as unfinished
        deleted.append(manifest)
        paths.remove(manifest)
    if paths:
        FileSystems.delete(paths)
        deleted += paths
    _remove_job_folders(output)
    return deleted


def discard_unfinished(output: str) -> list[str]:
    """After a run that stopped before writing its manifest (the folder held none of anyone else's files
    when it was claimed and cleared): delete what it wrote, its shard files and Beam temp files, so that
    a rerun finds a clean folder. Returns the deleted paths; nothing when a manifest is there."""
    entries = _output_entries(output)
    if MANIFEST_NAME in entries:
        return []
    mine = []
    for rel in entries:
        parts = rel.split("/")
        if (
            len(parts) >= 2
            and parts[0] in OUTPUT_FOLDERS
            and ((len(parts) == 2 and _SHARD_NAME.fullmatch(parts[1])) or parts[1].startswith("beam-temp-"))
        ):
            mine.append(fileio.join(output, rel))
    if mine:
        FileSystems.delete(mine)
    _remove_job_folders(output)
    return mine


class _BufferedWriter:
    """A ParquetWriter that gathers small tables into row groups of about `row_group_rows` rows."""

    def __init__(self, writer: pq.ParquetWriter, row_group_rows: int):
        self.writer = writer
        self.row_group_rows = row_group_rows
        self.pending: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=max(self.rows, 1))
            self.pending, self.rows = [], 0


class _EmbeddingParquetSink(filebasedsink.FileBasedSink):
    """Parquet files from pyarrow tables on Beam's public file sink (temp files, then finalised
    under their shard names), with row groups of a useful size and dictionary encoding only where
    it pays (ids, paths and model names repeat; float vectors and hashes do not). Snappy
    compression inside the file, as Beam's own `WriteToParquetBatched`."""

    def __init__(self, file_path_prefix: str, schema: pa.Schema, row_group_rows: int):
        super().__init__(
            file_path_prefix,
            coder=None,
            file_name_suffix=".parquet",
            num_shards=0,
            shard_name_template=None,
            mime_type="application/x-parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,  # Parquet compresses its pages
            triggering_frequency=60,
        )
        self._schema = schema
        self._row_group_rows = row_group_rows
        self._dictionary_columns = [f.name for f in schema if pa.types.is_string(f.type) and f.name != "content_sha256"]
        self._file_handle = None

    def open(self, temp_path):
        self._file_handle = super().open(temp_path)
        writer = pq.ParquetWriter(self._file_handle, self._schema, compression="snappy", use_dictionary=self._dictionary_columns)
        return _BufferedWriter(writer, self._row_group_rows)

    def display_data(self):
        return {**super().display_data(), "codec": "snappy", "schema": str(self._schema)}

    def write_record(self, writer: _BufferedWriter, table: pa.Table):
        writer.add(table)

    def close(self, writer: _BufferedWriter):
        writer.flush()
        writer.writer.close()
        if self._file_handle:
            self._file_handle.close()
            self._file_handle = None


class WriteTables(beam.PTransform):
    """pyarrow tables of one schema to `folder/part-SSSSS-of-NNNNN.parquet`; emits the file names.

    Row groups hold about `row_group_rows` rows (64k: 16 MB of 64-d float32 vectors), whatever
    the size of the batches that arrive.
    """

    def __init__(self, folder: str, schema: pa.Schema, row_group_rows: int = 65536, prefix: str = "part"):
        super().__init__()
        self._folder = folder
        self._schema = schema
        self._row_group_rows = row_group_rows
        self._prefix = prefix  # file names: PREFIX-SSSSS-of-NNNNN.parquet (carry-over: a second sink, "carried")

    def expand(self, tables):
        sink = _EmbeddingParquetSink(fileio.join(self._folder, self._prefix), self._schema, self._row_group_rows)
        return tables | "WriteParquet" >> beam.io.iobase.Write(sink)


class WriteErrors(beam.PTransform):
    """ErrorRecords to `errors/` as Parquet (an empty file when the run had none)."""

    def __init__(self, folder: str):
        super().__init__()
        self._folder = folder

    def expand(self, errors):
        return (
            errors
            | "BatchErrors" >> beam.BatchElements(min_batch_size=1, max_batch_size=4096)
            | "ToTable" >> beam.Map(error_table)
            | "WriteErrorParquet" >> WriteTables(self._folder, ERROR_SCHEMA)
        )


def _versions() -> dict:
    versions = {"python": platform.python_version(), "apache_beam": beam.__version__, "pyarrow": pa.__version__}
    try:
        import keras
        import tensorflow as tf

        versions.update(tensorflow=tf.__version__, keras=keras.__version__)
    except ImportError:  # pragma: no cover - the job always has them
        pass
    return versions


def _now() -> str:
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
    `accounting.text` (`line_accounting`); a run whose counts or lines do not reconcile is "failed"."""

    def __init__(
        self,
        output: str,
        static: dict,
        max_failed_fraction: Optional[dict[str, float]] = None,
        max_failed: Optional[int] = None,
    ):
        self._output = output
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
            top_errors=reasons[0] if reasons else {},
            finished_at=_now(),
            counts=by_modality,
            accounting=accounting,
            files={k: sorted(v) for k, v in sorted(grouped.items())},
            versions=_versions(),
        )
        target = fileio.join(self._output, MANIFEST_NAME)
        with FileSystems.create(target, mime_type="application/json") as handle:
            handle.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
        release_output(self._output, self._static["run_id"])  # the run is over: the folder is free again
        yield target
