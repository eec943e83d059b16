"""The command line as a user meets it: quiet, usable from any folder, helpful, versioned, and safe with Dataflow.

The quiet tests run the real CLI in subprocesses (TensorFlow's start-up lines are written by C++
to file descriptor 2, which only a real process shows): train a text model, embed with it, then
search the run from another folder.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

from pipeline import __version__, cli
from tests_support import PROJECT_ROOT, TWO_WORKER_PROCESSES, run_pipeline

NOISE = ("I0000", "absl::InitializeLog", "oneDNN custom operations")

REVIEWS = [
    ("good great fine film", 1),
    ("great acting good plot", 1),
    ("fine good movie", 1),
    ("good fun great", 1),
    ("bad awful boring film", 0),
    ("awful plot bad acting", 0),
    ("boring bad movie", 0),
    ("bad dull awful", 0),
]


def _cli(args: list[str], cwd: pathlib.Path, verbose: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "EMBEDDINGS_VERBOSE")}
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return run_pipeline(*args, *(["--verbose"] if verbose else []), cwd=cwd, env=env, timeout=timeout)


def _assert_quiet(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    noisy = [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A user's folder: train-text, then run, both with relative paths from that folder."""
    root = tmp_path_factory.mktemp("user")
    (root / "data").mkdir()
    lines = [json.dumps({"id": f"r{i}", "text": text, "label": str(label)}) for i, (text, label) in enumerate(REVIEWS * 4)]
    (root / "data" / "reviews.jsonl").write_text("\n".join(lines) + "\n")
    train = _cli(
        [
            "train-text",
            "--input",
            "data/reviews.jsonl",
            "--output",
            "models/text.keras",
            "--epochs",
            "2",
            "--sequence-length",
            "8",
            "--embedding-dim",
            "8",
            "--vocab-size",
            "50",
        ],
        root,
    )
    run = _cli(
        [
            "run",
            "--text-input",
            "data/*.jsonl",
            "--text-model",
            "models/text.keras",
            "--output",
            "out",
            "--passthrough",
            "label,text",
        ],
        root,
    )
    return {"root": root, "train": train, "run": run}


@pytest.mark.slow
def test_train_text_and_run_print_no_tensorflow_startup_lines(project):
    _assert_quiet(project["train"])
    report = json.loads(project["train"].stdout)  # stdout is the report alone; Keras' epoch lines went to stderr
    assert report["val_accuracy"] >= 0 and "Epoch 1/2" in project["train"].stderr
    _assert_quiet(project["run"])
    assert "finished" in project["run"].stdout and "ok" in project["run"].stdout


@pytest.mark.slow
def test_the_manifest_records_absolute_paths(project):
    manifest = json.loads((project["root"] / "out" / "_MANIFEST.json").read_text())
    model_path = manifest["options"]["text_model"]["path"]
    assert os.path.isabs(model_path) and pathlib.Path(model_path) == project["root"] / "models" / "text.keras"
    assert manifest["models"]["text"]["details"]["path"] == model_path
    assert manifest["options"]["text_inputs"] == [str(project["root"] / "data" / "*.jsonl")]
    assert manifest["output"] == str(project["root"] / "out")


@pytest.mark.slow
def test_neighbors_by_text_from_another_folder_shows_the_stored_texts(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _cli(["neighbors", "--embeddings", str(project["root"] / "out"), "--text", "good film", "-k", "3"], elsewhere)
    _assert_quiet(done)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "label", "text"]  # --passthrough text: the text beside its vector
    texts = {text for text, _ in REVIEWS}
    assert len(lines) == 4 and all(any(line.endswith(t) for t in texts) for line in lines[1:])


@pytest.mark.slow
def test_verbose_shows_what_quiet_hides(project, tmp_path):
    done = _cli(
        ["neighbors", "--embeddings", str(project["root"] / "out"), "--text", "good film", "-k", "1"], tmp_path, verbose=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "absl::InitializeLog" in done.stderr or "I0000" in done.stderr


@pytest.mark.slow
def test_beam_worker_processes_are_quiet_too(project):
    done = _cli(
        [
            "run",
            "--text-input",
            "data/*.jsonl",
            "--text-model",
            "models/text.keras",
            "--output",
            "out-mp",
            *TWO_WORKER_PROCESSES,
        ],
        project["root"],
    )
    _assert_quiet(done)
    assert "Discarding unparseable args" not in done.stderr  # Beam's worker chatter is dropped as well


# ---- --version and --help -------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *[[name] for name in cli.COMMANDS]])
def test_every_command_prints_the_package_version(command, capsys):
    assert cli.main([*command, "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"beam-embeddings {__version__}"


def test_the_version_is_written_once_and_the_packaging_reads_it():
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'version = { attr = "pipeline.__version__" }' in pyproject
    assert __version__ not in pyproject and __version__ not in (PROJECT_ROOT / "setup.py").read_text()


def test_run_help_has_groups_one_spelling_and_a_required_output(capsys):
    assert cli.main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    usage = text.split("\n\n")[0]
    assert usage.startswith("usage: python -m pipeline run --output DIR ")  # required: not in brackets
    titles = [line[:-1] for line in text.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert titles == ["General", "Output", "Text", "Images", "Behaviour", "Beam / Dataflow", "Examples"]
    assert "--text-input GLOB" in text and "--text_input GLOB" not in text  # one spelling shown...
    assert "accepted with underscores" in text  # ... and the other one explained
    assert "pass through" in text and "--runner" in text and "--temp_location" in text
    assert "--verbose" in text and "--version" in text
    output_help = text[text.index("  --output DIR") :].split("\n  --")[0]
    assert "Required" in output_help


def test_run_still_accepts_underscore_spellings_for_templates():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import check_unknown_flags
    from pipeline.options import EmbeddingJobOptions

    argv = ["--text_input", "a.jsonl", "--text-model", "m.keras", "--output=o", "--image_alpha=0.5"]
    check_unknown_flags(argv)
    options = PipelineOptions(argv).view_as(EmbeddingJobOptions)
    assert options.text_input == ["a.jsonl"] and options.text_model == "m.keras" and options.image_alpha == 0.5


def test_tool_help_shows_one_spelling_and_old_names_still_work(tmp_path, capsys):
    parser = cli.command_parser("export-projector")
    text = parser.format_help()
    assert "--output DIR2" in text and "--out " not in text and "--verbose" in text and "--version" in text
    assert parser.parse_args(["--embeddings", "e", "--out", "p"]).out == "p"  # the old spelling, for scripts
    train = cli.command_parser("train-image")
    text = train.format_help()
    assert "--image-weights" in text and "--image-alpha" in text and "--base-weights" not in text
    args = train.parse_args(
        ["--input", "i", "--base", "MobileNet", "--output", "m.keras", "--base-weights", "w.h5", "--alpha", "0.25"]
    )
    assert args.base_weights == "w.h5" and args.alpha == 0.25


def test_demo_neighbors_keeps_the_british_spelling():
    import argparse

    from examples import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    for spelling in ("neighbors", "neighbours"):
        args = parser.parse_args([spelling, "--output", "o"])
        assert args.output == "o" and args.demo_command == spelling
    assert parser.parse_args(["data", "--out", "d"]).out == parser.parse_args(["data", "--output", "d"]).out == "d"


# ---- Dataflow refuses local paths ------------------------------------------------------------

DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1", "--temp_location", "gs://b/tmp"]
REMOTE = {"--output": "gs://b/out", "--text-input": "gs://b/in/*.jsonl", "--text-model": "gs://b/m/text.keras"}


@pytest.mark.parametrize(
    "flag, local",
    [
        ("--output", "out"),
        ("--text-input", "data/*.jsonl"),
        ("--text-model", "models/text.keras"),
        ("--image-model", "/abs/image.keras"),
        ("--image-weights", "weights.h5"),
        ("--incremental-from", "earlier"),
        ("--temp_location", "/tmp/beam"),
    ],
)
def test_dataflow_with_a_local_path_fails_before_submission(flag, local, capsys):
    flags = dict(REMOTE)
    if flag.startswith("--image"):
        flags = {
            "--output": "gs://b/out",
            "--image-input": "gs://b/img/*.png",
            "--image-model": "gs://b/m/image.keras" if flag != "--image-model" else local,
        }
        if flag == "--image-weights":
            flags["--image-model"] = "MobileNet"
    flags[flag] = local
    argv = ["run", *DATAFLOW] + [part for item in flags.items() for part in item]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {local!r}: a local path") and "gs://" in err


def test_dataflow_with_uris_passes_the_path_check():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import config_from_options

    argv = (
        DATAFLOW
        + [part for item in REMOTE.items() for part in item]
        + ["--image-input", "gs://b/i/*.png", "--image-model", "MobileNet"]
    )
    config = config_from_options(PipelineOptions(argv), check_paths=False)
    assert config.output == "gs://b/out" and config.text_model.path == "gs://b/m/text.keras"


def test_local_paths_become_absolute_in_the_config(tmp_path, monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import config_from_options

    monkeypatch.chdir(tmp_path)
    argv = [
        "--text-input",
        "data/*.jsonl",
        "--text-model",
        "m/text.keras",
        "--output",
        "out/",
        "--image-input",
        "img/*.png",
        "--image-model",
        "MobileNet",
        "--image-weights",
        "w/mobilenet.h5",
        "--incremental-from",
        "../earlier/",
    ]
    config = config_from_options(PipelineOptions(argv), check_paths=False)
    assert config.text_inputs == (str(tmp_path / "data" / "*.jsonl"),)
    assert config.text_model.path == str(tmp_path / "m" / "text.keras")
    assert config.output == str(tmp_path / "out")
    assert config.image_inputs == (str(tmp_path / "img" / "*.png"),)
    assert config.image_model.weights == str(tmp_path / "w" / "mobilenet.h5") and config.image_model.model == "MobileNet"
    assert config.incremental_from == (str(tmp_path.parent / "earlier"),)


def test_passthrough_text_is_allowed_and_real_columns_still_clash():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import config_from_options
    from pipeline.options import ConfigError

    base = ["--text-input", "gs://b/*.jsonl", "--text-model", "gs://b/t.keras", "--output", "gs://b/o"]
    config = config_from_options(PipelineOptions(base + ["--passthrough", "label,text"]), check_paths=False)
    assert config.passthrough == ("label", "text") and config.text_read_passthrough == ("label",)
    with pytest.raises(ConfigError, match="--passthrough 'embedding'"):
        config_from_options(PipelineOptions(base + ["--passthrough", "embedding"]), check_paths=False)


def test_a_relative_model_path_of_an_older_manifest_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import numpy as np
    from test_tools_support import write_run

    run = write_run(tmp_path / "run", np.eye(3, dtype=np.float32), modality="text")
    manifest = json.loads((run / "_MANIFEST.json").read_text())
    manifest["options"]["text_model"] = {"path": "models/text.keras"}  # as runs before absolute paths wrote it
    (run / "_MANIFEST.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["neighbors", "--embeddings", str(run), "--text", "good"]) == 2
    err = capsys.readouterr().err
    assert "'models/text.keras'" in err and "relative" in err and "--text-model" in err


_IMPORT_ONLY = """
import json, sys
before = list(sys.meta_path)
import transforms
unchanged = sys.meta_path == before
from transforms import EmbedText, read_embeddings  # the public names, loaded on first use (Beam adds finders of its own)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "openvino", "openvino_telemetry"})
ours = [repr(f) for f in sys.meta_path if type(f).__module__.startswith("transforms")]
print(json.dumps({"unchanged": unchanged, "heavy": heavy, "ours": ours}))
"""


def test_importing_transforms_has_no_side_effects():
    """`import transforms` (and its public names) defines names only: no finder of ours on sys.meta_path,
    no TensorFlow or OpenVINO imported, OpenVINO's telemetry left alone (the CLI and the DoFns' setup do that)."""
    import sys

    env = {k: v for k, v in os.environ.items() if k != "EMBEDDINGS_VERBOSE"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ONLY], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == {"unchanged": True, "heavy": [], "ours": []}


def test_the_cli_quiets_tensorflow_before_a_command_runs(monkeypatch):
    """`main` installs the quiet start-up itself, whatever the command (importing `transforms` no longer does)."""
    import sys

    from transforms import quiet

    def ours():
        return [f for f in sys.meta_path if type(f).__module__ == quiet.__name__]

    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if f not in ours()])
    assert cli.main(["--version"]) == 0
    assert len(ours()) == 1


def test_quiet_stderr_drops_only_the_startup_lines(capfd, monkeypatch):
    """What C++ writes to fd 2 during the import: the absl lines go, anything else written meanwhile stays."""
    from transforms import quiet

    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    with quiet.quiet_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796153109.487435    7182 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1796153109.5 7182 cuda_dnn.cc:8310] Unable to register cuDNN factory\n")
        os.write(2, b"another thread's warning\n")
    assert capfd.readouterr().err == "another thread's warning\n"

    with pytest.raises(ImportError):
        with quiet.quiet_stderr():
            os.write(2, b"I0000 00:00:1.0 1 port.cc:1] the reason it failed\n")
            raise ImportError("broken install")
    assert "the reason it failed" in capfd.readouterr().err  # a failed import shows everything

    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    with quiet.quiet_stderr():
        os.write(2, b"I0000 00:00:1.0 1 port.cc:1] shown when verbose\n")
    assert "shown when verbose" in capfd.readouterr().err
