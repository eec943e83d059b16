"""Tests of `neighbors` and `build-index`: answers equal brute-force NumPy, streamed or from FAISS."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_tools_support import run_cli, write_run

from pipeline.tools import evaluate, index, neighbors, projector
from pipeline.tools.knn import RunningTopK, top_k
from pipeline.tools.neighbors import find_neighbours
from pipeline.tools.store import open_embeddings
from transforms.results import IncompleteOutputError

N, D = 103, 12


def _brute_force(vectors: np.ndarray, query: np.ndarray, k: int, skip=()) -> tuple[list[int], np.ndarray]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    scores[list(skip)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return order.tolist(), scores[order]


@pytest.fixture()
def vectors() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(N, D)).astype(np.float32)


@pytest.fixture()
def run_dir(tmp_path, vectors):
    labels = [f"class-{i % 4}" for i in range(N)]
    return write_run(tmp_path / "run", vectors, passthrough={"label": labels}, files=3, row_group_rows=10)


def test_top_k_orders_by_score_then_position():
    scores = np.array([0.5, 0.9, np.nan, 0.9, -np.inf, 0.1, 0.5])
    assert top_k(scores, 3).tolist() == [1, 3, 0]
    assert top_k(scores, 10).tolist() == [1, 3, 0, 6, 5]  # non-finite scores are never answers


def test_running_top_k_over_chunks_equals_one_pass():
    scores = np.random.default_rng(1).normal(size=50)
    running = RunningTopK(5)
    for start in range(0, 50, 6):
        running.push(scores[start : start + 6], np.arange(start, min(start + 6, 50)))
    assert running.positions.tolist() == top_k(scores, 5).tolist()
    assert running.chunks == 9


def test_streamed_search_matches_numpy_with_chunks_smaller_than_n(run_dir, vectors):
    embeddings = open_embeddings(str(run_dir))
    query = np.random.default_rng(3).normal(size=D)
    expected, expected_scores = _brute_force(vectors, query, 8)

    result = find_neighbours(embeddings, query, k=8, batch_rows=7)

    assert result.method == "brute force"
    assert result.chunks >= N // 7  # row groups of 10 read 7 rows at a time: many chunks, never all rows at once
    assert [r["position"] for r in result.rows] == expected
    assert [r["id"] for r in result.rows] == [f"image-{i:04d}" for i in expected]
    np.testing.assert_allclose([r["score"] for r in result.rows], expected_scores, rtol=1e-5)
    assert [r["label"] for r in result.rows] == [f"class-{i % 4}" for i in expected]
    assert [r["rank"] for r in result.rows] == list(range(1, 9))
    whole = find_neighbours(embeddings, query, k=8, batch_rows=100_000)
    assert [r["id"] for r in whole.rows] == [r["id"] for r in result.rows]


def test_id_query_leaves_the_record_itself_out(run_dir, vectors):
    embeddings = open_embeddings(str(run_dir))
    query = neighbors.query_from_id(embeddings, "image-0042")
    np.testing.assert_array_equal(query, vectors[42])
    expected, _ = _brute_force(vectors, vectors[42], 5, skip=[42])

    result = find_neighbours(embeddings, query, k=5, exclude_id="image-0042", batch_rows=16)

    assert [r["position"] for r in result.rows] == expected
    with pytest.raises(ValueError, match="no such id"):
        neighbors.query_from_id(embeddings, "image-9999")


def test_nan_and_zero_embeddings_are_never_answers(tmp_path, vectors):
    broken = vectors.copy()
    broken[5] = np.nan
    broken[6] = 0.0
    run = write_run(tmp_path / "run", broken, files=1)
    result = find_neighbours(open_embeddings(str(run)), vectors[5], k=N, batch_rows=9)
    positions = [r["position"] for r in result.rows]
    assert len(positions) == N - 2
    assert not {5, 6} & set(positions)


def test_faiss_index_gives_the_brute_force_answer(run_dir, vectors, capsys):
    pytest.importorskip("faiss")
    embeddings = open_embeddings(str(run_dir))
    query = np.random.default_rng(5).normal(size=D)
    brute = find_neighbours(embeddings, query, k=10, use_index=False)

    assert run_cli(index, ["--embeddings", str(run_dir), "--batch-rows", "13", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == N and info["kind"] == "flat"
    assert (run_dir / "index" / "image.faiss").exists() and (run_dir / "index" / "image.ids.parquet").exists()

    indexed = find_neighbours(embeddings, query, k=10)
    assert indexed.method == "faiss flat" and indexed.chunks == 0
    assert [r["id"] for r in indexed.rows] == [r["id"] for r in brute.rows]
    np.testing.assert_allclose([r["score"] for r in indexed.rows], [r["score"] for r in brute.rows], rtol=1e-5)
    assert [r["label"] for r in indexed.rows] == [r["label"] for r in brute.rows]

    by_id = find_neighbours(embeddings, vectors[3], k=4, exclude_id="image-0003")
    assert [r["position"] for r in by_id.rows] == _brute_force(vectors, vectors[3], 4, skip=[3])[0]


def test_hnsw_index_finds_the_exact_answer_on_a_small_set(run_dir, capsys):
    pytest.importorskip("faiss")
    assert run_cli(index, ["--embeddings", str(run_dir), "--kind", "hnsw"]) == 0
    embeddings = open_embeddings(str(run_dir))
    query = np.random.default_rng(6).normal(size=D)
    result = find_neighbours(embeddings, query, k=5)
    assert result.method == "faiss hnsw"
    assert [r["id"] for r in result.rows] == [r["id"] for r in find_neighbours(embeddings, query, k=5, use_index=False).rows]


def test_an_index_of_an_earlier_run_is_not_used(tmp_path, vectors, capsys):
    pytest.importorskip("faiss")
    run = write_run(tmp_path / "run", vectors, run_id="first")
    assert run_cli(index, ["--embeddings", str(run)]) == 0
    write_run(tmp_path / "run", vectors[::-1].copy(), run_id="second")  # the job ran again into the same folder

    result = find_neighbours(open_embeddings(str(run)), vectors[0], k=3)

    assert result.method == "brute force"
    assert "another run" in result.note
    assert result.rows[0]["position"] == N - 1


def test_command_prints_a_table_or_json_lines(run_dir, vectors, capsys):
    assert run_cli(neighbors, ["--embeddings", str(run_dir), "--id", "image-0010", "-k", "3", "--batch-rows", "5"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "label"]
    assert len(lines) == 4
    assert "brute force" in err

    assert run_cli(neighbors, ["--embeddings", str(run_dir), "--id", "image-0010", "-k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    expected, scores = _brute_force(vectors, vectors[10], 3, skip=[10])
    assert [r["position"] for r in rows] == expected
    assert set(rows[0]) == {"rank", "id", "score", "position", "source", "label"}


def test_bad_flags_fail_with_a_message(run_dir, capsys):
    assert run_cli(neighbors, ["--embeddings", str(run_dir), "--id", "nope"]) == 2
    assert "no such id" in capsys.readouterr().err
    assert run_cli(neighbors, ["--embeddings", str(run_dir), "--id", "image-0001", "-k", "0"]) == 2
    assert run_cli(neighbors, ["--embeddings", str(run_dir), "--id", "image-0001", "--modality", "text"]) == 2
    assert "has no text embeddings" in capsys.readouterr().err
    assert run_cli(neighbors, ["--embeddings", str(run_dir), "--text", "hello"]) == 2
    assert "no text embeddings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, extra",
    [
        (neighbors, ["--id", "x"]),
        (index, []),
        (evaluate, ["--label-field", "label"]),
        (projector, ["--out", "OUT"]),
    ],
)
def test_every_command_refuses_a_folder_without_manifest(tmp_path, vectors, capsys, module, extra):
    unfinished = write_run(tmp_path / "run", vectors, passthrough={"label": ["a"] * N}, manifest=False)
    extra = [str(tmp_path / "out") if e == "OUT" else e for e in extra]
    if module is index:
        pytest.importorskip("faiss")

    assert run_cli(module, ["--embeddings", str(unfinished), *extra]) == 1

    err = capsys.readouterr().err
    assert "has no _MANIFEST.json" in err and "did not finish" in err
    with pytest.raises(IncompleteOutputError):
        open_embeddings(str(unfinished))
    assert not (tmp_path / "out").exists()
