"""Tests of the embedded demo (`examples.demo`): the generated data, the demo image model, and a
whole small demo run (train-text, the job, nearest neighbours) as `run_local.sh` does it."""

from __future__ import annotations

import csv
import pathlib
import re
import types

import numpy as np
import pytest
from PIL import Image

from examples import demo
from transforms.embed.decode import CorruptImage, decode_image
from transforms.io.text_formats import iter_records

WORD = re.compile(r"[a-z]+")


def _parse(path: pathlib.Path):
    with open(path, "rb") as handle:
        return list(iter_records(handle, "jsonl"))


def _manifest_rows(folder: pathlib.Path) -> list[dict]:
    with open(folder / "MANIFEST.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- text ---------------------------------------------------------------------------------------


def test_demo_text_has_the_reviews_and_the_bad_lines(tmp_path):
    path = tmp_path / "text" / "reviews.jsonl"
    info = demo.make_demo_text(str(path), n=60, seed=3)
    assert (info.records, info.positives, info.bad_lines) == (60, 30, 4)

    parsed = _parse(path)
    assert len(parsed) == 64
    records = [p.record for p in parsed if p.error is None]
    reviews = [r for r in records if r["id"].startswith("review-")]
    assert len(reviews) == 60 and len({r["id"] for r in reviews}) == 60
    assert sorted({r["label"] for r in reviews}) == [0, 1]
    assert sum(r["label"] for r in reviews) == 30
    assert {r["topic"] for r in reviews} <= set(demo._TOPICS)
    assert all(isinstance(r["text"], str) and WORD.search(r["text"].lower()) for r in reviews)

    # The bad lines, each where the returned line numbers say.
    malformed = [p for p in parsed if p.error is not None]
    assert [p.line for p in malformed] == [info.bad_line_numbers[0]]
    by_id = {r["id"]: (r, p.line) for p, r in ((p, p.record) for p in parsed if p.error is None)}
    assert by_id["bad-empty-text"][0]["text"] == ""
    assert by_id["bad-null-text"][0]["text"] is None
    assert not WORD.search(by_id["bad-no-words"][0]["text"].lower())
    assert [by_id[i][1] for i in ("bad-empty-text", "bad-null-text", "bad-no-words")] == list(info.bad_line_numbers[1:])
    assert 1 < info.bad_line_numbers[0] and info.bad_line_numbers[-1] < 64  # spread through, not at the end


def test_demo_text_labels_are_learnable_from_the_words_alone(tmp_path):
    """Every review has a word of its own label's adjectives and none of the other's: a bag of words separates them."""
    path = tmp_path / "r.jsonl"
    demo.make_demo_text(str(path), n=400)
    for p in _parse(path):
        if p.error is None and p.record["id"].startswith("review-"):
            words = set(WORD.findall(p.record["text"].lower()))
            label = p.record["label"]
            assert words & set(demo._ADJECTIVES[label]), p.record
            assert not words & set(demo._ADJECTIVES[1 - label]), p.record


def test_demo_text_is_deterministic_per_seed(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        demo.make_demo_text(str(tmp_path / f"{name}.jsonl"), n=50, seed=seed)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()


# --- images -------------------------------------------------------------------------------------


def test_demo_images_are_in_class_folders_with_a_manifest_and_one_corrupt_file(tmp_path):
    folder = tmp_path / "images"
    info = demo.make_demo_images(str(folder), per_class=4, seed=2)
    assert info.images == 16 and info.classes == demo.IMAGE_CLASSES
    rows = _manifest_rows(folder)
    assert len(rows) == 17
    assert [r["uri"] for r in rows if r["uri"] in info.corrupt] == list(info.corrupt)
    formats = set()
    for row in rows:
        uri = row["uri"]
        assert not pathlib.PurePath(uri).is_absolute()
        assert uri.split("/")[0] == row["label"] and row["label"] in demo.IMAGE_CLASSES
        data = (folder / uri).read_bytes()
        if uri in info.corrupt:
            with pytest.raises(CorruptImage):
                decode_image(data, (64, 64))
            continue
        with Image.open(folder / uri) as img:
            formats.add(img.format)
            assert img.size == (64, 64)
        pixels = decode_image(data, (64, 64))
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
        assert pixels.std() > 5  # a picture, not a flat colour
    assert formats == {"PNG", "JPEG"}
    good = [r["label"] for r in rows if r["uri"] not in info.corrupt]
    assert {label: good.count(label) for label in demo.IMAGE_CLASSES} == dict.fromkeys(demo.IMAGE_CLASSES, 4)


def test_demo_images_are_deterministic_per_seed(tmp_path):
    a = demo.make_demo_images(str(tmp_path / "a"), per_class=2, seed=5)
    demo.make_demo_images(str(tmp_path / "b"), per_class=2, seed=5)
    demo.make_demo_images(str(tmp_path / "c"), per_class=2, seed=6)
    uris = [r["uri"] for r in _manifest_rows(tmp_path / "a")] + ["MANIFEST.csv"]
    assert len(uris) == a.images + 2
    same = [(tmp_path / "a" / u).read_bytes() == (tmp_path / "b" / u).read_bytes() for u in uris]
    other = [(tmp_path / "a" / u).read_bytes() == (tmp_path / "c" / u).read_bytes() for u in uris]
    assert all(same)
    assert not all(other)


# --- a whole small demo -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """A small demo made, trained and run once, as run_local.sh does it (fewer records and epochs)."""
    from pipeline.run import run
    from pipeline.train.text import TextTrainingConfig, train_text_model

    root = tmp_path_factory.mktemp("demo")
    text = demo.make_demo_text(str(root / "text" / "reviews.jsonl"), n=120, seed=0)
    images = demo.make_demo_images(str(root / "images"), per_class=6, seed=0)
    image_model = str(root / "image_model.keras")
    image_report = demo.train_demo_image_model(images.folder, image_model, seed=0, epochs=30, verbose=False)
    text_model = str(root / "text_model.keras")
    text_report = train_text_model(
        TextTrainingConfig(
            output=text_model,
            inputs=(text.path,),
            epochs=15,
            embedding_dim=16,
            batch_size=16,
            learning_rate=0.01,
            verbose=0,
        )
    )
    output = str(root / "output")
    manifest = run(
        [
            "--output",
            output,
            "--text-input",
            text.path,
            "--text-model",
            text_model,
            "--image-input",
            images.manifest,
            "--image-model",
            image_model,
            "--image-layer",
            "features",
            "--passthrough",
            "label",
        ]
    )
    return types.SimpleNamespace(
        text=text,
        images=images,
        image_model=image_model,
        image_report=image_report,
        text_model=text_model,
        text_report=text_report,
        output=output,
        manifest=manifest,
    )


@pytest.mark.slow
def test_demo_image_model_loads_in_safe_mode_and_its_features_embed_each_image(small_demo):
    import keras

    from transforms.embed.models import ImageModelSpec, load_image_embedder

    model = keras.saving.load_model(small_demo.image_model, safe_mode=True)
    assert tuple(model.inputs[0].shape) == (None, 64, 64, 3)
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    assert "Rescaling" in kinds.values() and "Lambda" not in kinds.values()
    assert kinds["features"] == "GlobalAveragePooling2D"
    assert model.layers[-1].name == "classes" and model.layers[-1].units == len(demo.IMAGE_CLASSES)
    assert small_demo.image_report["classes"] == list(demo.IMAGE_CLASSES)
    assert small_demo.image_report["images"] == 24
    assert small_demo.image_report["skipped"] == list(small_demo.images.corrupt)
    assert small_demo.image_report["train_accuracy"] >= 0.9

    embedder = load_image_embedder(ImageModelSpec(small_demo.image_model, weights="none", layer="features", batch_size=8))
    rows = [r for r in _manifest_rows(pathlib.Path(small_demo.images.folder)) if r["uri"] not in small_demo.images.corrupt]
    pixels = np.stack(
        [decode_image((pathlib.Path(small_demo.images.folder) / r["uri"]).read_bytes(), embedder.input_size) for r in rows]
    )
    vectors = embedder.embed(pixels)
    assert vectors.shape == (24, model.get_layer("features").output.shape[-1])
    assert np.isfinite(vectors).all()
    assert len({v.tobytes() for v in vectors}) == 24  # one vector per image, not one for all


@pytest.mark.slow
def test_demo_text_model_learns_the_reviews(small_demo):
    report = small_demo.text_report
    assert report["bad_records"] == small_demo.text.bad_lines
    assert report["train_records"] + report["val_records"] == small_demo.text.records
    assert report["val_accuracy"] >= 0.9


@pytest.mark.slow
def test_demo_run_counts_add_up_and_bad_records_are_dead_letters(small_demo):
    from transforms.results import read_embeddings, read_errors

    counts = small_demo.manifest["counts"]
    assert counts["text"] == {"read": 124, "embedded": 120, "failed": 4, "skipped": 0, "balanced": True}
    assert counts["image"] == {"read": 25, "embedded": 24, "failed": 1, "skipped": 0, "balanced": True}

    errors = read_errors(small_demo.output).to_pylist()
    text_path = small_demo.text.path
    assert {e["id"] for e in errors if e["modality"] == "text"} == {
        f"{pathlib.Path(text_path).name}:{small_demo.text.bad_line_numbers[0]}",
        "bad-empty-text",
        "bad-null-text",
        "bad-no-words",
    }
    (image_error,) = [e for e in errors if e["modality"] == "image"]
    assert (image_error["id"], image_error["stage"], image_error["error_type"]) == (
        small_demo.images.corrupt[0],
        "decode",
        "CorruptImage",
    )

    text = read_embeddings(small_demo.output, "text")
    assert text.num_rows == 120 and set(text.column("label").to_pylist()) == {"0", "1"}
    image = read_embeddings(small_demo.output, "image")
    assert image.num_rows == 24 and set(image.column("label").to_pylist()) == set(demo.IMAGE_CLASSES)


@pytest.mark.slow
def test_nearest_neighbours_are_mostly_of_the_same_label(small_demo):
    results = demo.nearest_neighbours(small_demo.output, "image", k=3, n_queries=4)
    assert len(results) == 4
    queries = [query for query, _ in results]
    assert len(set(queries)) == 4 and all(q.split("/")[0] in demo.IMAGE_CLASSES for q in queries)
    for query, neighbours in results:
        assert len(neighbours) == 3
        scores = [score for _, score, _ in neighbours]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0001 <= s <= 1.0001 for s in scores)
        assert all(n_id != query for n_id, _, _ in neighbours)
        assert all(label == n_id.split("/")[0] for n_id, _, label in neighbours)  # the passthrough label
    # The image embedding groups shapes; the text one (a sentiment model's) groups sentiment.
    assert demo.nearest_label_agreement(small_demo.output, "image") >= 0.75
    assert demo.nearest_label_agreement(small_demo.output, "text") >= 0.9


@pytest.mark.slow
def test_neighbours_command_prints_files_and_neighbours(small_demo, capsys, tmp_path):
    assert demo.main(["neighbours", "--output", small_demo.output, "--queries", "2", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "text/part-" in out and "image/part-" in out
    assert out.count("query ") == 4
    assert "'" in out.split("text:")[1]  # text queries show their sentence, read back from the input
    assert demo.main(["neighbours", "--output", str(tmp_path)]) == 2  # not a finished run
    assert "_MANIFEST.json" in capsys.readouterr().err


@pytest.mark.slow
def test_data_command_writes_everything_run_local_needs(tmp_path):
    import keras

    out = tmp_path / "demo_data"
    assert demo.main(["data", "--out", str(out), "--reviews", "40", "--images-per-class", "2", "--epochs", "1"]) == 0
    assert len((out / "text" / "reviews.jsonl").read_text(encoding="utf-8").splitlines()) == 44
    assert len(_manifest_rows(out / "images")) == 2 * len(demo.IMAGE_CLASSES) + 1
    model = keras.saving.load_model(out / "image_model.keras", safe_mode=True)
    assert model.get_layer("features") is not None
