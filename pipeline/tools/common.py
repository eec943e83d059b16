"""What the tool commands share: their error class (a `UserError`), reading the run folder back from the
parsed flags, the `--allow-failed` check, output writing and plain-text tables (their shared flags: `pipeline.tools.flags`)."""

from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence

from transforms.errors import UserError
from transforms.io.fileio import upload as copy_local_file  # re-exported for the tools
from transforms.io.fileio import write_bytes
from transforms.results import FailedRunError, failure_summary, modality_status

__all__ = [
    "ToolError",
    "write_bytes",
    "copy_local_file",
    "format_table",
    "format_fields",
    "print_json_lines",
    "print_json",
    "run_folder",
    "check_run_status",
]


class ToolError(UserError, ValueError):
    """A user-facing failure of a tool command: bad flag values or unusable input. The message says what to do.

    A `UserError` (exit code 2): `pipeline.cli.exit_status` prints it as one line.
    """


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("\t", " ").replace("\n", " ")


def format_table(rows: Sequence[Mapping], columns: Sequence[str], max_width: int = 60) -> str:
    """Rows as an aligned plain-text table with a header; long cells are cut to `max_width`."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 3] + "..." for c in line] for line in cells]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(out)


def format_fields(pairs: Sequence[tuple[str, object]]) -> str:
    """`label  value` lines with the labels aligned (a float shows 4 decimals)."""
    width = max((len(label) for label, _ in pairs), default=0)
    return "\n".join(f"{label:<{width}}  {_cell(value)}".rstrip() for label, value in pairs)


def run_folder(args, usage: str = "RUN", required: bool = True) -> Optional[str]:
    """The run folder given as RUN or --run/--embeddings (`pipeline.tools.flags.run_flags`); None when
    not `required` and not given."""
    run, flag = getattr(args, "run", None), getattr(args, "run_flag", None)
    if run and flag and run != flag:
        raise ToolError("give the run folder once (RUN or --run/--embeddings)")
    found = run or flag
    if not found and required:
        raise ToolError(f"give the run folder: {usage} (or --run RUN)")
    return found


def print_json(value) -> None:
    """One indented JSON document on stdout."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_json_lines(rows: Sequence[Mapping]) -> None:
    """One JSON object per line on stdout."""
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))


def check_run_status(
    output: str, manifest: dict, modality: str, allow_failed: bool, flag: str = "--allow-failed"
) -> Optional[str]:
    """Whether a command may read `modality` of the run in `output`: FailedRunError (exit 1, suggesting
    `flag`) when the run failed its checks on that modality and `allow_failed` is off; otherwise the
    note line to print (None for a complete run). A modality that is complete in a failed run
    (images fine, text over its budget) is read without the flag."""
    if manifest.get("status") != "failed":
        return None
    run = f"run {manifest.get('run_id')}"
    status = modality_status(manifest, modality)
    if status["status"] == "complete":
        return f"note: {run} failed ({failure_summary(manifest)}), but its {modality} embeddings are complete: reading them"
    if not allow_failed:
        raise FailedRunError(
            f"{output}: {run} failed ({failure_summary(manifest)}); its {modality} embeddings are incomplete. "
            f"Pass {flag} to use them anyway (its dead letters are in {output}/errors/)"
        )
    return (
        f"note: {run} failed ({status.get('reason', 'see its manifest')}): reading its incomplete {modality} embeddings ({flag})"
    )
