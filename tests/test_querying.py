"""docs/querying.md's recipes, run as written on a folder made by a real `python -m pipeline run`.

The blocks marked `<!-- tested: NAME -->` in the doc are extracted, `OUT`, `some-record-id` and
`models/text.keras` are replaced by a real run folder, one of its ids and its model, and the
answers must equal the project's own `neighbors` search. Data: the first rt-polarity snippets
(shared data), embedded with a small text model whose vocabulary is adapted on them.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

from tests_support import PROJECT_ROOT, run_pipeline

duckdb = pytest.importorskip("duckdb")  # requirements-dev.txt pins it; not a runtime dependency

DOC = PROJECT_ROOT / "docs" / "querying.md"
K = 10
PER_FILE = 120  # snippets per polarity


def recipe(name: str) -> str:
    """The fenced code block right after `<!-- tested: name -->` in docs/querying.md."""
    match = re.search(rf"<!-- tested: {re.escape(name)} -->\n```\w+\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, f"docs/querying.md has no block marked 'tested: {name}'"
    return match.group(1)


def _filled(code: str, run: dict, record_id: str) -> str:
    out = str(run["out"])
    code = code.replace("'OUT/", f"'{out}/").replace('"OUT/', f'"{out}/').replace('"OUT"', json.dumps(out))
    code = code.replace("models/text.keras", str(run["model"]))
    return code.replace("some-record-id", record_id)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data) -> dict:
    """A real run of the CLI over real review snippets; its folder also gets a FAISS index."""
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("querying")
    records, seen = [], set()
    for name, label in (("rt-polarity.pos", "1"), ("rt-polarity.neg", "0")):
        with open(shared_data / "sentiment" / name, encoding="cp1252") as handle:
            for line_no, line in enumerate(handle):
                text = line.strip()
                if len(records) >= PER_FILE * (1 + (label == "0")):
                    break
                if text and text not in seen:  # identical texts would tie in every ranking
                    seen.add(text)
                    records.append({"id": f"{label}-{line_no}", "text": text, "label": label})
    data = folder / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))

    keras.utils.set_random_seed(1)
    inp = keras.Input(shape=(1,), dtype="string", name="text")
    vectorize = keras.layers.TextVectorization(name="vectorize", max_tokens=4000, output_sequence_length=32)
    vectorize.adapt(tf.constant([[r["text"]] for r in records]))
    x = keras.layers.Embedding(4000, 16, name="embedding", mask_zero=True)(vectorize(inp))
    x = keras.layers.GlobalAveragePooling1D(name="text_embedding")(x)
    model = folder / "text.keras"
    keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="sentiment")(x)).save(model)

    out = folder / "out"
    done = run_pipeline("run", "--output", out, "--text-input", data, "--text-model", model, "--passthrough", "label")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert manifest["counts"]["text"]["embedded"] == len(records)
    return {"out": out, "data": data, "model": model, "records": records, "manifest": manifest}


def _neighbours(run: dict, record_id: str | None = None, text: str | None = None) -> list[tuple[str, float]]:
    """The answer of the project's own `neighbors` (brute force, the same code the CLI runs)."""
    from pipeline.tools.neighbors import find_neighbours, query_from_id, query_from_text
    from pipeline.tools.store import open_embeddings

    embeddings = open_embeddings(str(run["out"]), "text")
    query = query_from_id(embeddings, record_id) if record_id else query_from_text(embeddings, text)
    found = find_neighbours(embeddings, query, k=K, exclude_id=record_id, use_index=False)
    return [(row["id"], row["score"]) for row in found.rows]


def _same_answer(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert len(got) == len(expected) == K
    assert [i for i, _ in got] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def query_id(run) -> str:
    return run["records"][7]["id"]


def test_duckdb_sql_recipe_finds_the_same_neighbours_as_neighbors(run, query_id):
    sql = _filled(recipe("duckdb-neighbours"), run, query_id)
    rows = duckdb.connect().execute(sql).fetchall()
    assert {r[1] for r in rows} == {str(run["data"])}  # `source`: the input file
    _same_answer([(r[0], r[2]) for r in rows], _neighbours(run, record_id=query_id))
    assert query_id not in [r[0] for r in rows]


def test_duckdb_python_recipe_with_a_text_query_matches_neighbors_text(run, capsys):
    code = _filled(recipe("duckdb-python"), run, "unused")
    namespace: dict = {}
    exec(compile(code, "docs/querying.md:duckdb-python", "exec"), namespace)
    got = [(record_id, score) for record_id, score in namespace["rows"]]
    _same_answer(got, _neighbours(run, text="a moving, funny film"))
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == K and printed[0].endswith(got[0][0])


def test_pyarrow_numpy_recipe_matches_neighbors(run, query_id):
    namespace: dict = {}
    exec(compile(_filled(recipe("pyarrow-numpy"), run, query_id), "docs/querying.md:pyarrow-numpy", "exec"), namespace)
    assert namespace["vectors"].shape == (len(run["records"]), 16)
    assert namespace["vectors"].dtype == np.float32
    _same_answer(namespace["neighbours"], _neighbours(run, record_id=query_id))


def test_whole_folder_reads_never_trip_on_the_index_or_projector_files(run, tmp_path):
    """After `build-index` (writes OUT/index/) and `export-projector`, the Parquet folders still
    hold only embedding rows: a whole-folder read gives every record exactly once."""
    pytest.importorskip("faiss")
    for argv in (
        ["build-index", "--embeddings", str(run["out"])],
        ["export-projector", "--embeddings", str(run["out"]), "--out", str(tmp_path / "projector")],
    ):
        done = run_pipeline(*argv, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert (run["out"] / "index").is_dir()
    assert sorted(p.name for p in (run["out"] / "text").iterdir()) == sorted(
        pathlib.Path(p).name for p in run["manifest"]["files"]["text"]
    )
    con = duckdb.connect()
    count, distinct, dims = con.execute(
        f"SELECT count(*), count(DISTINCT id), min(len(embedding)) FROM read_parquet('{run['out']}/text/*.parquet')"
    ).fetchone()
    assert count == distinct == len(run["records"]) and dims == 16
    errors = con.execute(f"SELECT count(*) FROM read_parquet('{run['out']}/errors/*.parquet')").fetchone()[0]
    assert errors == run["manifest"]["counts"]["text"]["failed"] == 0
    import pyarrow.dataset as ds

    assert ds.dataset(str(run["out"] / "text"), format="parquet").count_rows() == len(run["records"])


# ---- the latest snapshot of scheduled runs (issue 22, item 7) ------------------------------------


@pytest.fixture(scope="module")
def scheduled(run, tmp_path_factory) -> dict:
    """RUNS/ as a schedule leaves it: a full run, a --carry-over snapshot after records left, changed
    and arrived, a later run that failed its budget, and a folder of a run that never finished."""
    runs = tmp_path_factory.mktemp("scheduled") / "RUNS"
    v1 = run["records"][:40]
    v2 = v1[3:] + [{"id": "new-1", "text": "a brand new review", "label": "1"}]
    v2[0] = {**v2[0], "text": v2[0]["text"] + " (edited)"}  # changed: embedded again
    common = ("--text-model", run["model"], "--passthrough", "label")

    def launch(name: str, records: list, *flags) -> None:
        data = runs.parent / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        done = run_pipeline("run", "--output", runs / name, "--text-input", data, *common, *flags)
        assert done.returncode == (1 if "--max-failed" in flags else 0), done.stderr[-3000:]

    launch("2026-01-01", v1, "--run-id", "d1")
    launch("2026-01-02", v2, "--run-id", "d2", "--incremental-from", runs / "2026-01-01", "--carry-over")
    launch("2026-01-03", v2 + [{"id": "bad", "text": None}], "--run-id", "d3", "--max-failed", "0")
    unfinished = runs / "2026-01-04" / "text"  # killed before its manifest: never read
    unfinished.mkdir(parents=True)
    (unfinished / "part-00000-of-00001.parquet").write_bytes(
        (runs / "2026-01-01" / "text").glob("*.parquet").__next__().read_bytes()
    )
    return {"runs": runs, "v1": v1, "v2": v2}


def _run_recipes(names: list[str], runs: pathlib.Path) -> dict:
    namespace: dict = {}
    for name in names:
        code = recipe(name).replace('RUNS = "RUNS"', f"RUNS = {str(runs)!r}")
        exec(compile(code, f"docs/querying.md:{name}", "exec"), namespace)
    return namespace


def _vectors(table) -> dict:
    return {row["id"]: (row["embedding"], row["embedded_run_id"]) for row in table.to_pylist()}


def test_latest_snapshot_recipe_reads_the_newest_complete_run_only(scheduled):
    from transforms.results import read_embeddings, read_manifest

    namespace = _run_recipes(["latest-snapshot"], scheduled["runs"])
    assert namespace["manifest"]["run_id"] == "d2"  # not the later failed run, not the unfinished folder
    snapshot = _vectors(namespace["snapshot"])
    assert set(snapshot) == {r["id"] for r in scheduled["v2"]} and len(namespace["snapshot"]) == len(scheduled["v2"])
    expected = _vectors(read_embeddings(str(scheduled["runs"] / "2026-01-02"), "text"))
    assert snapshot == expected
    assert read_manifest(str(scheduled["runs"] / "2026-01-02"))["counts"]["text"]["removed"] == 3


def test_latest_row_per_id_recipe_unions_complete_runs_newest_first(scheduled):
    from transforms.results import read_embeddings

    namespace = _run_recipes(["latest-snapshot", "latest-row-per-id"], scheduled["runs"])
    current = _vectors(namespace["current"])
    assert len(namespace["current"]) == len(current)  # one row per id
    assert set(current) == {r["id"] for r in scheduled["v1"] + scheduled["v2"]}  # records that left stay in a union
    first = _vectors(read_embeddings(str(scheduled["runs"] / "2026-01-01"), "text"))
    second = _vectors(read_embeddings(str(scheduled["runs"] / "2026-01-02"), "text"))
    edited = scheduled["v2"][0]["id"]
    assert current[edited] == second[edited] and current[edited][1] == "d2" and first[edited][0] != second[edited][0]
    gone = scheduled["v1"][0]["id"]
    assert current[gone] == first[gone]
