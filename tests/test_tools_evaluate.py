"""Tests of `evaluate`: kNN precision and the linear probe give the numbers a synthetic set implies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_tools_support import run_cli, write_run

from pipeline.tools import evaluate
from pipeline.tools.evaluate import evaluate_embeddings, knn_precision, linear_probe
from pipeline.tools.knn import leave_one_out_neighbours
from pipeline.tools.store import open_embeddings, unit_rows


def _clusters(classes: int, per_class: int, dim: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 10
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(size=(len(labels), dim)) * spread, labels


def test_well_separated_clusters_score_perfectly(tmp_path, capsys):
    vectors, labels = _clusters(classes=5, per_class=30, dim=16, spread=0.1)
    run = write_run(tmp_path / "run", vectors, passthrough={"label": [f"c{y}" for y in labels]}, files=2, row_group_rows=16)

    assert (
        run_cli(
            evaluate, ["--embeddings", str(run), "--label-field", "label", "--block-rows", "7", "--batch-rows", "11", "--json"]
        )
        == 0
    )

    report = json.loads(capsys.readouterr().out)
    assert report["precision_at_1"] == 1.0
    assert report["precision_at_10"] == 1.0
    assert report["linear_probe"]["accuracy"] == 1.0
    assert report["linear_probe"]["test_rows"] == 30 and report["linear_probe"]["train_rows"] == 120
    assert report["evaluated"] == report["rows"] == 150
    assert report["classes"] == 5 and report["class_counts"] == {f"c{i}": 30 for i in range(5)}
    assert report["chance_precision"] == pytest.approx(29 / 149)


def test_random_labels_score_about_chance():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(800, 16)).astype(np.float32)
    labels = rng.integers(0, 4, size=800)

    knn = knn_precision(vectors, labels, k=10, block_rows=128)
    probe = linear_probe(vectors, labels, test_fraction=0.25, seed=0)

    assert knn["chance_precision"] == pytest.approx(0.25, abs=0.01)
    assert knn["precision_at_1"] == pytest.approx(0.25, abs=0.06)
    assert knn["precision_at_10"] == pytest.approx(0.25, abs=0.03)
    assert probe["accuracy"] == pytest.approx(0.25, abs=0.08)
    assert probe["test_rows"] == pytest.approx(200, abs=2)  # a quarter of each label, rounded


def test_partly_mixed_clusters_sit_between_chance_and_perfect():
    vectors, labels = _clusters(classes=4, per_class=50, dim=8, spread=6.0, seed=2)
    knn = knn_precision(vectors, labels, k=10)
    assert 0.3 < knn["precision_at_10"] < 0.95
    assert knn["precision_at_1"] >= knn["precision_at_10"] - 0.1


def test_blocked_similarity_gives_the_unblocked_answer():
    vectors = np.random.default_rng(3).normal(size=(57, 6))
    unit = unit_rows(vectors)[0]
    whole = leave_one_out_neighbours(unit, 5, block_rows=1000)
    blocked = leave_one_out_neighbours(unit, 5, block_rows=4)
    np.testing.assert_array_equal(whole, blocked)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(whole, np.argsort(-sims, axis=1, kind="stable")[:, :5])


def test_the_probe_is_seeded():
    vectors, labels = _clusters(classes=3, per_class=40, dim=8, spread=8.0, seed=4)
    assert linear_probe(vectors, labels, seed=5) == linear_probe(vectors, labels, seed=5)


def test_unlabelled_and_unusable_rows_are_left_out_and_counted(tmp_path):
    vectors, labels = _clusters(classes=2, per_class=10, dim=4, spread=0.1)
    vectors[3] = 0.0
    names = [f"c{y}" for y in labels]
    names[4], names[5] = None, ""
    run = write_run(tmp_path / "run", vectors, passthrough={"label": names})

    report = evaluate_embeddings(open_embeddings(str(run)), "label", k=3)

    assert report["rows"] == 20 and report["evaluated"] == 17
    assert report["skipped_unlabelled"] == 2 and report["skipped_invalid"] == 1
    assert report["precision_at_1"] == 1.0 and report["precision_at_3"] == 1.0


def test_a_missing_label_column_or_a_single_label_is_an_error(tmp_path, capsys):
    vectors, labels = _clusters(classes=2, per_class=5, dim=4, spread=0.1)
    run = write_run(tmp_path / "run", vectors, passthrough={"kind": ["same"] * 10})
    assert run_cli(evaluate, ["--embeddings", str(run), "--label-field", "label"]) == 2
    err = capsys.readouterr().err
    assert "--label-field 'label' is not a column" in err and "kind" in err
    assert run_cli(evaluate, ["--embeddings", str(run), "--label-field", "kind"]) == 2
    assert "at least two different labels" in capsys.readouterr().err


def test_max_rows_evaluates_a_seeded_sample(tmp_path):
    vectors, labels = _clusters(classes=3, per_class=40, dim=8, spread=0.1)
    run = write_run(tmp_path / "run", vectors, passthrough={"label": [str(y) for y in labels]})
    first = evaluate_embeddings(open_embeddings(str(run)), "label", max_rows=50, seed=1)
    again = evaluate_embeddings(open_embeddings(str(run)), "label", max_rows=50, seed=1)
    assert first["evaluated"] == 50 and first["rows"] == 120
    assert first == again


def test_the_default_output_is_a_table_with_the_json_numbers(tmp_path, capsys):
    """People read a table (rounded, against its baseline); scripts ask for --json and get the same numbers."""
    vectors, labels = _clusters(classes=3, per_class=20, dim=8, spread=6.0, seed=3)
    run = write_run(tmp_path / "run", vectors, passthrough={"label": [f"c{y}" for y in labels]})

    assert run_cli(evaluate, ["--embeddings", str(run), "--label-field", "label", "-k", "5"]) == 0
    table = capsys.readouterr().out
    assert run_cli(evaluate, ["--embeddings", str(run), "--label-field", "label", "-k", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    with pytest.raises(json.JSONDecodeError):
        json.loads(table)
    lines = table.splitlines()
    assert lines[0].startswith("embeddings") and str(run) in lines[0]
    assert any(line.startswith("classes") and "c0: 20" in line for line in lines)
    rows = {line.split("  ")[0]: line.split() for line in lines if line.startswith(("kNN", "linear"))}
    assert f"{report['precision_at_1']:.4f}" in rows["kNN precision@1"]
    assert f"{report['precision_at_5']:.4f}" in rows["kNN precision@5"]
    assert f"{report['chance_precision']:.4f}" in rows["kNN precision@1"]
    assert f"{report['linear_probe']['accuracy']:.4f}" in rows["linear probe accuracy"]
    assert f"{report['linear_probe']['majority_accuracy']:.4f}" in rows["linear probe accuracy"]
    assert not any(
        len(part) > 8 and part.replace(".", "").isdigit() for line in lines for part in line.split()
    )  # no 0.49874686716791977
