"""Issue 3: every kind of broken input ends in the dead letters with a clear reason; the job goes on."""

import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from test_decode import encode, halves, png_header_only, with_exif_orientation

from pipeline.run import run
from transforms.embed.dofns import embed_isolating_failures
from transforms.results import read_embeddings, read_errors


def _images(folder: pathlib.Path) -> tuple[set, dict]:
    """Good images of every awkward kind, and bad files -> the error type each must get."""
    folder.mkdir()
    rgb = halves(40, 30)
    good = {
        "rgb.jpg": encode(rgb, "JPEG"),
        "UPPER.JPG": encode(rgb, "JPEG"),
        "one.png": encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        "thin.png": encode(Image.new("RGB", (1, 1000), (9, 200, 9)), "PNG"),
        "grey.png": encode(rgb.convert("L"), "PNG"),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "palette.gif": encode(rgb.convert("P"), "GIF"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "deep.png": encode(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG"),
        "rotated.jpg": with_exif_orientation(rgb, 6),
        "pic.bmp": encode(rgb, "BMP"),
        "pic.webp": encode(rgb, "WEBP"),
    }
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    good["animated.gif"] = buf.getvalue()
    jpeg, png = encode(rgb, "JPEG"), encode(rgb, "PNG")
    bad = {
        "empty.jpg": (b"", "EmptyImageFile"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "CorruptImage"),
        "truncated.png": (png[: len(png) // 2], "CorruptImage"),
        "random.png": (np.random.RandomState(1).bytes(500), "UnsupportedImageFormat"),
        "text.jpg": (b"hello, I am a text file\n", "UnsupportedImageFormat"),
        "image.tiff": (encode(rgb, "TIFF"), "UnsupportedImageFormat"),
        "bomb.png": (png_header_only(60000, 60000), "ImageTooLarge"),
    }
    for name, data in good.items():
        (folder / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    return set(good), {n: kind for n, (_, kind) in bad.items()}  # ids: paths relative to the glob's folder


@pytest.mark.slow
def test_every_awkward_image_is_embedded_or_dead_lettered(tmp_path, tiny_image_model):
    good, bad = _images(tmp_path / "images")
    manifest = tmp_path / "list.csv"
    manifest.write_text("uri,id\nimages/rgb.jpg,first\nimages/nowhere.jpg,ghost\nimages/rgb.jpg,first\n")
    out = tmp_path / "out"
    result = run(
        [
            "--output",
            str(out),
            "--image-model",
            str(tiny_image_model),
            "--image-input",
            str(tmp_path / "images" / "*"),
            "--image-input",
            str(manifest),
            "--image-id-field",
            "id",
            "--max-failed-fraction",
            "1",  # bad files on purpose
        ]
    )
    embedded = set(read_embeddings(str(out), "image").column("id").to_pylist())
    assert embedded == good | {"first"}
    errors = {r["id"]: r for r in read_errors(str(out)).to_pylist()}
    for path, kind in bad.items():
        assert errors[path]["error_type"] == kind, errors[path]
        assert errors[path]["stage"] == "decode"
        assert "\n" not in errors[path]["message"] and errors[path]["message"]
    assert "60000x60000" in errors["bomb.png"]["message"]
    assert errors["ghost"]["stage"] == "read" and "nowhere.jpg" in errors["ghost"]["message"]
    assert errors["first"]["error_type"] == "DuplicateId" and "list.csv" not in errors["first"]["message"]
    counts = result["counts"]["image"]
    assert counts["read"] == len(good) + len(bad) + 3
    assert counts["embedded"] == len(good) + 1 and counts["failed"] == len(bad) + 2 and counts["balanced"]


@pytest.mark.slow
def test_every_awkward_text_record_is_embedded_or_dead_lettered(tmp_path, tiny_text_model):
    folder = tmp_path / "text"
    folder.mkdir()
    lines = [
        json.dumps({"id": "ok1", "text": "good movie"}),
        '{"id": "broken", "text": "unterminated',
        json.dumps({"id": "notext", "body": "no text field"}),
        json.dumps({"id": "null", "text": None}),
        json.dumps({"id": "number", "text": 42}),
        json.dumps({"id": "blank", "text": " \t "}),
        json.dumps({"id": "punct", "text": "?!... --"}),
        json.dumps({"id": "huge", "text": "great " * 200_000}),  # ~1.2 MB: truncated by the model, not a failure
        json.dumps({"id": "ok1", "text": "a duplicate id"}),
        json.dumps({"id": "ok2", "text": "bad film"}),
    ]
    raw = ("\n".join(lines) + "\n").encode()
    raw += b'{"id": "latin1", "text": "caf\xe9"}\n'  # invalid UTF-8
    raw += b'{"id": "nul", "text": "a\x00b"}\n'
    (folder / "records.jsonl").write_bytes(raw)
    (folder / "table.csv").write_text('id,text\nc1,"fine, quoted"\nc2,one,too many\n')
    out = tmp_path / "out"
    result = run(
        [
            "--output",
            str(out),
            "--text-model",
            str(tiny_text_model),
            "--text-input",
            str(folder / "*"),
            "--max-failed-fraction",
            "1",
        ]
    )  # bad records on purpose
    embedded = set(read_embeddings(str(out), "text").column("id").to_pylist())
    assert embedded == {"ok1", "ok2", "huge", "c1"}
    errors = {(r["id"], r["error_type"]): r for r in read_errors(str(out)).to_pylist()}
    jsonl = folder / "records.jsonl"
    expected = {
        ("records.jsonl:2", "RecordError"): "malformed JSON",
        ("notext", "InvalidTextField"): "no 'text' field",
        ("null", "InvalidTextField"): "is null",
        ("number", "InvalidTextField"): "not a string",
        ("blank", "EmptyText"): "empty or only whitespace",
        ("punct", "EmptyText"): "no words left",
        ("ok1", "DuplicateId"): f"{jsonl}:1",
        ("records.jsonl:11", "RecordError"): "not valid utf-8",
        ("records.jsonl:12", "RecordError"): "NUL",
        ("table.csv:3", "RecordError"): "3 fields, the header has 2",
    }
    for key, fragment in expected.items():
        assert key in errors, (key, sorted(errors))
        assert fragment in errors[key]["message"]
    assert len(errors) == len(expected)
    counts = result["counts"]["text"]
    assert counts["read"] == counts["embedded"] + counts["failed"] == 14


def test_a_failing_record_is_isolated_not_its_batch():
    calls = []

    def embed(items):
        calls.append(len(items))
        if "poison" in items:
            raise RuntimeError("model blew up")
        return np.array([[len(i), 1.0] for i in items], dtype=np.float32)

    items = [f"item{i}" for i in range(16)]
    items[11] = "poison"
    vectors, errors = embed_isolating_failures(embed, items)
    assert [i for i, e in enumerate(errors) if e is not None] == [11]
    assert str(errors[11]) == "model blew up"
    good = [i for i in range(16) if i != 11]
    np.testing.assert_array_equal(vectors[good, 0], [len(items[i]) for i in good])
    assert len(calls) <= 1 + 2 * 4  # halving: at most two calls per level


def test_non_finite_outputs_are_per_record_errors():
    def embed(items):
        return np.array([[np.nan, 0.0] if i == "nan" else [1.0, 0.0] for i in items], dtype=np.float32)

    _, errors = embed_isolating_failures(embed, ["a", "nan", "b"])
    assert [type(e).__name__ if e else None for e in errors] == [None, "NonFiniteEmbedding", None]


@pytest.mark.slow
def test_one_failing_record_in_a_real_model_batch_is_isolated_in_the_job(tmp_path, tiny_text_model, monkeypatch):
    """A model that fails for one record: only that record is a dead letter, its batch-mates are embedded."""
    from transforms.embed import models

    real_embed = models.TextEmbedder.embed

    def fragile_embed(self, texts):
        if any("kaboom" in t for t in texts):
            raise ValueError("cannot embed kaboom")
        return real_embed(self, texts)

    monkeypatch.setattr(models.TextEmbedder, "embed", fragile_embed)
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": "kaboom" if i == 5 else f"good {i}"}) + "\n" for i in range(20)))
    out = tmp_path / "out"
    run(["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model)])
    assert sorted(read_embeddings(str(out), "text").column("id").to_pylist()) == sorted(f"r{i}" for i in range(20) if i != 5)
    errors = read_errors(str(out)).to_pylist()
    assert [(e["id"], e["stage"], e["message"]) for e in errors] == [("r5", "embed", "cannot embed kaboom")]


def test_an_oversized_image_file_is_a_dead_letter_not_read_whole(tmp_path, tiny_image_model):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "small.png")
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50_000)
    out = tmp_path / "out"
    result = run(
        [
            "--output",
            str(out),
            "--image-input",
            str(folder / "*"),
            "--image-model",
            str(tiny_image_model),
            "--max-image-bytes",
            "10000",
            "--max-failed-fraction",
            "1",
        ]
    )
    assert read_embeddings(str(out), "image").column("id").to_pylist() == ["small.png"]
    (error,) = read_errors(str(out)).to_pylist()
    assert error["id"] == "huge.png" and error["stage"] == "read" and error["error_type"] == "FileTooLarge"
    assert "10,000 bytes" in error["message"] and "--max-image-bytes" in error["message"]
    assert result["counts"]["image"]["balanced"]
