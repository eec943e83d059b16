"""Reading a finished run: its manifest, embeddings and dead letters (no TensorFlow imported).

A run's folder is complete only when `_MANIFEST.json` exists (`transforms.sinks.manifest` writes it last):
`read_manifest` and `read_embeddings` refuse a folder without it, and a run that failed its checks
unless given `allow_failed=True`. A run fails by modality (`modality_status`: text over its failure
budget, images fine): the embeddings of a modality that is complete are read without `allow_failed`.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.errors import DataError
from transforms.io import fileio
from transforms.records import ERROR_SCHEMA

__all__ = [
    "MANIFEST_NAME",
    "OUTPUT_FOLDERS",
    "IncompleteOutputError",
    "FailedRunError",
    "modality_status",
    "failure_summary",
    "run_folder_lacks",
    "read_manifest",
    "run_files",
    "read_embeddings",
    "read_errors",
]

MANIFEST_NAME = "_MANIFEST.json"
OUTPUT_FOLDERS = ("text", "image", "errors")


class IncompleteOutputError(DataError, RuntimeError):
    """An output folder without `_MANIFEST.json`: its run did not finish."""


class FailedRunError(IncompleteOutputError):
    """A run that finished but failed its checks (e.g. more dead letters than --max-failed-fraction):
    its manifest says `"status": "failed"`; readers refuse it unless given `allow_failed=True`. A kind
    of IncompleteOutputError (its embeddings are incomplete), so every caller that refuses an
    unfinished run also refuses a failed one, with its one-line message."""


def failure_summary(manifest: dict) -> str:
    """Why a failed run failed, on one line: `text: 6 of 23 records failed ...; image: ...`."""
    return "; ".join(f"{m}: {r}" for m, r in sorted(manifest.get("failures", {}).items())) or "see its manifest"


def modality_status(manifest: dict, modality: str) -> dict:
    """One modality's own status beside the run's: `{"status": "complete"}` or `{"status": "failed",
    "reason": ...}` (the manifest's `modalities`; for a manifest written before it, from `failures`,
    which name every modality over its budget)."""
    given = manifest.get("modalities", {}).get(modality)
    if given:
        return dict(given)
    reason = manifest.get("failures", {}).get(modality)
    return {"status": "failed", "reason": reason} if reason else {"status": "complete"}


def run_folder_lacks(folder: str) -> Optional[str]:
    """What keeps `folder` from being a finished run's folder: "folder" (a local path that is no
    folder), "manifest" (no manifest in it: its run did not finish, or it is not a run's folder), or
    None. Its callers raise their own error for each: `read_manifest` an IncompleteOutputError, the
    launch check of --incremental-from a ConfigError naming the flag."""
    if not fileio.is_remote(folder) and not os.path.isdir(folder):
        return "folder"
    if not FileSystems.exists(fileio.join(folder, MANIFEST_NAME)):
        return "manifest"
    return None


def read_manifest(output: str, allow_failed: bool = False, modality: Optional[str] = None) -> dict:
    """The manifest of a finished run; IncompleteOutputError when the run did not finish, and
    FailedRunError when it failed its checks (unless `allow_failed`, or `modality` is given and that
    modality is complete: the run failed on another one)."""
    lacks = run_folder_lacks(output)
    if lacks == "folder":
        raise IncompleteOutputError(f"{output}: no such folder; give the output folder of a finished run")
    if lacks:
        raise IncompleteOutputError(
            f"{output} has no {MANIFEST_NAME}: the run that wrote it did not finish (or it is not a job "
            "output folder); rerun the same command to complete it"
        )
    manifest = json.loads(fileio.read_bytes(fileio.join(output, MANIFEST_NAME)))
    complete = modality is not None and modality_status(manifest, modality)["status"] == "complete"
    if manifest.get("status") == "failed" and not allow_failed and not complete:
        raise FailedRunError(
            f"{output}: run {manifest.get('run_id')} failed ({failure_summary(manifest)}); its embeddings are incomplete. "
            "Read its dead letters with read_errors, or pass allow_failed=True to use it anyway"
        )
    return manifest


def _read_tables(paths: Sequence[str], schema: Optional[pa.Schema] = None) -> pa.Table:
    tables = []
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            tables.append(fileio.read_parquet_table(handle.read()))
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables)


def run_files(output: str, manifest: dict, folder: str) -> list[str]:
    """A finished run's files of one folder (text, image, errors), as paths to open: the manifest
    stores them relative to the run's folder so that it can be moved or copied whole."""
    paths = manifest.get("files", {}).get(folder, [])
    return [p if fileio.is_remote(p) or p.startswith("/") else fileio.join(output, p) for p in paths]


def read_embeddings(output: str, modality: str, allow_failed: bool = False) -> pa.Table:
    """All embeddings of one modality of a finished run, as one table (refuses an unfinished run, and
    a failed one unless `allow_failed` or this modality is complete: `modality_status`)."""
    manifest = read_manifest(output, allow_failed=allow_failed, modality=modality)
    if modality not in manifest.get("models", {}):
        raise ValueError(f"{output}: the run embedded no {modality} (it has: {', '.join(manifest.get('models', {}))})")
    return _read_tables(run_files(output, manifest, modality))


def read_errors(output: str, allow_failed: bool = True) -> pa.Table:
    """The dead letters of a finished run (also of a failed one: they say why it failed)."""
    manifest = read_manifest(output, allow_failed=allow_failed)
    return _read_tables(run_files(output, manifest, "errors"), ERROR_SCHEMA)
