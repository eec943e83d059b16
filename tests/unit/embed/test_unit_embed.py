"""Unit layer for `transforms.embed`: image decoding, the model interface, the columnar text embedder.

Direct calls for `decode` and `interface`; `EmbedTextTables` under `TestPipeline` + `assert_that` with
the tiny text model from tests/conftest.py. The end-to-end runs (tests/test_api.py, test_embed.py) stay.
"""

import hashlib
import io

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from transforms.embed import decode, interface
from transforms.embed.api import EmbedTextTables
from transforms.embed.models import ImageModelSpec, TextModelSpec, load_text_embedder
from transforms.io.text_read import text_batch_schema
from transforms.records import TEXT, embedding_schema


def _png(width: int, height: int) -> bytes:
    """Left half red, right half blue."""
    img = Image.new("RGB", (width, height), (255, 0, 0))
    img.paste((0, 0, 255), (width // 2, 0, width, height))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def test_decode_gives_height_width_rgb_and_keeps_left_and_right():
    pixels = decode.decode_image(_png(64, 40), (20, 30))  # size is (height, width)
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[10, 2]) == (255, 0, 0) and tuple(pixels[10, 27]) == (0, 0, 255)


def test_decode_errors_are_image_errors_a_dead_letter_can_name():
    data = _png(32, 32)
    with pytest.raises(decode.ImageDecodeError):
        decode.decode_image(data[: len(data) // 2], (8, 8))
    with pytest.raises(decode.ImageTooLarge):
        decode.decode_image(data, (8, 8), max_pixels=100)


def test_the_specs_satisfy_the_model_interface(tiny_text_model):
    spec = TextModelSpec(str(tiny_text_model), batch_size=4)
    assert isinstance(spec, interface.ModelSpec) and spec.modality == TEXT
    assert isinstance(ImageModelSpec("mobilenet_v3_small", weights="none"), interface.ModelSpec)
    assert spec.cache_key() == TextModelSpec(str(tiny_text_model), batch_size=4).cache_key()
    assert spec.cache_key() != TextModelSpec(str(tiny_text_model), batch_size=8).cache_key()
    embedder = spec.load_model()
    assert isinstance(embedder, interface.Embedder)
    rows = np.asarray(embedder.embed(["good movie", "bad film", "x"]))
    assert rows.shape == (3, embedder.dimension) and rows.dtype == np.float32
    assert len(embedder.model_sha256) == 64


def test_embed_text_tables_gives_finite_vectors_of_the_models_dimension_and_dead_letters(tiny_text_model):
    texts = {"a": "good movie", "b": "", "c": "great acting", "d": "good movie"}
    batch = pa.Table.from_pydict(
        {
            "id": list(texts),
            "source": ["r.jsonl"] * 4,
            "line": [1, 2, 3, 4],
            "text": list(texts.values()),
            "content_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts.values()],
        },
        schema=text_batch_schema(()),
    )
    spec = TextModelSpec(str(tiny_text_model), batch_size=2)
    dimension = load_text_embedder(spec).dimension
    schema = embedding_schema(TEXT, dimension, ())

    def rows(table):
        assert table.schema.equals(schema)
        return [(r["id"], np.asarray(r["embedding"], np.float32)) for r in table.to_pylist()]

    def check_vectors(actual):
        by_id = dict(actual)
        assert sorted(by_id) == ["a", "c", "d"]
        for vector in by_id.values():
            assert vector.shape == (dimension,) and np.isfinite(vector).all()
        assert np.array_equal(by_id["a"], by_id["d"])  # a row depends on its own text only
        assert not np.array_equal(by_id["a"], by_id["c"])

    with BeamTestPipeline() as p:
        out = p | beam.Create([batch]) | EmbedTextTables(spec, schema)
        assert_that(out.tables | beam.FlatMap(rows), check_vectors, label="vectors")
        assert_that(out.errors | beam.Map(lambda e: (e.id, e.stage)), equal_to([("b", "preprocess")]), label="errors")
