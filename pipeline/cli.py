"""Command line: `python -m pipeline COMMAND ...` (also installed as `beam-embeddings`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Optional, Sequence

from pipeline.tools import TOOL_COMMANDS

__all__ = ["main", "COMMANDS"]

# command -> (module, one-line help). Modules are imported only when their command runs,
# so `--help` is quick and a command's heavy imports are paid only by that command.
COMMANDS = {
    "run": ("pipeline.run", "Embed text and/or image records into Parquet (a Beam pipeline)."),
    "train-text": ("pipeline.train_text", "Train the Embedding-layer text model on labelled records."),
    "demo": ("pipeline.demo", "Generate the embedded demo data, or show a run's nearest neighbours."),
}
COMMANDS.update(TOOL_COMMANDS)  # neighbors, build-index, evaluate, export-projector, ... (issue 6)


def _usage() -> str:
    lines = ["usage: python -m pipeline COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<22}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `python -m pipeline COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _run_help() -> str:
    from pipeline.options import EmbeddingJobOptions

    parser = argparse.ArgumentParser(
        prog="python -m pipeline run",
        description=COMMANDS["run"][1] + " Standard Beam flags (--runner, --direct_num_workers, "
        "--project, --region, --temp_location, ...) pass through.",
    )
    EmbeddingJobOptions._add_argparse_args(parser)
    return parser.format_help()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO if "--verbose" in argv else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = [a for a in argv if a != "--verbose"]
    if argv and argv[0] in ("--version", "-V"):
        from pipeline import __version__

        print(f"beam-embeddings {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command == "run":
        if "-h" in rest or "--help" in rest:
            print(_run_help())
            return 0
        from pipeline.run import main as run_main

        return run_main(rest)
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {command}", description=COMMANDS[command][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return module.main_from_args(args)
