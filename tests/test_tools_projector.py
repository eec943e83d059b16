"""Tests of `export-projector`: the three projector files agree with the run, and the PCA plot is a real PNG."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from test_tools_support import run_cli, write_run

from pipeline.tools import projector
from pipeline.tools.projector import pca_2d

N, D = 30, 6


def _parse_pbtxt(text: str) -> dict:
    """The fields of the projector config's single `embeddings { ... }` block (repeated fields as lists)."""
    block = re.fullmatch(r"\s*embeddings\s*\{(.*)\}\s*", text, re.S)
    assert block, text
    fields: dict = {}
    for name, value in re.findall(r"(\w+)\s*:\s*(\"(?:[^\"\\]|\\.)*\"|\d+)", block.group(1)):
        fields.setdefault(name, []).append(json.loads(value))
    return fields


@pytest.fixture()
def run_and_vectors(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
    labels = [["cat", "dog", "bird"][i % 3] for i in range(N)]
    notes = [f"note\twith tab {i}" if i % 5 == 0 else None for i in range(N)]
    run = write_run(tmp_path / "run", vectors, passthrough={"note": notes, "label": labels}, files=2, row_group_rows=4)
    return run, vectors


def test_exported_files_parse_and_agree_with_the_run(tmp_path, run_and_vectors, capsys):
    run, vectors = run_and_vectors
    out = tmp_path / "projector"

    assert (
        run_cli(
            projector,
            [
                "--embeddings",
                str(run),
                "--output",
                str(out),
                "--label-field",
                "label",
                "--max-points",
                "20",
                "--batch-rows",
                "3",
                "--json",
            ],
        )
        == 0
    )

    summary = json.loads(capsys.readouterr().out)
    assert summary["points"] == 20 and summary["rows"] == N
    exported = np.loadtxt(out / "vectors.tsv", delimiter="\t", dtype=np.float32)
    assert exported.shape == (20, D)
    metadata = (out / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "id\tlabel\tnote"  # a header (several columns), the label first
    assert len(metadata) == 21
    rows = [line.split("\t") for line in metadata[1:]]
    assert all(len(r) == 3 for r in rows)  # a tab inside a value does not add a column
    positions = [int(r[0].split("-")[1]) for r in rows]
    assert positions == sorted(set(positions))  # a sample without repeats, in the run's order
    np.testing.assert_array_equal(exported, vectors[positions])  # each vector is its metadata row's
    assert [r[1] for r in rows] == [["cat", "dog", "bird"][p % 3] for p in positions]

    config = _parse_pbtxt((out / "projector_config.pbtxt").read_text())
    assert config["tensor_path"] == ["vectors.tsv"] and config["metadata_path"] == ["metadata.tsv"]
    assert config["tensor_shape"] == [20, D]

    with Image.open(out / "pca.png") as image:
        assert image.format == "PNG" and image.size == (1000, 760)
        colours = {c for _, c in image.convert("RGB").getcolors(1_000_000)}
    assert {(31, 119, 180), (255, 127, 14), (44, 160, 44)} <= colours  # one colour per label


def test_a_single_metadata_column_has_no_header(tmp_path):
    vectors = np.random.default_rng(1).normal(size=(12, 3))
    run = write_run(tmp_path / "run", vectors)
    out = tmp_path / "projector"
    assert run_cli(projector, ["--embeddings", str(run), "--out", str(out)]) == 0
    metadata = (out / "metadata.tsv").read_text().splitlines()
    assert metadata == [f"image-{i:04d}" for i in range(12)]
    assert len((out / "vectors.tsv").read_text().splitlines()) == 12


def test_the_sample_is_seeded(tmp_path, run_and_vectors):
    run, _ = run_and_vectors
    for name in ("a", "b"):
        assert run_cli(projector, ["--embeddings", str(run), "--out", str(tmp_path / name), "--max-points", "7"]) == 0
    assert (tmp_path / "a" / "metadata.tsv").read_text() == (tmp_path / "b" / "metadata.tsv").read_text()


def test_an_unknown_label_field_is_an_error(tmp_path, run_and_vectors, capsys):
    run, _ = run_and_vectors
    assert run_cli(projector, ["--embeddings", str(run), "--out", str(tmp_path / "p"), "--label-field", "colour"]) == 2
    assert "--label-field 'colour'" in capsys.readouterr().err


def test_pca_finds_the_directions_of_largest_variance():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(500, 4)) * np.array([0.1, 5.0, 0.2, 2.0])
    projected, explained = pca_2d(points)
    assert explained[0] > explained[1] > 0.1
    centred = points - points.mean(axis=0)
    assert abs(np.corrcoef(projected[:, 0], centred[:, 1])[0, 1]) > 0.99
    assert abs(np.corrcoef(projected[:, 1], centred[:, 3])[0, 1]) > 0.99
