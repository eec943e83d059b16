"""Library output is first class (issue 22, item 6): `WriteEmbeddingRun` writes `EmbedText` /
`EmbedImages` results as a run folder of the job, which the tools (`neighbors`, `evaluate`) and a
later `run --incremental-from` read like any run; dead letters keep the failing element; text and
images take windowed input alike; `passthrough=["text"]` means what `--passthrough text` means.

Real Beam pipelines on the FnApiRunner, real tiny Keras models (conftest), the real CLI.
"""

from __future__ import annotations

import json
import pathlib

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that
from PIL import Image

from tests.tests_support import run_pipeline
from transforms import EmbedImages, EmbedText, WriteEmbeddingRun, read_embeddings, read_errors, read_manifest
from transforms.records import ERROR_SCHEMA, MAX_INPUT_CHARS

GOOD = [
    {"id": f"r{i}", "text": f"good film number {i}" if i % 2 else f"bad awful plot {i}", "label": str(i % 2)} for i in range(30)
]
BAD = [
    {"text": "a record without an id"},  # MissingId
    "not a dict at all",  # InvalidRecord
    {"id": "empty", "text": "   "},  # EmptyText (preprocess stage: has an id)
]


def _images(folder: pathlib.Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(5)
    records = []
    for i in range(4):
        path = folder / f"img{i}.png"
        Image.fromarray((rng.rand(24, 28, 3) * 255).astype("uint8")).save(path)
        records.append({"id": f"img{i}", "uri": str(path), "label": f"c{i % 2}"})
    records.append({"image_bytes": b"\x89PNG" + b"x" * 5000})  # no id and no uri: MissingId, bytes kept short
    return records


@pytest.fixture(scope="module")
def library_run(tmp_path_factory, tiny_text_model, tiny_image_model) -> dict:
    """A user's own pipeline: EmbedText + EmbedImages, written with WriteEmbeddingRun."""
    root = tmp_path_factory.mktemp("library-run")
    images = _images(root / "images")
    out = root / "run1"
    with beam.Pipeline(runner="FnApiRunner") as p:
        texts = p | "Texts" >> beam.Create(GOOD + BAD) | EmbedText(model=str(tiny_text_model), passthrough=["label"])
        pictures = (
            p
            | "Images" >> beam.Create(images)
            | EmbedImages(model=str(tiny_image_model), layer="features", passthrough=["label"], batch_size=2)
        )
        {"text": texts, "image": pictures} | WriteEmbeddingRun(str(out), run_id="lib-1", max_failed_fraction=0.5)
    return {"root": root, "out": out, "images": images, "model": tiny_text_model}


def test_the_run_folder_has_the_jobs_layout_and_a_complete_manifest(library_run):
    out = library_run["out"]
    manifest = read_manifest(str(out))
    assert manifest["status"] == "complete" and manifest["run_id"] == "lib-1"
    assert manifest["counts"]["text"] == {"read": 33, "embedded": 30, "failed": 3, "skipped": 0, "balanced": True}
    assert manifest["counts"]["image"] == {"read": 5, "embedded": 4, "failed": 1, "skipped": 0, "balanced": True}
    assert set(manifest["files"]) == {"text", "image", "errors"}
    assert manifest["models"]["text"]["details"]["path"] == str(library_run["model"])
    assert manifest["models"]["text"]["dimension"] == 8 and len(manifest["models"]["text"]["sha256"]) == 64
    assert manifest["options"]["passthrough"] == ["label"] and manifest["options"]["text_model"]["path"] == str(
        library_run["model"]
    )
    assert {r["error_type"] for r in manifest["top_errors"]["text"]} == {"MissingId", "InvalidRecord", "EmptyText"}
    text = read_embeddings(str(out), "text")
    assert sorted(text.column("id").to_pylist()) == sorted(r["id"] for r in GOOD)
    assert set(text.column("embedded_run_id").to_pylist()) == {"lib-1"}
    image = read_embeddings(str(out), "image")
    assert sorted(image.column("source").to_pylist()) == sorted(r["uri"] for r in library_run["images"] if "uri" in r)
    assert not [p for p in out.rglob("*") if p.is_file() and "beam-temp" in str(p)]


def test_library_rows_equal_the_jobs_rows_and_schema(library_run, tmp_path):
    """The job over the same records writes the same vectors, the same columns in the same order."""
    data = tmp_path / "good.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    job = tmp_path / "job"
    done = run_pipeline(
        "run", "--output", job, "--text-input", data, "--text-model", library_run["model"], "--passthrough", "label"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = read_embeddings(str(library_run["out"]), "text"), read_embeddings(str(job), "text")
    assert ours.schema.names == theirs.schema.names
    assert [f.type for f in ours.schema] == [f.type for f in theirs.schema]
    assert ours.schema.metadata == theirs.schema.metadata  # dimension, model, normalized
    ours_by_id = {r["id"]: r for r in ours.to_pylist()}
    for row in theirs.to_pylist():
        mine = ours_by_id[row["id"]]
        assert mine["embedding"] == row["embedding"] and mine["content_sha256"] == row["content_sha256"]
        assert mine["model_sha256"] == row["model_sha256"] and mine["label"] == row["label"]


def test_dead_letters_keep_the_failing_element_capped(library_run):
    errors = {(e["modality"], e["error_type"]): e for e in read_errors(str(library_run["out"])).to_pylist()}
    assert read_errors(str(library_run["out"])).schema.equals(ERROR_SCHEMA)
    missing = errors[("text", "MissingId")]
    assert missing["id"] is None and missing["input"] == repr({"text": "a record without an id"})
    assert errors[("text", "InvalidRecord")]["input"] == "not a dict at all"
    image = errors[("image", "MissingId")]["input"]
    assert "5,004 bytes" in image and len(image) < 200  # the bytes are shortened, never held whole
    assert errors[("text", "EmptyText")]["id"] == "empty"  # a later stage: the id names it


def test_the_dict_api_errors_carry_the_input_and_cap_it(tiny_text_model):
    huge = {"text": "x" * 10_000}  # no id
    with beam.Pipeline(runner="FnApiRunner") as p:
        result = p | beam.Create([huge, 7]) | EmbedText(model=str(tiny_text_model))

        def check(errors):
            by_type = {e["error_type"]: e for e in errors}
            assert len(by_type["MissingId"]["input"]) == MAX_INPUT_CHARS and by_type["MissingId"]["input"].endswith("...")
            assert by_type["InvalidRecord"]["input"] == "7"

        assert_that(result.errors, check)


def test_neighbors_and_evaluate_read_the_library_run(library_run):
    out = library_run["out"]
    done = run_pipeline("neighbors", "--embeddings", out, "--modality", "text", "--id", "r3", "-k", "3", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(rows) == 3 and "r3" not in {r["id"] for r in rows} and all("label" in r for r in rows)
    assert all("embedded_run_id" not in r for r in rows)  # a job column, not a passthrough
    done = run_pipeline("neighbors", "--embeddings", out, "--modality", "text", "--text", "good film", "-k", "2", "--json")
    assert done.returncode == 0, done.stderr[-2000:]  # the query text embedded with the manifest's model
    done = run_pipeline("evaluate", "--embeddings", out, "--modality", "text", "--label-field", "label", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "precision_at_1" in done.stdout
    done = run_pipeline("neighbors", "--embeddings", out, "--modality", "image", "--id", "img0", "-k", "2", "--json")
    assert done.returncode == 0, done.stderr[-2000:]


def test_report_and_build_index_read_the_library_run(library_run, tmp_path):
    page = tmp_path / "report.html"
    done = run_pipeline("report", library_run["out"], "--out", page)
    assert done.returncode == 0, done.stderr[-2000:]
    html = page.read_text()
    assert "lib-1" in html and "img0" in html and "data:image/jpeg;base64," in html  # image thumbnails from `source`
    pytest.importorskip("faiss")
    copy = tmp_path / "run"  # the index goes into the run folder: a copy, the module's run stays as it is
    import shutil

    shutil.copytree(library_run["out"], copy)
    done = run_pipeline("build-index", "--embeddings", copy, "--modality", "text")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (copy / "index").is_dir()


def test_a_later_incremental_run_skips_what_the_library_embedded(library_run, tmp_path):
    data = tmp_path / "now.jsonl"
    now = GOOD[:-2] + [{"id": "new", "text": "great acting", "label": "1"}]  # two records left, one arrived
    data.write_text("".join(json.dumps(r) + "\n" for r in now))
    out = tmp_path / "run2"
    done = run_pipeline(
        "run", "--output", out, "--text-input", data, "--text-model", library_run["model"], "--passthrough", "label",
        "--incremental-from", library_run["out"], "--carry-over",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    counts = read_manifest(str(out))["counts"]["text"]
    assert (counts["read"], counts["embedded"], counts["skipped"], counts["carried"]) == (29, 1, 28, 28)
    assert counts["removed"] == 2
    rows = {r["id"]: r for r in read_embeddings(str(out), "text").to_pylist()}
    assert set(rows) == {r["id"] for r in now}
    assert rows["r0"]["embedded_run_id"] == "lib-1" and rows["new"]["embedded_run_id"] != "lib-1"


def test_a_rerun_replaces_its_own_run_and_refuses_a_foreign_folder(tmp_path, tiny_text_model):
    out = tmp_path / "run"
    for run_id in ("a", "b"):
        with beam.Pipeline(runner="FnApiRunner") as p:
            texts = p | beam.Create(GOOD[:4]) | EmbedText(model=str(tiny_text_model))
            texts | WriteEmbeddingRun(str(out), run_id=run_id)
    assert read_manifest(str(out))["run_id"] == "b"
    assert read_embeddings(str(out), "text").num_rows == 4  # run a's files went (no duplicates)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    p = beam.Pipeline(runner="FnApiRunner")
    texts = p | beam.Create(GOOD[:2]) | EmbedText(model=str(tiny_text_model))
    with pytest.raises(Exception, match="notes.txt"):
        texts | WriteEmbeddingRun(str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(TypeError, match="EmbedText or EmbedImages"):
        (texts.embeddings | beam.Map(lambda r: r)) | "Mapped" >> WriteEmbeddingRun(str(tmp_path / "other"))


def test_a_failed_budget_writes_a_failed_run_the_tools_refuse(tmp_path, tiny_text_model):
    out = tmp_path / "run"
    with beam.Pipeline(runner="FnApiRunner") as p:
        texts = p | beam.Create(GOOD[:2] + BAD) | EmbedText(model=str(tiny_text_model))
        texts | WriteEmbeddingRun(str(out))  # 3 of 5 failed > 0.1
    manifest = read_manifest(str(out), allow_failed=True)
    assert manifest["status"] == "failed" and "3 of 5 records failed" in manifest["failures"]["text"]
    done = run_pipeline("neighbors", "--embeddings", out, "--id", "r0")
    assert done.returncode != 0 and "failed" in done.stderr


def _windowed(records: list[dict]) -> list:
    return [beam.window.TimestampedValue(r, 10 if i % 2 else 70) for i, r in enumerate(records)]


def test_text_and_images_take_windowed_input_alike(tmp_path, tiny_text_model, tiny_image_model):
    """Each embedding comes out in its record's window, for images as for text, and a per-window
    aggregation after the transform sees each window's records only."""
    images = [r for r in _images(tmp_path / "images") if "uri" in r]
    texts = GOOD[:6]

    def window_of(row, window=beam.DoFn.WindowParam):
        return row["id"], int(window.start)

    def expected(records):
        return sorted((r["id"], 0 if i % 2 else 60) for i, r in enumerate(records))

    with beam.Pipeline(runner="FnApiRunner") as p:
        text = (
            p
            | "T" >> beam.Create(_windowed(texts))
            | "TW" >> beam.WindowInto(beam.window.FixedWindows(60))
            | EmbedText(model=str(tiny_text_model), batch_size=4)
        )
        image = (
            p
            | "I" >> beam.Create(_windowed(images))
            | "IW" >> beam.WindowInto(beam.window.FixedWindows(60))
            | EmbedImages(model=str(tiny_image_model), layer="features", batch_size=1, decode_threads=1)
        )
        for name, result, records in (("Text", text, texts), ("Image", image, images)):
            placed = result.embeddings | f"{name}Window" >> beam.Map(window_of)
            assert_that(placed, _equals(expected(records)), label=f"{name}InWindows")
            per_window = (
                result.embeddings
                | f"{name}Ones" >> beam.Map(lambda _: 1)
                | f"{name}PerWindow" >> beam.CombineGlobally(sum).without_defaults()
            )
            n = len(records)
            assert_that(per_window, _equals(sorted([n // 2, n - n // 2])), label=f"{name}Sums")


def _equals(expected: list):
    def match(got):
        if sorted(got) != expected:
            raise AssertionError(f"{sorted(got)} != {expected}")

    return match


def test_passthrough_text_is_the_embedded_text_as_in_the_job(tmp_path, tiny_text_model):
    records = [{"id": "a", "body": "good movie"}, {"id": "b", "body": "bad film"}]
    out = tmp_path / "lib"
    with beam.Pipeline(runner="FnApiRunner") as p:
        result = p | beam.Create(records) | EmbedText(model=str(tiny_text_model), text_field="body", passthrough=["text"])
        assert_that(
            result.embeddings | beam.Map(lambda r: (r["id"], r["text"])), _equals([("a", "good movie"), ("b", "bad film")])
        )
        result | WriteEmbeddingRun(str(out))
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    job = tmp_path / "job"
    done = run_pipeline(
        "run",
        "--output",
        job,
        "--text-input",
        data,
        "--text-field",
        "body",
        "--text-model",
        tiny_text_model,
        "--passthrough",
        "text",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ours = {r["id"]: r["text"] for r in read_embeddings(str(out), "text").to_pylist()}
    theirs = {r["id"]: r["text"] for r in read_embeddings(str(job), "text").to_pylist()}
    assert ours == theirs == {"a": "good movie", "b": "bad film"}
    assert (
        pq.read_schema(next((out / "text").glob("*.parquet"))).names
        == pq.read_schema(next((job / "text").glob("*.parquet"))).names
    )
