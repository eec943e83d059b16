"""One vocabulary across commands (issue 22 item 8): the same flag names everywhere (old spellings
kept as aliases), `--json` on every tool that prints data, one vocabulary size, `neighbors --id`
finding the id's modality, and usage lines naming the command as the user typed it."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
from PIL import Image

from pipeline import cli
from pipeline.tools import neighbors, similar_words, word_vectors
from tests.test_tools_support import run_cli, sentiment_sentences
from tests.tests_support import run_pipeline

# command -> (new spelling, old spelling) pairs that must land in the same place
ALIASES = {
    "train-text": [("--text-input", "--input"), ("--text-encoding", "--encoding")],
    "train-image": [("--image-input", "--input"), ("--image-uri-field", "--uri-field")],
    "neighbors": [("--run", "--embeddings")],
    "build-index": [("--run", "--embeddings")],
    "evaluate": [("--run", "--embeddings")],
    "export-projector": [("--run", "--embeddings")],
    "report": [("--run", "--embeddings")],
    "export-word-vectors": [("--output", "--out")],
}
DATA_PRINTING_TOOLS = [
    "neighbors",
    "build-index",
    "evaluate",
    "export-projector",
    "export-word-vectors",
    "similar-words",
    "report",
]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


@pytest.mark.parametrize("command", sorted(ALIASES))
def test_old_and_new_spellings_are_one_flag(command):
    parser = cli.command_parser(command)
    for new, old in ALIASES[command]:
        action = _option(parser, new)
        assert old in action.option_strings, f"{command}: {old} is not an alias of {new}"
        assert action.option_strings.index(new) < action.option_strings.index(old)  # help shows the new name
        assert action is _option(parser, old)


def test_the_run_folder_is_positional_or_a_flag_in_every_run_tool(tmp_path):
    from pipeline.tools.common import run_folder

    for command in ("neighbors", "build-index", "export-projector", "report"):
        parser = cli.command_parser(command)
        extra = {"neighbors": ["--id", "x"], "export-projector": ["--output", "proj"]}.get(command, [])
        for spelling in (["RUNDIR"], ["--run", "RUNDIR"], ["--embeddings", "RUNDIR"]):
            assert run_folder(parser.parse_args(spelling + extra)) == "RUNDIR", (command, spelling)


def test_train_text_accepts_text_encoding_where_run_does():
    parser = cli.command_parser("train-text")
    args = parser.parse_args(
        ["--text-input", "a.jsonl", "--input", "b.jsonl", "--text-encoding", "cp1252", "--output", "m.keras"]
    )
    assert args.input == ["a.jsonl", "b.jsonl"] and args.encoding == "cp1252"


@pytest.mark.parametrize("command", DATA_PRINTING_TOOLS)
def test_every_data_printing_tool_has_json(command):
    assert _option(cli.command_parser(command), "--json").dest == "json"


@pytest.fixture(scope="module")
def two_modality_run(tmp_path_factory, tiny_text_model, tiny_image_model):
    """A real run with text records t0..t5 and images img0.png..img3.png."""
    folder = tmp_path_factory.mktemp("two-modalities")
    records = folder / "texts.jsonl"
    rows = sentiment_sentences(6, seed=2)
    records.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, (t, _) in enumerate(rows)))
    images = folder / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (60 * i, 255 - 50 * i, 90)).save(images / f"img{i}.png")
    output = folder / "out"
    done = run_pipeline(
        "run",
        "--output",
        output,
        "--text-input",
        records,
        "--text-model",
        tiny_text_model,
        "--image-input",
        images / "*.png",
        "--image-model",
        tiny_image_model,
    )
    assert done.returncode == 0, done.stderr
    return output


@pytest.mark.parametrize("record_id, modality", [("t3", "text"), ("img2.png", "image")])
def test_neighbors_id_without_modality_searches_the_modality_holding_the_id(two_modality_run, capsys, record_id, modality):
    assert run_cli(neighbors, [str(two_modality_run), "--id", record_id, "-k", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    found = [json.loads(line) for line in out.splitlines()]
    assert len(found) == 2 and record_id not in {row["id"] for row in found}
    assert all(row["id"].startswith("t" if modality == "text" else "img") for row in found)
    assert f"nearest {modality} neighbors" in err


def test_neighbors_id_in_no_modality_is_one_error_line(two_modality_run, capsys):
    assert run_cli(neighbors, ["--run", str(two_modality_run), "--id", "nope"]) == 2
    assert "no such id in the text or image embeddings" in capsys.readouterr().err


def test_training_export_and_similar_words_report_the_same_vocabulary_size(tmp_path, capsys):
    from pipeline.train import text as train_text

    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": str(y)}) + "\n" for t, y in sentiment_sentences(60, seed=4)))
    args = cli.command_parser("train-text").parse_args(
        ["--text-input", str(data), "--output", str(tmp_path / "m.keras"), "--epochs", "1", "--embedding-dim", "4"]
    )
    report = train_text.train_text_model(train_text.config_from_args(args))
    capsys.readouterr()  # Keras' epoch line (the command sends it to stderr)
    distinct = {w.lower() for t, _ in sentiment_sentences(60, seed=4) for w in t.replace(".", "").replace("!", "").split()}
    assert report["words"] == len(distinct)

    out = tmp_path / "words.parquet"
    assert run_cli(word_vectors, ["--text-model", str(tmp_path / "m.keras"), "--output", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["words"] == report["words"] and summary["rows"] == report["words"] + 1  # and [UNK]

    assert run_cli(word_vectors, ["--text-model", str(tmp_path / "m.keras"), "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert f"words      {report['words']:,} (and a row for [UNK])" in table and not table.lstrip().startswith("{")

    assert run_cli(similar_words, ["--text-model", str(tmp_path / "m.keras"), "--word", "zzzqqq"]) == 2
    assert f"vocabulary ({report['words']:,} words)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv0, shown",
    [
        ("/venv/bin/beam-embeddings", "beam-embeddings"),
        ("/repo/pipeline/__main__.py", "python -m pipeline"),
    ],
)
def test_usage_names_the_command_as_typed(monkeypatch, capsys, argv0, shown):
    monkeypatch.setattr(sys, "argv", [argv0])
    with pytest.raises(SystemExit):
        cli.command_parser("neighbors").parse_args(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: {shown} neighbors")
    assert cli.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: {shown} COMMAND")
    assert cli.run_help().startswith(f"usage: {shown} run")


def test_the_installed_console_script_names_itself(tmp_path):
    import shutil
    import subprocess

    script = shutil.which("beam-embeddings", path=str(__import__("pathlib").Path(sys.executable).parent))
    if script is None:
        pytest.skip("beam-embeddings is not installed in this environment (the argv[0] test above covers the name)")
    done = subprocess.run([script, "neighbors", "--help"], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("usage: beam-embeddings neighbors")
