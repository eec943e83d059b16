"""The flags the tool commands share, declared once: the run folder (`RUN` or `--run`), `--modality`,
`--allow-failed`, `--unsafe-model-loading`, `--text-model`, `--json`, `-k`, `--seed`, `--batch-rows`,
`--label-field` and `--output`: a flag name is spelled in one place of `pipeline/tools/`.

Each tool declares its flags in a `FLAGS` table of `pipeline.command_flags.CommandFlag`s (the
trainers' `TrainFlag`) and builds its parser from it (`add_flags`); a shared flag is taken from here
as it is, or with the tool's own help (`dataclasses.replace(MODALITY_FLAG, help=...)`), and the
factories below write the words every tool says the same way once (`json_flag("the summary")`).
Defaults come from the code that uses them (`DEFAULT_BATCH_ROWS` from `store`, `DEFAULT_K` from `knn`),
so a flag's default and the Python function's are the same value written once.
"""

from __future__ import annotations

import dataclasses

from pipeline.command_flags import CommandFlag
from pipeline.tools.knn import DEFAULT_K
from pipeline.tools.store import DEFAULT_BATCH_ROWS
from transforms.records import MODALITIES

__all__ = [
    "run_flags",
    "MODALITY_FLAG",
    "ALLOW_FAILED_HELP",
    "ALLOW_FAILED_FLAG",
    "UNSAFE_MODEL_LOADING_FLAG",
    "TEXT_MODEL_FLAG",
    "switch",
    "json_flag",
    "json_lines_flag",
    "k_flag",
    "seed_flag",
    "batch_rows_flag",
    "label_field_flag",
    "output_flag",
]

_RUN_HELP = "A finished run's output folder (local or gs://)"


def run_flags(required: bool = True) -> tuple[CommandFlag, CommandFlag]:
    """The run folder, the same way in every tool: `RUN` (positional) or `--run RUN`; `--embeddings` is
    the older spelling of `--run`. `pipeline.tools.common.run_folder(args, required=...)` reads it back."""
    return (
        CommandFlag("run", _RUN_HELP + ("." if required else "; or --run."), nargs="?", metavar="RUN"),
        CommandFlag(
            "--run",
            "The run folder as a flag (--embeddings: the old name).",
            aliases=("--embeddings",),
            dest="run_flag",
            metavar="RUN",
        ),
    )


def switch(name: str, help: str) -> CommandFlag:
    """An on/off flag (`store_true`, off by default)."""
    return CommandFlag(name, help, default=False, action="store_true")


MODALITY_FLAG = CommandFlag("--modality", "Which embeddings (default: the run's only modality).", choices=MODALITIES)
ALLOW_FAILED_HELP = (
    "Read a run whose manifest says it failed its checks (a failed modality's embeddings are incomplete);"
    " a modality that is complete in a failed run is read without it."
)
# every command that reads a run takes it (Python: `allow_failed=True`)
ALLOW_FAILED_FLAG = switch("--allow-failed", ALLOW_FAILED_HELP)
UNSAFE_MODEL_LOADING_FLAG = switch(
    "--unsafe-model-loading", "Allow .keras models with custom Python code (only for files you trust)."
)
TEXT_MODEL_FLAG = CommandFlag(
    "--text-model", "A .keras model made by `train-text` (local or gs://).", required=True, metavar="PATH"
)


def json_flag(what: str = "the result") -> CommandFlag:
    """`--json`: `what` as one JSON document instead of the human-readable table."""
    return switch("--json", f"Print {what} as JSON (for scripts) instead of a table.")


def json_lines_flag(row: str) -> CommandFlag:
    """`--json` of a command that prints rows: one JSON object per `row`."""
    return dataclasses.replace(json_flag(), help=f"One JSON object per {row} instead of a table.")


def k_flag(what: str, default: int = DEFAULT_K) -> CommandFlag:
    """`-k`/`--k`: how many neighbours."""
    return CommandFlag("-k", f"{what} (default: %(default)s).", default=default, aliases=("--k",), type=int)


def seed_flag(of: str) -> CommandFlag:
    """`--seed` of the command's sampling."""
    return CommandFlag("--seed", f"Seed of {of} (default: %(default)s).", default=0, type=int)


def batch_rows_flag(what: str) -> CommandFlag:
    """`--batch-rows`: rows read from the run's Parquet at a time."""
    return CommandFlag("--batch-rows", f"{what} (default: %(default)s).", default=DEFAULT_BATCH_ROWS, type=int)


def label_field_flag(help: str) -> CommandFlag:
    """`--label-field`: the passthrough column of the labels (`report` spells it `--label-column`)."""
    return CommandFlag("--label-field", help)


def output_flag(metavar: str, help: str) -> CommandFlag:
    """`--output` (older spelling `--out`) of a tool that writes files."""
    return CommandFlag("--output", help, aliases=("--out",), dest="out", required=True, metavar=metavar)
