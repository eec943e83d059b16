"""The library transforms (`from transforms import EmbedText, EmbedImages, read_embeddings`) in a
user's own pipeline: TestPipeline + assert_that, real tiny Keras models, compared with what
`python -m pipeline run` writes for the same records."""

import json
import os
import pathlib
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that
from PIL import Image

from tests.tests_support import PROJECT_ROOT, run_pipeline
from transforms import EmbedImages, EmbedText, read_embeddings, read_errors
from transforms.embed.models import ModelConfigError

TEXT_RECORDS = [
    {"id": "t1", "text": "good movie", "label": 1},
    {"id": "t2", "text": "bad film, awful plot twist", "label": 0},
    {"id": "t3", "text": "great acting", "label": "yes"},
    {"id": "t4", "text": "a film with words the model never saw"},  # no label: null passthrough
    {"id": "t5", "text": "   "},  # whitespace only: EmptyText
    {"id": "t6", "text": "!!! ..."},  # nothing left after standardisation: EmptyText
    {"id": "t7", "text": None},  # null: InvalidTextField
    {"id": "t8", "text": 42},  # not a string: InvalidTextField
    {"id": 9, "text": "good good good"},  # a numeric id becomes the string "9", as in the job
] + [{"id": f"bulk{i}", "text": f"good film number {i}", "label": i % 2} for i in range(40)]


def _runner_pipeline() -> BeamTestPipeline:
    # The FnApiRunner, as the job uses locally: Beam 2.77's DirectRunner would try to fetch Prism.
    return BeamTestPipeline(runner="FnApiRunner")


def _write_images(folder: pathlib.Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(3)
    records = []
    for i in range(6):
        path = folder / (f"img{i}.png" if i % 2 else f"img{i}.jpg")
        Image.fromarray((rng.rand(30 + 3 * i, 40, 3) * 255).astype("uint8")).save(path)
        records.append({"id": f"img{i}", "uri": str(path), "label": f"class{i % 3}"})
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    records.append({"id": "broken", "uri": str(folder / "broken.jpg"), "label": "x"})
    records.append({"id": "missing", "uri": str(folder / "missing.png"), "label": "x"})
    return records


@pytest.fixture(scope="module")
def job_run(tmp_path_factory, tiny_text_model, tiny_image_model) -> dict:
    """The job itself (`python -m pipeline run` in its own process) over the same records."""
    root = tmp_path_factory.mktemp("api-job")
    with open(root / "reviews.jsonl", "w") as f:
        for record in TEXT_RECORDS:
            f.write(json.dumps(record) + "\n")
    images = _write_images(root / "images")
    with open(root / "images.csv", "w") as f:
        f.write("id,uri,label\n")
        for record in images:
            f.write(f"{record['id']},{record['uri']},{record['label']}\n")
    out = root / "out"
    done = run_pipeline(
        "run",
        "--output",
        out,
        "--text-input",
        root / "reviews.jsonl",
        "--text-model",
        tiny_text_model,
        "--image-input",
        root / "images.csv",
        "--image-id-field",
        "id",
        "--image-model",
        tiny_image_model,
        "--image-layer",
        "features",
        "--passthrough",
        "label",
        "--max-failed-fraction",
        "1",  # bad records on purpose: compared with the library's dead letters
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": out, "images": images}


def _by_id(table) -> dict:
    return {row["id"]: row for row in table.to_pylist()}


def _check(description: str, condition: bool) -> None:
    if not condition:
        raise BeamAssertException(description)


def _matches_job(job_rows: dict, passthrough: tuple = ("label",)):
    """An assert_that matcher: every embedding equals the job's row of the same id, bit for bit."""

    def match(actual):
        got = {row["id"]: row for row in actual}
        _check(f"ids {sorted(got)} != the job's {sorted(job_rows)}", set(got) == set(job_rows))
        for record_id, row in got.items():
            expected = job_rows[record_id]
            vector = row["embedding"]
            _check(
                f"{record_id}: not a 1-D float32 array",
                isinstance(vector, np.ndarray) and vector.dtype == np.float32 and vector.ndim == 1,
            )
            _check(
                f"{record_id}: vector differs from the job's",
                np.array_equal(vector, np.asarray(expected["embedding"], dtype=np.float32)),
            )
            for name in ("content_sha256", "model", "model_sha256", *passthrough):
                _check(f"{record_id}: {name} {row[name]!r} != the job's {expected[name]!r}", row[name] == expected[name])
            _check(
                f"{record_id}: unexpected fields {sorted(row)}",
                set(row) == {"id", "embedding", "content_sha256", "model", "model_sha256", *passthrough},
            )

    return match


def _errors_match(expected: set):
    def match(actual):
        got = {(e["id"], e["stage"], e["error_type"], e["message"]) for e in actual}
        _check(f"dead letters {sorted(got, key=str)} != {sorted(expected, key=str)}", got == expected)
        _check(f"{len(actual)} dead letters for {len(got)} distinct ones", len(actual) == len(got))

    return match


def _metric(result, name: str) -> int:
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("embeddings").with_name(name))["counters"]
    return sum(c.committed or c.attempted or 0 for c in counters)


@pytest.mark.slow
def test_embed_text_gives_the_jobs_vectors_dead_letters_and_passthrough(job_run, tiny_text_model):
    job = _by_id(read_embeddings(str(job_run["out"]), "text"))
    job_errors = {
        (e["id"], e["stage"], e["error_type"], e["message"])
        for e in read_errors(str(job_run["out"])).to_pylist()
        if e["modality"] == "text"
    }
    assert len(job) == len(TEXT_RECORDS) - 4 and len(job_errors) == 4  # t5..t8: the job's own verdict
    p = _runner_pipeline()
    result = p | beam.Create(TEXT_RECORDS) | EmbedText(model=str(tiny_text_model), passthrough=["label"], batch_size=16)
    assert_that(result.embeddings, _matches_job(job), label="SameAsTheJob")
    assert_that(result.errors, _errors_match(job_errors), label="SameDeadLetters")
    run = p.run()
    run.wait_until_finish()
    assert _metric(run, "text_model_loads") == 1  # four batches, one model per process
    assert _metric(run, "text_embedded") == len(job)
    assert job["t1"]["label"] == "1" and job["t3"]["label"] == "yes" and job["t4"]["label"] is None
    assert "9" in job  # a numeric id is the string "9" in the job and in the transform alike


@pytest.mark.slow
def test_embed_images_gives_the_jobs_vectors_and_bytes_equal_uris(job_run, tiny_image_model):
    job = _by_id(read_embeddings(str(job_run["out"]), "image"))
    job_errors = {
        (e["id"], e["stage"], e["error_type"], e["message"])
        for e in read_errors(str(job_run["out"])).to_pylist()
        if e["modality"] == "image"
    }
    assert set(job) == {f"img{i}" for i in range(6)} and {e[0] for e in job_errors} == {"broken", "missing"}
    records = list(job_run["images"])
    # the same pictures again, as bytes held by the record instead of a uri
    as_bytes = [
        {"id": f"bytes-{r['id']}", "image_bytes": pathlib.Path(r["uri"]).read_bytes(), "label": r["label"]}
        for r in records
        if r["id"].startswith("img")
    ]
    expected = dict(job)
    for record in as_bytes:
        expected[record["id"]] = job[record["id"][len("bytes-") :]]
    p = _runner_pipeline()
    result = (
        p
        | beam.Create(records + as_bytes)
        | EmbedImages(model=str(tiny_image_model), layer="features", passthrough=("label",), batch_size=4)
    )
    assert_that(result.embeddings, _matches_job(expected), label="SameAsTheJobFromUrisAndBytes")
    assert_that(result.errors, _errors_match(job_errors), label="SameDeadLetters")
    run = p.run()
    run.wait_until_finish()
    assert _metric(run, "image_model_loads") == 1
    assert _metric(run, "image_embedded") == 12


@pytest.mark.slow
def test_bad_records_are_dead_letters_and_everything_adds_up(tmp_path, tiny_text_model, tiny_image_model):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(good)
    texts = [
        {"id": "ok", "text": "good movie"},
        {"text": "no id at all"},
        {"id": "", "text": "an empty id"},
        "not a dict",
        {"id": "no-text"},
    ]
    images = [
        {"id": "ok", "uri": str(good)},
        {"uri": str(good)},  # no id: the uri names it, as in the job's manifests
        {"image_bytes": good.read_bytes()},  # bytes and no id: nothing to name it
        {"id": "neither"},
        {"id": "not-bytes", "image_bytes": "a string"},
        {"id": "too-big", "image_bytes": b"\x89PNG" + b"\0" * 5000},
        ["a", "list"],
    ]
    p = _runner_pipeline()
    text = p | "Texts" >> beam.Create(texts) | EmbedText(model=str(tiny_text_model))
    image = p | "Images" >> beam.Create(images) | EmbedImages(model=str(tiny_image_model), layer="features", max_bytes=4096)
    assert_that(
        text.embeddings | "TextIds" >> beam.Map(lambda r: r["id"]), lambda ids: _check(str(ids), ids == ["ok"]), label="OneText"
    )
    assert_that(
        text.errors | "TextErrors" >> beam.Map(lambda e: (e["id"], e["stage"], e["error_type"])),
        lambda got: _check(
            str(got),
            sorted(got, key=str)
            == sorted(
                [
                    (None, "read", "MissingId"),
                    (None, "read", "MissingId"),
                    (None, "read", "InvalidRecord"),
                    ("no-text", "read", "InvalidTextField"),
                ],
                key=str,
            ),
        ),
        label="TextDeadLetters",
    )
    assert_that(
        image.embeddings | "ImageIds" >> beam.Map(lambda r: r["id"]),
        lambda ids: _check(str(ids), sorted(ids) == sorted(["ok", str(good)])),
        label="TwoImages",
    )
    assert_that(
        image.errors | "ImageErrors" >> beam.Map(lambda e: (e["id"], e["stage"], e["error_type"])),
        lambda got: _check(
            str(got),
            sorted(got, key=str)
            == sorted(
                [
                    (None, "read", "MissingId"),
                    ("neither", "read", "InvalidRecord"),
                    ("not-bytes", "read", "InvalidRecord"),
                    ("too-big", "read", "FileTooLarge"),
                    (None, "read", "InvalidRecord"),
                ],
                key=str,
            ),
        ),
        label="ImageDeadLetters",
    )
    p.run().wait_until_finish()


@pytest.mark.slow
def test_normalize_gives_unit_vectors(tiny_text_model):
    p = _runner_pipeline()
    result = p | beam.Create(TEXT_RECORDS[:3]) | EmbedText(model=str(tiny_text_model), normalize=True)
    assert_that(
        result.embeddings | beam.Map(lambda r: float(np.linalg.norm(r["embedding"]))),
        lambda norms: _check(str(norms), len(norms) == 3 and all(abs(n - 1) < 1e-5 for n in norms)),
    )
    p.run().wait_until_finish()


def test_columnar_core_keeps_the_schema_and_gives_the_dict_transforms_vectors(tmp_path, tiny_text_model, tiny_image_model):
    """EmbedTextTables / EmbedImageRefs, what the job is built from: text batch tables and ImageRefs
    in, tables in the given schema (its metadata kept) out, the same vectors as EmbedText /
    EmbedImages bit for bit, and the same dead letters."""
    import hashlib

    import pyarrow as pa

    from transforms import EmbedImageRefs, EmbedTextTables
    from transforms.embed.models import ImageModelSpec, TextModelSpec, load_image_embedder, load_text_embedder
    from transforms.io.text_read import text_batch_schema
    from transforms.records import IMAGE, TEXT, ImageRef, embedding_schema

    texts = {"a": "good movie", "b": "   ", "c": "bad film, awful plot twist", "d": "great acting", "e": "good good"}
    labels = {"a": "x", "b": None, "c": "y", "d": None, "e": "z"}
    batch = pa.Table.from_pydict(
        {
            "id": list(texts),
            "source": ["reviews.jsonl"] * 5,
            "line": [1, 2, 3, 4, 5],
            "text": list(texts.values()),
            "content_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts.values()],
            "label": list(labels.values()),
        },
        schema=text_batch_schema(("label",)),
    )
    text_spec = TextModelSpec(str(tiny_text_model), batch_size=2)  # 2: a padded last batch too
    text_schema = embedding_schema(TEXT, load_text_embedder(text_spec).dimension, ("label",), metadata={"run": "mine"})
    images = _write_images(tmp_path / "images")
    image_spec = ImageModelSpec(str(tiny_image_model), layer="features", batch_size=2)
    image_schema = embedding_schema(IMAGE, load_image_embedder(image_spec).dimension, ("label",), metadata={"run": "mine"})

    def rows(kind: str, schema):
        def each(table):
            _check(
                f"{kind}: schema {table.schema} (metadata {table.schema.metadata})",
                table.schema.equals(schema, check_metadata=True),
            )
            return [
                (kind, r["id"], np.asarray(r["embedding"], np.float32).tobytes(), r["content_sha256"], r["label"])
                for r in table.to_pylist()
            ]

        return each

    def dict_row(kind: str):
        return lambda r: (kind, r["id"], r["embedding"].tobytes(), r["content_sha256"], r["label"])

    def same_as(expected_ids: dict):
        def match(actual):
            by_kind: dict = {}
            for kind, *row in actual:
                by_kind.setdefault(kind[:4], {}).setdefault(kind[5:], set()).add(tuple(row))
            for kind, got in by_kind.items():
                _check(f"{kind}: {sorted(got)} sources", set(got) == {"core", "dict"})
                _check(f"{kind}: ids {sorted(r[0] for r in got['core'])}", {r[0] for r in got["core"]} == expected_ids[kind])
                _check(f"{kind}: the columnar core and the dict transform differ", got["core"] == got["dict"])

        return match

    p = _runner_pipeline()
    text_core = p | "Tables" >> beam.Create([batch.slice(0, 3), batch.slice(3)]) | EmbedTextTables(text_spec, text_schema)
    text_dicts = (
        p
        | "TextDicts" >> beam.Create([{"id": i, "text": t, "label": labels[i]} for i, t in texts.items()])
        | EmbedText(str(tiny_text_model), passthrough=["label"], batch_size=2)
    )
    refs = [ImageRef(r["id"], r["uri"], {"label": r["label"]}) for r in images]
    image_core = p | "Refs" >> beam.Create(refs) | EmbedImageRefs(image_spec, image_schema)
    image_dicts = (
        p
        | "ImageDicts" >> beam.Create(images)
        | EmbedImages(str(tiny_image_model), layer="features", passthrough=["label"], batch_size=2)
    )
    assert_that(
        (
            text_core.tables | "TextCoreRows" >> beam.FlatMap(rows("text/core", text_schema)),
            text_dicts.embeddings | "TextDictRows" >> beam.Map(dict_row("text/dict")),
            image_core.tables | "ImageCoreRows" >> beam.FlatMap(rows("imag/core", image_schema)),
            image_dicts.embeddings | "ImageDictRows" >> beam.Map(dict_row("imag/dict")),
        )
        | beam.Flatten(),
        same_as({"text": {"a", "c", "d", "e"}, "imag": {f"img{i}" for i in range(6)}}),
    )
    assert_that(
        (text_core.errors, image_core.errors)
        | "CoreErrors" >> beam.Flatten()
        | beam.Map(lambda e: (e.id, e.stage, e.error_type)),
        lambda got: _check(
            str(got),
            sorted(got)
            == [("b", "preprocess", "EmptyText"), ("broken", "decode", "CorruptImage"), ("missing", "read", "FileNotFoundError")],
        ),
        label="CoreDeadLetters",
    )
    assert text_core._fields == image_core._fields == ("tables", "errors")  # no job internals (skipped, carried)
    p.run().wait_until_finish()


def test_bad_arguments_fail_when_the_transform_is_built_or_applied(tmp_path, tiny_text_model, tiny_image_model):
    with pytest.raises(ValueError, match="'embedding' clashes"):
        EmbedText(model=str(tiny_text_model), passthrough=["embedding"])
    EmbedText(model=str(tiny_text_model), text_field="body", passthrough=["text"])  # the embedded text, as --passthrough text
    with pytest.raises(TypeError, match="not the string 'label'"):
        EmbedText(model=str(tiny_text_model), passthrough="label")
    with pytest.raises(ValueError, match="batch_size"):
        EmbedImages(model="MobileNet", batch_size=0)
    p = beam.Pipeline(runner="FnApiRunner")
    records = p | beam.Create([{"id": "a", "text": "x"}])
    with pytest.raises(ModelConfigError, match=r"EmbedText\(model=\.\.\.\) '.*nope\.keras': "):
        records | "Missing" >> EmbedText(model=str(tmp_path / "nope.keras"))
    with pytest.raises(ModelConfigError, match=r"EmbedImages\(layer=\.\.\.\) 'nope': no such layer"):
        records | "BadLayer" >> EmbedImages(model=str(tiny_image_model), layer="nope")
    with pytest.raises(ModelConfigError, match=r"EmbedImages\(model=\.\.\.\) 'NoSuchNet': unknown network"):
        records | "BadNet" >> EmbedImages(model="NoSuchNet")
    # windowed input is taken by both transforms (tests/test_library_runs.py checks the windows)


@pytest.mark.slow
def test_read_embeddings_imports_no_tensorflow(job_run):
    code = (
        "import sys\n"
        "from transforms import read_embeddings, read_errors\n"
        f"table = read_embeddings({str(job_run['out'])!r}, 'image')\n"
        f"errors = read_errors({str(job_run['out'])!r})\n"
        "assert table.num_rows == 6 and errors.num_rows == 6, (table.num_rows, errors.num_rows)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not loaded, loaded[:5]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_transforms_package_exports_the_api():
    import transforms

    assert {"EmbedText", "EmbedImages", "EmbedResult", "read_embeddings"} <= set(transforms.__all__)
    assert {"EmbedTextTables", "EmbedImageRefs", "EmbeddedTables"} <= set(transforms.__all__)
    assert transforms.read_embeddings.__module__ == "transforms.results"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        transforms.nothing  # noqa: B018
