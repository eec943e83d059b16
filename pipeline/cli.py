"""Command line: `python -m pipeline COMMAND ...` (also installed as `beam-embeddings`).

Every command takes `--help`, `--version` and `--verbose`. Quiet by default: TensorFlow's C++
start-up lines are hidden (`main` calls `transforms.quiet.install()` before any command imports
TensorFlow or OpenVINO; importing `transforms` does not), Python logging shows warnings and the job's own
progress only, and the chatter of Beam's local worker processes is dropped; `--verbose` shows it
all (INFO logs of every library, TensorFlow's start-up lines, in worker processes too).

One exit path (`exit_status`): the commands raise `transforms.errors.UserError` for what the user
fixes; it becomes one `error:` line on stderr and the error's exit code (2 bad usage, 1 the data or
the run failed a check); Ctrl-C is 130; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import logging
import os
import re
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

from pipeline import __version__
from pipeline.flags_map import user_message
from pipeline.tools import TOOL_COMMANDS
from transforms import quiet
from transforms.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError

__all__ = [
    "main",
    "exit_status",
    "COMMANDS",
    "HelpFormatter",
    "version_line",
    "configure_logging",
    "run_help",
    "program_name",
]

# command -> (module, one-line help). Modules are imported only when their command runs,
# so `--help` is quick and a command's heavy imports are paid only by that command.
COMMANDS = {
    "run": ("pipeline.run", "Embed text and/or image records into Parquet (a Beam pipeline)."),
    "train-text": (
        "pipeline.train.text",
        "Train the Embedding-layer text model: a classifier on labels, skip-gram word vectors, or both.",
    ),
    "train-image": ("pipeline.train.image", "Transfer-learn an image classifier whose `embedding` layer the job can use."),
}
COMMANDS.update(TOOL_COMMANDS)  # neighbors, build-index, evaluate, export-projector, ... (issue 6)
COMMANDS["report"] = (
    "pipeline.tools.report",
    "Write one self-contained HTML page to look at a run: counts, failures, a map, neighbours.",
)

GENERAL_HELP = {
    "verbose": "Show everything: INFO logs of all libraries and TensorFlow's start-up lines (also in worker processes).",
    "version": "Print the version and exit.",
}


CONSOLE_SCRIPT = "beam-embeddings"  # pyproject.toml [project.scripts]


def program_name() -> str:
    """The command as the user typed it, for usage lines: `beam-embeddings` when started as the
    console script, `python -m pipeline` otherwise (sys.argv[0] is then pipeline/__main__.py)."""
    name = os.path.basename(sys.argv[0] if sys.argv else "")
    return name if name.startswith(CONSOLE_SCRIPT) and not name.endswith(".py") else "python -m pipeline"


def version_line() -> str:
    """What `--version` prints."""
    return f"beam-embeddings {__version__}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One spelling per flag in help: a short form if any, and the first long form.

    Other spellings (`--text_input` for templates, old names such as `--out`) are still accepted.
    """

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if len(action.option_strings) > 1:
            shorts = [s for s in action.option_strings if not s.startswith("--")]
            longs = [s for s in action.option_strings if s.startswith("--")]
            action = copy.copy(action)
            action.option_strings = shorts[:1] + longs[:1]
        return super()._format_action_invocation(action)


def _usage() -> str:
    prog = program_name()
    lines = [f"usage: {prog} COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<22}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "options of every command:",
        f"  {'-h, --help':<22}Show the command's options.",
        f"  {'--verbose':<22}{GENERAL_HELP['verbose']}",
        f"  {'--version':<22}{GENERAL_HELP['version']}",
        "",
        f"Run `{prog} COMMAND --help` for a command's options.",
    ]
    return "\n".join(lines)


# Beam's own flags shown in `run --help` (they keep Beam's underscore spelling).
_BEAM_FLAGS = (
    (
        "--runner",
        "RUNNER",
        "DirectRunner (default: this machine) or DataflowRunner (Google Cloud: every path must then be gs://).",
    ),
    ("--direct_num_workers", "N", "Local runner: parallel workers (0: one per CPU)."),
    ("--direct_running_mode", "MODE", "Local runner: in_memory (default), multi_threading or multi_processing."),
    ("--project", "PROJECT", "Dataflow: the Google Cloud project."),
    ("--region", "REGION", "Dataflow: the region, e.g. europe-west1."),
    ("--temp_location", "GS_PATH", "Dataflow: a gs:// folder for temporary files."),
    ("--staging_location", "GS_PATH", "Dataflow: a gs:// folder for the staged code (default: under --temp_location)."),
    ("--job_name", "NAME", "Dataflow: the job's name."),
    ("--max_num_workers", "N", "Dataflow: the most workers autoscaling may start."),
    ("--machine_type", "TYPE", "Dataflow: the worker machine type, e.g. n2-standard-4."),
    ("--setup_file", "PATH", "Dataflow: ./setup.py, to install this package on the workers."),
    ("--sdk_container_image", "IMAGE", "Dataflow: a worker image that already holds this package (see Dockerfile)."),
)


def run_help() -> str:
    """`python -m pipeline run --help`: the job's flags in groups, then the common Beam/Dataflow flags."""
    from pipeline.options import FLAG_GROUPS, EmbeddingJobOptions

    prog = program_name()
    parser = argparse.ArgumentParser(
        prog=f"{prog} run",
        usage=f"{prog} run --output DIR [--text-input GLOB --text-model MODEL.keras] "
        "[--image-input GLOB_OR_MANIFEST --image-model NETWORK_OR_MODEL.keras] [options] [Beam/Dataflow flags]",
        description=COMMANDS["run"][1] + "\nGive text flags, image flags or both; --output is required.",
        epilog="Every flag is also accepted with underscores (--text_input), as Beam and Dataflow templates write it.\n"
        "Examples:\n"
        f"  {prog} run --text-input 'data/*.jsonl' --text-model models/text.keras --output out/\n"
        f"  {prog} run --image-input 'photos/*.jpg' --image-model MobileNetV2 --output out/ \\\n"
        "      --direct_num_workers 2 --direct_running_mode multi_processing",
        formatter_class=HelpFormatter,
        add_help=False,
    )
    general = parser.add_argument_group("General")
    general.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    general.add_argument("--verbose", action="store_true", help=GENERAL_HELP["verbose"])
    general.add_argument("--version", action="store_true", help=GENERAL_HELP["version"])
    parser.embedding_flag_groups = {
        key: parser.add_argument_group(title, description) for key, (title, description) in FLAG_GROUPS.items()
    }
    EmbeddingJobOptions._add_argparse_args(parser)
    for action in parser._actions:
        if action.dest == "output":
            action.required = True
            action.help = "Required. " + action.help
    beam = parser.add_argument_group(
        "Beam / Dataflow",
        "Beam's own flags pass through unchanged (with underscores, as Beam spells them); the common ones:",
    )
    for flag, metavar, help_ in _BEAM_FLAGS:
        beam.add_argument(flag, metavar=metavar, help=help_)
    return parser.format_help()


def command_parser(command: str) -> argparse.ArgumentParser:
    """The argparse parser of a command other than `run`, with --version and --verbose documented."""
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(
        prog=f"{program_name()} {command}", description=COMMANDS[command][1], formatter_class=HelpFormatter
    )
    module.add_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help=GENERAL_HELP["verbose"])
    parser.add_argument("--version", action="version", version=version_line(), help=GENERAL_HELP["version"])
    return parser


# ---------------------------------------------------------------------------------------------
# Logging


_WORKER_MESSAGE = re.compile(r'message: "((?:[^"\\]|\\.)*)"')
_WORKER_NOISE = ("Discarding unparseable args", "No semi_persistent_directory found")


class _WorkerLogFilter(logging.Filter):
    """Beam's local job service re-logs each worker log entry as a whole protobuf: keep its message only.

    Drops the start-up chatter of Beam's worker processes and their INFO lines other than progress.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.args and isinstance(record.args, tuple) and str(record.msg).startswith("Worker:")):
            return True
        found = _WORKER_MESSAGE.search(str(record.args[0]))
        if not found:
            return record.levelno >= logging.WARNING
        try:
            message = ast.literal_eval('b"' + found.group(1) + '"').decode("utf-8", "replace")
        except (ValueError, SyntaxError):
            message = found.group(1)
        if any(noise in message for noise in _WORKER_NOISE):
            return False
        if record.levelno < logging.WARNING and not message.startswith("progress "):
            return False
        record.msg, record.args = "worker: %s", (message,)
        return True


def configure_logging(verbose: bool) -> None:
    """Quiet: warnings, plus the job's own INFO lines (progress, cleared files). Verbose: every INFO line."""
    if verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"  # Beam's local worker processes inherit it
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("embeddings", "pipeline"):
        logging.getLogger(name).setLevel(logging.INFO)
    service = logging.getLogger("apache_beam.runners.portability.local_job_service")
    service.setLevel(logging.INFO)
    if not any(isinstance(f, _WorkerLogFilter) for f in service.filters):
        service.addFilter(_WorkerLogFilter())


def exit_status(command: Optional[str], body: Callable[[], Optional[int]], verbose: bool = False) -> int:
    """The one exit path of every command: run `body` and turn how it ended into the exit code.

    Returns what `body` returned (None: 0). A `UserError` (a bad flag, file, model or output folder,
    an unfinished or failed run, ...) becomes one line on stderr (a model error names the flag of the
    spec field at fault, `pipeline.flags_map`) and its `exit_code` (2 for bad usage,
    1 for data or a run that failed its checks); Ctrl-C becomes one line and 130 (with `verbose`: the
    traceback). Anything else is a bug and propagates with its traceback. `run` and the demo
    (`command` "run" or None) print `error: ...`; the other commands name themselves,
    `COMMAND: error: ...`, as argparse does.
    """
    try:
        code = body()
    except UserError as exc:
        prefix = "" if command in (None, "run") else f"{command}: "
        print(f"{prefix}error: {user_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # e.g. during the start-up imports, before `run` has its own handler
        if verbose:
            raise
        print(f"error: {command + ' ' if command else ''}interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if code is None else code


def _interrupted_while_importing(signum, frame) -> None:
    sys.stderr.write("error: interrupted (Ctrl-C)\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def _import_command(command: str):
    """Import a command's module (TensorFlow, Beam: seconds). A Ctrl-C meanwhile ends the process at
    once with one line and 130: raised as KeyboardInterrupt, it could be swallowed by a library's
    import-time `except:` clause and the command would go on."""
    guard = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupted_while_importing) if guard else None
    try:
        return importlib.import_module(COMMANDS[command][0])
    finally:
        if guard:
            signal.signal(signal.SIGINT, previous)


def _run_command(command: str, rest: list[str]) -> Optional[int]:
    """Run one command with its arguments; user errors are raised, not printed (see `exit_status`)."""
    if command == "run":
        if "-h" in rest or "--help" in rest:
            print(run_help())
            return EXIT_OK
        return _import_command(command).run_command(rest)
    module = _import_command(command)
    args = command_parser(command).parse_args(rest)
    return module.main_from_args(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m pipeline COMMAND ...`: the exit code (0 done, 1 failed its checks, 2 bad usage, 130 Ctrl-C)."""
    quiet.install()  # first: TensorFlow's C++ start-up lines hidden, OpenVINO's telemetry off (`transforms.quiet`)
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    configure_logging(verbose)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return EXIT_OK
    if argv[0] in ("--version", "-V"):
        print(version_line())
        return EXIT_OK
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    if "--version" in rest:
        print(version_line())
        return EXIT_OK
    return exit_status(command, lambda: _run_command(command, rest), verbose)
