"""One user-error class, one exit path (transforms.errors, pipeline.cli.exit_status).

Every error that is the user's to fix is a `UserError` carrying its exit code; the real commands,
given real bad inputs, end with one `error:` line on stderr and that code; bugs keep their traceback.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys

import numpy as np
import pytest

import pipeline
import transforms
from pipeline import cli
from pipeline.cli import exit_status
from tests.test_tools_support import write_run
from tests.tests_support import PROJECT_ROOT
from transforms.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, DataError, UserError

# Exceptions of the job that are NOT the user's to fix on the command line, and why. Any other
# exception class defined in pipeline/ or transforms/ must be a UserError: a new error class has
# to be placed on one side or the other.
NOT_USER_ERRORS = {
    # one bad record or image: a dead letter (id, stage, reason), never a stop
    "transforms.embed.decode.ImageDecodeError",
    "transforms.embed.decode.EmptyImageFile",
    "transforms.embed.decode.UnsupportedImageFormat",
    "transforms.embed.decode.CorruptImage",
    "transforms.embed.decode.ImageTooLarge",
    "transforms.embed.dofns.NonFiniteEmbedding",
    "transforms.embed.dofns.EmptyText",
    "transforms.io.fileio.TruncatedInput",
    "transforms.io.fileio.FileTooLarge",
    # a FIFO, socket, device or folder among the inputs: a dead letter (issue 19), never opened
    "transforms.io.fileio.NotARegularFile",
    "transforms.io.splits.RecordTooLarge",
    "transforms.io.text_formats.RecordError",
    "transforms.io.text_formats.UnclosedQuote",
    # raised into the CSV reader to stop a quoted field that runs on; never leaves text_formats
    "transforms.io.text_formats._QuoteRunsOn",
    # the storage went away mid-run: `run` reports it as RunStopped (exit 1) with one line
    "transforms.io.fileio.StorageUnavailable",
    # OpenVINO missing or failing: `auto` falls back to TensorFlow, `openvino` raises ModelConfigError
    "transforms.embed.backends.BackendUnavailable",
    "transforms.embed.backends.ConversionFailed",
    # OpenCV missing for --image-decoder opencv: the model loader raises it as ModelConfigError
    "transforms.embed.decode.DecoderUnavailable",
}

# Every user-error class, its other base (older `except` clauses keep working) and its exit code.
USER_ERRORS = {
    "pipeline.options.ConfigError": (ValueError, EXIT_USAGE),
    "pipeline.options.StorageUnreachable": (ConnectionError, EXIT_FAILED),
    "transforms.embed.models.ModelConfigError": (ValueError, EXIT_USAGE),
    "pipeline.tools.common.ToolError": (ValueError, EXIT_USAGE),
    "pipeline.tools.similar_words.UnknownWordError": (ValueError, EXIT_USAGE),
    "pipeline.train.text.TrainingConfigError": (ValueError, EXIT_USAGE),
    "pipeline.train.text.TrainingDataError": (ValueError, EXIT_FAILED),
    "pipeline.train.vectors.VectorFileError": (ValueError, EXIT_USAGE),
    "transforms.sinks.bigquery.BigQueryTableError": (ValueError, EXIT_USAGE),
    "transforms.sinks.folder.OutputInUseError": (RuntimeError, EXIT_USAGE),
    "transforms.sinks.folder.ForeignFilesError": (RuntimeError, EXIT_USAGE),
    "transforms.sinks.folder.UnreadableManifestError": (RuntimeError, EXIT_USAGE),
    "transforms.results.IncompleteOutputError": (RuntimeError, EXIT_FAILED),
    "transforms.results.FailedRunError": (RuntimeError, EXIT_FAILED),
    "pipeline.run.RunFailed": (RuntimeError, EXIT_FAILED),
    "pipeline.run.RunStopped": (RuntimeError, EXIT_FAILED),
}


def _exception_classes() -> dict[str, type]:
    """Every exception class defined in the modules of pipeline/ and transforms/, by dotted name."""
    found = {}
    for package in (pipeline, transforms):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):  # runs the CLI when imported
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                    found[f"{module.__name__}.{name}"] = value
    return found


def test_every_error_class_is_a_user_error_or_a_known_other_kind():
    classes = _exception_classes()
    for name in USER_ERRORS.keys() | NOT_USER_ERRORS:
        assert name in classes, f"{name} is gone: update this test"
    unplaced = sorted(name for name, cls in classes.items() if not issubclass(cls, UserError) and name not in NOT_USER_ERRORS)
    assert not unplaced, f"make these UserErrors or list them in NOT_USER_ERRORS: {unplaced}"
    for name, (base, code) in USER_ERRORS.items():
        cls = classes[name]
        assert issubclass(cls, UserError) and issubclass(cls, base), name
        assert cls.exit_code == code and issubclass(cls, DataError) == (code == EXIT_FAILED), name
    for name in NOT_USER_ERRORS:
        assert not issubclass(classes[name], UserError), name
    assert {name for name, cls in classes.items() if issubclass(cls, UserError)} == USER_ERRORS.keys() | {
        "transforms.errors.UserError",
        "transforms.errors.DataError",
    }


def test_bugs_keep_their_traceback_and_ctrl_c_is_one_line(capsys):
    def bug():
        return {}["missing"]

    with pytest.raises(KeyError):  # not swallowed: Python prints the traceback and exits 1
        exit_status("neighbors", bug)

    def interrupted():
        raise KeyboardInterrupt

    assert exit_status("evaluate", interrupted) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "error: evaluate interrupted (Ctrl-C)\n"
    with pytest.raises(KeyboardInterrupt):  # --verbose shows where it stopped
        exit_status("evaluate", interrupted, verbose=True)


# ---- the real commands, real bad inputs -------------------------------------------------------


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _bad_run_argv(case: str, tmp, text_model) -> tuple[list[str], int, str, str]:
    """argv for `python -m pipeline`, the exit code, the error line's start and a part of its message."""
    data = _jsonl(tmp / "in.jsonl", [{"id": f"r{i}", "text": "good movie"} for i in range(5)])
    out = tmp / "out"
    run = ["run", "--output", str(out), "--text-input", str(data), "--text-model", str(text_model)]
    vectors = np.eye(4, dtype=np.float32)
    if case == "ConfigError":  # a glob that matches nothing
        return (
            ["run", "--output", str(out), "--text-input", str(tmp / "none-*.jsonl"), "--text-model", str(text_model)],
            EXIT_USAGE,
            "error: --text-input",
            "matches no file",
        )
    if case == "ModelConfigError":  # a model file that is not there
        return run[:-1] + [str(tmp / "missing.keras")], EXIT_USAGE, "error: --text-model", "missing.keras"
    if case == "BigQueryTableError":
        return run + ["--bigquery-table", "not-a-table"], EXIT_USAGE, "error: --bigquery-table", "not-a-table"
    if case == "OutputInUseError":  # another live run (this test's process) holds the folder
        from transforms.sinks.folder import claim_output

        claim_output(str(out), "the-other-run")
        return run, EXIT_USAGE, f"error: --output {str(out)!r}", "the-other-run"
    if case == "RunFailed":  # every record is longer than --max-text-bytes: over the failure budget
        return run + ["--max-text-bytes", "4"], EXIT_FAILED, "error: run ", "5 of 5 records failed"
    if case == "IncompleteOutputError":  # a folder whose run never finished
        write_run(tmp / "half", vectors, manifest=False)
        return (
            ["neighbors", "--embeddings", str(tmp / "half"), "--id", "image-0000"],
            EXIT_FAILED,
            "neighbors: error: ",
            "did not finish",
        )
    if case == "FailedRunError":  # a run that failed its checks
        folder = write_run(tmp / "failed", vectors, passthrough={"label": list("aabb")})
        manifest = json.loads((folder / "_MANIFEST.json").read_text())
        (folder / "_MANIFEST.json").write_text(json.dumps({**manifest, "status": "failed", "failures": {"image": "too many"}}))
        return (
            ["evaluate", "--embeddings", str(folder), "--label-field", "label"],
            EXIT_FAILED,
            "evaluate: error: ",
            "failed (image: too many)",
        )
    if case == "ToolError":  # an id the run does not have
        folder = write_run(tmp / "run", vectors)
        return ["neighbors", "--embeddings", str(folder), "--id", "nope"], EXIT_USAGE, "neighbors: error: ", "nope"
    if case == "UnknownWordError":
        return (
            ["similar-words", "--text-model", str(text_model), "--word", "splendid"],
            EXIT_USAGE,
            "similar-words: error: ",
            "'splendid' is not in the model's vocabulary",
        )
    if case == "TrainingConfigError":
        return (
            ["train-text", "--input", str(data), "--output", str(tmp / "m.h5")],
            EXIT_USAGE,
            "train-text: error: --output",
            "must end in .keras",
        )
    if case == "TrainingDataError":  # every label unusable (any string or number is a class label)
        bad = _jsonl(tmp / "bad.jsonl", [{"text": "meh", "label": None}] * 10)
        return (
            ["train-text", "--input", str(bad), "--output", str(tmp / "m.keras")],
            EXIT_FAILED,
            "train-text: error: ",
            "records are bad",
        )
    raise AssertionError(case)


CASES = [
    "ConfigError",
    "ModelConfigError",
    "BigQueryTableError",
    "OutputInUseError",
    "RunFailed",
    "IncompleteOutputError",
    "FailedRunError",
    "ToolError",
    "UnknownWordError",
    "TrainingConfigError",
    "TrainingDataError",
]


@pytest.mark.parametrize("case", CASES)
def test_each_kind_of_user_error_is_one_line_and_its_exit_code(case, tmp_path, tiny_text_model, capsys):
    argv, code, start, part = _bad_run_argv(case, tmp_path, tiny_text_model)
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    [line] = [line for line in lines if "error: " in line]
    after = lines[lines.index(line) + 1 :]  # the last line; only train-text lists its first bad records below it
    assert all(example.startswith("  ") for example in after) and (not after or case == "TrainingDataError"), err
    assert line.startswith(start) and part in line, line
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.slow
def test_the_process_exit_codes_of_the_entry_points(tmp_path, tiny_text_model):
    """`python -m pipeline`, `python -m examples.demo` and `pipeline.run.main` (the flex template's entry)
    exit through the same path, with the same codes."""
    write_run(tmp_path / "half", np.eye(3, dtype=np.float32), manifest=False)
    cases = [
        (["-m", "pipeline", "neighbors", "--embeddings", str(tmp_path / "half"), "--id", "x"], EXIT_FAILED, "neighbors: error: "),
        (["-m", "pipeline", "no-such-command"], EXIT_USAGE, "error: unknown command 'no-such-command'"),
        (["-m", "examples.demo", "neighbours", "--output", str(tmp_path / "half")], EXIT_USAGE, "error: "),
        (
            [
                "-c",
                "import sys; from pipeline.run import main; sys.exit(main())",
                "--output",
                str(tmp_path / "o"),
                "--text-input",
                str(tmp_path / "none.jsonl"),
                "--text-model",
                str(tiny_text_model),
            ],
            EXIT_USAGE,
            "error: --text-input",
        ),
    ]
    for args, code, start in cases:
        done = subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == code, (args, done.stderr[-2000:])
        errors = [line for line in done.stderr.splitlines() if "error: " in line]
        assert "Traceback" not in done.stderr and errors and errors[0].startswith(start), (args, done.stderr[-2000:])
