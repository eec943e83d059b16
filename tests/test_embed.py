"""The embed stage on its own: fixed-shape batches with padding, the batched DoFns in a TestPipeline
(output schema, dead letters, passthrough, normalisation, failure isolation, one model per process)."""

import pathlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that
from PIL import Image

from transforms.embed.decode import decode_image
from transforms.embed.dofns import SKIPPED, EmbedImageBatchesFn, EmbedTextBatchesFn
from transforms.embed.models import ImageModelSpec, TextModelSpec, load_image_embedder, load_text_embedder
from transforms.io.text_read import text_batch_schema
from transforms.records import ERRORS, IMAGE, TEXT, ImageRef, embedding_schema

TEXTS = [
    "good movie",
    "bad film",
    "great acting",
    "awful plot twist",
    "good bad great",
    "film",
    "movie movie",
    "acting plot",
    "twist",
    "a word nobody knows",
]


def _check(description: str, condition: bool) -> None:
    if not condition:
        raise BeamAssertException(description)


def _metric(result, name: str) -> int:
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("embeddings").with_name(name))["counters"]
    return sum(c.committed or c.attempted or 0 for c in counters)


def _text_table(rows: list[tuple[str, str]], source: str = "in.jsonl", first_line: int = 1, label: str = "x") -> pa.Table:
    import hashlib

    return pa.Table.from_pydict(
        {
            "id": [r[0] for r in rows],
            "source": [source] * len(rows),
            "line": list(range(first_line, first_line + len(rows))),
            "text": [r[1] for r in rows],
            "content_sha256": [hashlib.sha256(r[1].encode()).hexdigest() for r in rows],
            "label": [label] * len(rows),
        },
        schema=text_batch_schema(["label"]),
    )


@pytest.mark.slow
def test_text_batches_run_at_their_own_size_in_one_trace_and_rows_do_not_leak(tiny_text_model):
    embedder = load_text_embedder(TextModelSpec(str(tiny_text_model), batch_size=4))
    whole = embedder.embed(TEXTS)  # 10 texts: batches of 4, 4 and 2 (not padded)
    assert whole.shape == (10, embedder.dimension) and whole.dtype == np.float32
    alone = np.concatenate([embedder.embed([t]) for t in TEXTS])
    assert whole.tobytes() == alone.tobytes()  # batch size and batch-mates change nothing, bit for bit
    reordered = embedder.embed(TEXTS[::-1])[::-1]
    assert reordered.tobytes() == whole.tobytes()
    assert embedder._forward.experimental_get_tracing_count() == 1  # one traced shape for every call


@pytest.mark.slow
def test_text_dofn_output_schema_dead_letters_and_one_load(tiny_text_model):
    spec = TextModelSpec(str(tiny_text_model), batch_size=4)
    embedder = load_text_embedder(spec)
    schema = embedding_schema(TEXT, embedder.dimension, ["label"], metadata={"dimension": str(embedder.dimension)})
    tables = [
        _text_table([(f"a{i}", t) for i, t in enumerate(TEXTS)], label="first"),
        _text_table([("blank", "   "), ("punct", "?! ..."), ("b0", "good movie")], source="other.jsonl", label="second"),
        _text_table([("c0", "bad film")], source="third.jsonl"),
    ]
    expected = {f"a{i}": v for i, v in enumerate(embedder.embed(TEXTS))}
    expected["b0"] = embedder.embed(["good movie"])[0]
    expected["c0"] = embedder.embed(["bad film"])[0]
    identity = (embedder.model_name, embedder.model_sha256)  # the closure below must not hold the model

    def check_tables(actual):
        _check(f"schemas {[t.schema for t in actual]}", all(t.schema.equals(schema, check_metadata=True) for t in actual))
        rows = {r["id"]: r for t in actual for r in t.to_pylist()}
        _check(f"ids {sorted(rows)}", set(rows) == set(expected))
        for record_id, vector in expected.items():
            row = rows[record_id]
            _check(record_id, np.asarray(row["embedding"], np.float32).tobytes() == vector.tobytes())
            _check(record_id, (row["model"], row["model_sha256"]) == identity)
        _check("passthrough", rows["a0"]["label"] == "first" and rows["b0"]["label"] == "second" and rows["c0"]["label"] == "x")
        _check("source and line kept", (rows["b0"]["source"], rows["b0"]["line"]) == ("other.jsonl", 3))

    p = BeamTestPipeline(runner="FnApiRunner")
    out = p | beam.Create(tables) | beam.ParDo(EmbedTextBatchesFn(spec, schema)).with_outputs(ERRORS, SKIPPED, main="tables")
    assert_that(out.tables, check_tables, label="Tables")
    assert_that(
        out[ERRORS] | beam.Map(lambda e: (e.id, e.modality, e.source, e.stage, e.error_type)),
        lambda got: _check(
            str(got),
            sorted(got)
            == [
                ("blank", TEXT, "other.jsonl", "preprocess", "EmptyText"),
                ("punct", TEXT, "other.jsonl", "preprocess", "EmptyText"),
            ],
        ),
        label="Errors",
    )
    assert_that(out[SKIPPED], lambda got: _check(str(got), got == []), label="NothingSkipped")
    result = p.run()
    result.wait_until_finish()
    assert _metric(result, "text_model_loads") == 1
    assert (_metric(result, "text_embedded"), _metric(result, "text_failed")) == (12, 2)


@pytest.mark.slow
def test_text_dofn_isolates_a_failing_record_and_normalizes(tiny_text_model, monkeypatch):
    from transforms.embed import models

    real_embed = models.TextEmbedder.embed

    def fragile(self, texts):
        if "kaboom" in texts:
            raise RuntimeError("the model cannot take kaboom")
        return real_embed(self, texts)

    monkeypatch.setattr(models.TextEmbedder, "embed", fragile)
    spec = TextModelSpec(str(tiny_text_model), batch_size=4)
    schema = embedding_schema(TEXT, load_text_embedder(spec).dimension, ["label"])
    rows = [(f"r{i}", "kaboom" if i == 6 else t) for i, t in enumerate(TEXTS)]
    p = BeamTestPipeline(runner="FnApiRunner")
    out = (
        p
        | beam.Create([_text_table(rows)])
        | beam.ParDo(EmbedTextBatchesFn(spec, schema, normalize=True)).with_outputs(ERRORS, SKIPPED, main="tables")
    )

    def check(actual):
        table = pa.concat_tables(actual)
        _check(str(table.column("id")), sorted(table.column("id").to_pylist()) == sorted(f"r{i}" for i in range(10) if i != 6))
        norms = np.linalg.norm(np.array(table.column("embedding").to_pylist(), np.float32), axis=1)
        _check(f"norms {norms}", np.allclose(norms, 1.0, atol=1e-5))

    assert_that(out.tables, check, label="BatchMatesEmbedded")
    assert_that(
        out[ERRORS] | beam.Map(lambda e: (e.id, e.stage, e.error_type, e.message)),
        lambda got: _check(str(got), got == [("r6", "embed", "RuntimeError", "the model cannot take kaboom")]),
        label="OneDeadLetter",
    )
    p.run().wait_until_finish()


def _images(folder: pathlib.Path, n: int) -> list[pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(7)
    paths = []
    for i in range(n):
        path = folder / f"p{i}.png"
        Image.fromarray((rng.rand(20 + i, 25, 3) * 255).astype("uint8")).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_image_dofn_embeds_batches_in_threads_like_the_model_alone(tmp_path, tiny_image_model):
    spec = ImageModelSpec(str(tiny_image_model), layer="features", batch_size=2)
    embedder = load_image_embedder(spec)
    schema = embedding_schema(IMAGE, embedder.dimension, ["label"])
    paths = _images(tmp_path / "img", 7)
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    refs = [ImageRef(f"p{i}", str(p), {"label": f"l{i}"}) for i, p in enumerate(paths)]
    refs += [ImageRef("corrupt", str(tmp_path / "img" / "corrupt.png")), ImageRef("gone", str(tmp_path / "img" / "gone.png"))]
    pixels = np.stack([decode_image(p.read_bytes(), embedder.input_size) for p in paths])
    expected = {f"p{i}": v for i, v in enumerate(embedder.embed(pixels))}
    alone = np.concatenate([embedder.embed(pixels[i : i + 1]) for i in range(7)])
    assert alone.tobytes() == np.stack(list(expected.values())).tobytes()  # padding leaks nothing

    def check(actual):
        rows = {r["id"]: r for t in actual for r in t.to_pylist()}
        _check(f"ids {sorted(rows)}", set(rows) == set(expected))
        for record_id, vector in expected.items():
            _check(record_id, np.asarray(rows[record_id]["embedding"], np.float32).tobytes() == vector.tobytes())
            _check(record_id, rows[record_id]["label"] == "l" + record_id[1:])
            _check(record_id, rows[record_id]["source"].endswith(f"{record_id}.png"))
        _check("schema", all(t.schema.equals(schema) for t in actual))

    p = BeamTestPipeline(runner="FnApiRunner")
    # two elements, as BatchElements would hand them over; each is split into model batches of 2
    out = (
        p
        | beam.Create([refs[:5], refs[5:]])
        | beam.ParDo(EmbedImageBatchesFn(spec, schema, decode_threads=2)).with_outputs(ERRORS, SKIPPED, main="tables")
    )
    assert_that(out.tables, check, label="Tables")
    assert_that(
        out[ERRORS] | beam.Map(lambda e: (e.id, e.modality, e.stage, e.error_type)),
        lambda got: _check(
            str(got),
            sorted(got)[0][:3] == ("corrupt", IMAGE, "decode")
            and sorted(got)[1] == ("gone", IMAGE, "read", "FileNotFoundError")
            and len(got) == 2,
        ),
        label="Errors",
    )
    result = p.run()
    result.wait_until_finish()
    assert _metric(result, "image_model_loads") == 1
    assert (_metric(result, "image_embedded"), _metric(result, "image_failed")) == (7, 2)
