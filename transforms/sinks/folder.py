"""The job's output folder: claimed while a run writes it, cleared of an earlier run's files, and
emptied of what an unfinished run wrote — only ever the job's own files.

The folder is the job's only where the job wrote it: a run deletes nothing but the files an earlier
run's manifest names and the job's own temp files, and refuses a folder holding anything else
(`check_output_folder`), before it claims it (`claim_output`: `_RUNNING.json`, freed by
`release_output` when the manifest is written or the run ends). The job's launcher and the
library's `WriteEmbeddingRun` (`transforms.sinks.run`) both keep to these rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import socket
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from transforms.errors import UserError
from transforms.io import fileio
from transforms.results import MANIFEST_NAME, OUTPUT_FOLDERS
from transforms.sinks.manifest import utc_now

__all__ = [
    "RUNNING_NAME",
    "WRITE_PROBE_PREFIX",
    "OutputInUseError",
    "ForeignFilesError",
    "UnreadableManifestError",
    "claim_output",
    "release_output",
    "output_leftovers",
    "check_output_folder",
    "clear_previous_output",
    "discard_unfinished",
]

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
    mine = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started_at": utc_now(), "detached": detached}
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
