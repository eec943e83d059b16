"""The one base class of every error that is the user's to fix, and the exit codes of the CLI.

A bad flag, file, model or output folder, an unfinished or failed run given to a reader, training
data that cannot give a model: each is raised as a subclass of `UserError`, whose message says
what to fix in one line. Library users catch them all with `except UserError`; the command line
(`pipeline.cli.exit_status`) prints `error: <message>` and exits with the error's `exit_code`.
Anything else is a bug and keeps its traceback.

The existing classes keep their names and their other bases (`ConfigError` is still a
`ValueError`, `IncompleteOutputError` a `RuntimeError`, ...), so older `except` clauses still work.
This module imports nothing heavy.
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "DataError",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
]

EXIT_OK = 0
EXIT_FAILED = 1  # the command was fine but the data or the run failed its checks
EXIT_USAGE = 2  # a bad flag, file, model or output folder: nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class UserError(Exception):
    """An error the user fixes (a bad flag, file, model, output folder, ...): a one-line message, no traceback.

    `exit_code` is what the command line exits with: 2 (`EXIT_USAGE`) unless a subclass or an
    instance says otherwise.
    """

    exit_code: int = EXIT_USAGE


class DataError(UserError):
    """The flags were fine but the data is not: a run over its failure budget, a run folder that did not
    finish (or failed), training files that cannot give a model. Exit code 1 (`EXIT_FAILED`)."""

    exit_code: int = EXIT_FAILED
