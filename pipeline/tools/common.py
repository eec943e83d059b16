"""What the tool commands share: their error class (a `UserError`), output writing and plain-text tables."""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from transforms.errors import UserError
from transforms.io.fileio import upload as copy_local_file  # re-exported for the tools
from transforms.io.fileio import write_bytes

__all__ = [
    "ToolError",
    "write_bytes",
    "copy_local_file",
    "format_table",
    "format_fields",
    "print_json_lines",
    "print_json",
    "add_json_flag",
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


def add_json_flag(parser, what: str = "the result") -> None:
    """`--json`: machine-readable output instead of the human-readable table."""
    parser.add_argument("--json", action="store_true", help=f"Print {what} as JSON (for scripts) instead of a table.")


def print_json(value) -> None:
    """One indented JSON document on stdout."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_json_lines(rows: Sequence[Mapping]) -> None:
    """One JSON object per line on stdout."""
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
