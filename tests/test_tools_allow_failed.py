"""Issue 22 item 4: a run that fails on one modality still serves the other, and `--allow-failed` reads the rest.

One real run (the job, tiny models): 5 images all fine, text 4 good and 4 bad records, so text is over
its failure budget and the run fails. Its manifest and summary give each modality's own status; the
commands that read a run read its complete image embeddings as they are (with a note line), refuse its
text embeddings with a message naming `--allow-failed` (not the Python argument), and read them with
the flag; so does a later run's `--incremental-from`.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.run import format_summary, main
from transforms.results import FailedRunError, read_embeddings, read_manifest

pytestmark = pytest.mark.slow  # real runs of the job


def _inputs(root: pathlib.Path) -> dict:
    (root / "text").mkdir(parents=True)
    good = [{"id": f"t{i}", "text": f"good film number {i}", "label": str(i % 2)} for i in range(4)]
    bad = [{"id": f"bad{i}", "text": None, "label": "0"} for i in range(4)]  # no text: dead letters
    (root / "text" / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    (root / "text" / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    (root / "images").mkdir()
    rng = np.random.RandomState(0)
    for i in range(5):
        Image.fromarray((rng.rand(36, 36, 3) * 255).astype("uint8")).save(root / "images" / f"img{i}.png")
    return {
        "text": str(root / "text" / "reviews.jsonl"),
        "good_text": str(root / "text" / "good.jsonl"),
        "images": str(root / "images" / "*.png"),
    }


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory, tiny_text_model, tiny_image_model) -> dict:
    root = tmp_path_factory.mktemp("failed-run")
    inputs = _inputs(root)
    out = root / "out"
    code = main(
        [
            "--output",
            str(out),
            "--text-input",
            inputs["text"],
            "--text-model",
            str(tiny_text_model),
            "--image-input",
            inputs["images"],
            "--image-model",
            str(tiny_image_model),
            "--passthrough",
            "label",
        ]
    )
    return {"root": root, "out": str(out), "code": code, "inputs": inputs, "models": (tiny_text_model, tiny_image_model)}


def test_manifest_and_summary_give_each_modalitys_status(failed_run):
    assert failed_run["code"] == 1  # text 4 of 8 failed: over the default budget of 0.1
    manifest = read_manifest(failed_run["out"], allow_failed=True)
    assert manifest["status"] == "failed"
    assert manifest["modalities"]["image"] == {"status": "complete"}
    assert (
        manifest["modalities"]["text"]["status"] == "failed"
        and "4 of 8 records failed" in manifest["modalities"]["text"]["reason"]
    )
    summary = format_summary(manifest, 1.0)
    status = next(line for line in summary.splitlines() if line.strip().startswith("status:"))
    assert "image complete" in status and "text failed" in status and "tools read its image embeddings as they are" in status


def test_the_library_reads_a_complete_modality_of_a_failed_run(failed_run):
    assert read_embeddings(failed_run["out"], "image").num_rows == 5  # no allow_failed needed
    with pytest.raises(FailedRunError, match="allow_failed=True"):
        read_embeddings(failed_run["out"], "text")
    assert read_embeddings(failed_run["out"], "text", allow_failed=True).num_rows == 4


def test_neighbors_reads_the_complete_image_modality_with_a_note(failed_run, capsys):
    args = ["neighbors", "--embeddings", failed_run["out"], "--modality", "image", "--id", "img0.png", "-k", "2"]
    assert cli.main(args) == 0
    done = capsys.readouterr()
    assert "img" in done.out
    assert "note: run" in done.err and "failed" in done.err and "its image embeddings are complete" in done.err


@pytest.mark.parametrize(
    "command",
    [
        ["neighbors", "--id", "t0"],
        ["evaluate", "--label-field", "label", "-k", "1"],
        ["build-index"],
        ["export-projector", "--out", "{root}/projector"],
    ],
    ids=lambda c: c[0],
)
def test_every_command_refuses_a_failed_modality_unless_allow_failed(failed_run, capsys, command):
    argv = [a.replace("{root}", str(failed_run["root"])) for a in command]
    argv[1:1] = ["--embeddings", failed_run["out"], "--modality", "text"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "text embeddings are incomplete" in err and "--allow-failed" in err and "allow_failed=True" not in err
    assert cli.main([*argv, "--allow-failed"]) == 0, capsys.readouterr().err
    assert "reading its incomplete text embeddings (--allow-failed)" in capsys.readouterr().err


def test_incremental_from_a_failed_run(failed_run, tmp_path, capsys):
    text_model, image_model = failed_run["models"]
    images = ["--image-input", failed_run["inputs"]["images"], "--image-model", str(image_model)]
    assert main(["--output", str(tmp_path / "images"), *images, "--incremental-from", failed_run["out"]]) == 0
    done = capsys.readouterr()
    assert "its image embeddings are complete: using them" in done.err  # the complete modality, no flag
    assert read_manifest(str(tmp_path / "images"))["counts"]["image"]["skipped"] == 5

    text = ["--text-input", failed_run["inputs"]["good_text"], "--text-model", str(text_model)]
    assert main(["--output", str(tmp_path / "text"), *text, "--incremental-from", failed_run["out"]]) == 2
    err = capsys.readouterr().err
    assert "--allow-failed" in err and "allow_failed=True" not in err and "text embeddings are incomplete" in err
    assert not (tmp_path / "text").exists()  # refused before the output folder was touched
    assert main(["--output", str(tmp_path / "text"), *text, "--incremental-from", failed_run["out"], "--allow-failed"]) == 0
    assert read_manifest(str(tmp_path / "text"))["counts"]["text"]["skipped"] == 4
