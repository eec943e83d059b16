"""The whole job on the DirectRunner: real files in, real Parquet out, compared with the models."""

import json
import pathlib
import socket
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.run import main, run
from transforms.results import MANIFEST_NAME, IncompleteOutputError, read_embeddings, read_errors, read_manifest
from transforms.sinks.folder import RUNNING_NAME


def _write_text_inputs(folder: pathlib.Path) -> dict:
    """A few records in every text format; returns {id: text} of the good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    good = {}
    with open(folder / "a.jsonl", "w") as f:
        for i in range(5):
            text = f"good movie number {i}" if i % 2 else f"bad film {i}"
            good[f"j{i}"] = text
            f.write(json.dumps({"id": f"j{i}", "text": text, "label": i % 2}) + "\n")
        f.write("{not json\n")  # line 6: malformed
        f.write(json.dumps({"id": "empty", "text": "   ", "label": 0}) + "\n")
        f.write(json.dumps({"id": "nulltext", "text": None, "label": 0}) + "\n")
    with open(folder / "b.csv", "w") as f:
        f.write("id,text,label\n")
        f.write('c1,"great acting, awful plot",1\n')
        f.write("c2,too,many,fields\n")
        good["c1"] = "great acting, awful plot"
    with open(folder / "c.txt", "w") as f:
        f.write("plain line one\nplain line two\n")
    good["c.txt:1"] = "plain line one"  # path ids: relative to the glob's folder
    good["c.txt:2"] = "plain line two"
    pq.write_table(pa.table({"id": ["p1"], "text": ["great film"], "label": ["1"]}), folder / "d.parquet")
    good["p1"] = "great film"
    return good


def _write_images(folder: pathlib.Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    names = []
    for i in range(5):
        path = folder / f"img{i}.png" if i % 2 else folder / f"img{i}.jpg"
        Image.fromarray((rng.rand(40 + i, 30, 3) * 255).astype("uint8")).save(path)
        names.append(str(path))
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return names


def _text_embedder(path):
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(path, safe_mode=True)
    sub = keras.Model(model.inputs, model.get_layer("text_embedding").output)
    return lambda texts: sub(tf.constant([[t] for t in texts])).numpy()


def _image_embedder(path, size=32):
    import keras

    model = keras.saving.load_model(path, safe_mode=True)
    sub = keras.Model(model.inputs, model.get_layer("features").output)
    from transforms.embed.decode import decode_image

    def embed(paths):
        pixels = np.stack([decode_image(pathlib.Path(p).read_bytes(), (size, size)) for p in paths])
        return sub(pixels.astype("float32")).numpy()

    return embed


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_text_model, tiny_image_model):
    root = tmp_path_factory.mktemp("job")
    good_texts = _write_text_inputs(root / "text")
    images = _write_images(root / "images")
    manifest_csv = root / "manifest.csv"
    manifest_csv.write_text("uri,label,key\nimages/img0.jpg,cat,k0\nimages/img1.png,dog,k1\nimages/missing.jpg,cat,k9\n")
    out = root / "out"
    result = run(
        [
            "--output",
            str(out),
            "--text-input",
            str(root / "text" / "*"),
            "--text-model",
            str(tiny_text_model),
            "--image-input",
            str(root / "images" / "*"),
            "--image-input",
            str(manifest_csv),
            "--image-id-field",
            "key",
            "--image-model",
            str(tiny_image_model),
            "--passthrough",
            "label",
            "--max-failed-fraction",
            "1",  # bad records on purpose: a third of them
        ]
    )
    return dict(root=root, out=out, good_texts=good_texts, images=images, manifest=result)


def test_text_embeddings_equal_the_model_called_directly(finished_run, tiny_text_model):
    table = read_embeddings(str(finished_run["out"]), "text")
    good = finished_run["good_texts"]
    assert sorted(table.column("id").to_pylist()) == sorted(good)
    ids = table.column("id").to_pylist()
    matrix = table.column("embedding").combine_chunks().values.to_numpy().reshape(len(ids), -1)
    expected = _text_embedder(tiny_text_model)([good[i] for i in ids])
    np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-6)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    labels = dict(zip(ids, table.column("label").to_pylist()))
    assert labels["j1"] == "1" and labels["c1"] == "1" and labels["p1"] == "1"
    assert labels["c.txt:1"] is None  # plain lines have no label
    lines = dict(zip(ids, table.column("line").to_pylist()))
    assert lines["j3"] == 4 and lines["c1"] == 2


def test_image_embeddings_ids_and_passthrough(finished_run, tiny_image_model):
    table = read_embeddings(str(finished_run["out"]), "image")
    rows = {r["id"]: r for r in table.to_pylist()}
    # glob ids are paths relative to the glob's folder; manifest ids come from --image-id-field
    by_path = {p: pathlib.Path(p).name for p in finished_run["images"]}
    assert set(by_path.values()) | {"k0", "k1"} == set(rows)
    assert all(rows[name]["source"] == path for path, name in by_path.items())
    assert rows["k0"]["label"] == "cat" and rows["k1"]["label"] == "dog"
    assert rows["k0"]["source"].endswith("images/img0.jpg")
    assert rows["k0"]["content_sha256"] == rows["img0.jpg"]["content_sha256"]
    embed = _image_embedder(tiny_image_model)
    paths = finished_run["images"]
    expected = embed(paths)
    got = np.array([rows[by_path[p]]["embedding"] for p in paths], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert {r["model"] for r in rows.values()} == {"image.keras#features"}


def test_dead_letters_and_counts_add_up(finished_run):
    out = str(finished_run["out"])
    errors = {(r["id"], r["stage"], r["error_type"]) for r in read_errors(out).to_pylist()}
    assert ("a.jsonl:6", "read", "RecordError") in errors
    assert ("empty", "preprocess", "EmptyText") in errors
    assert ("nulltext", "read", "InvalidTextField") in errors
    assert ("b.csv:3", "read", "RecordError") in errors
    assert ("broken.jpg", "decode", "UnsupportedImageFormat") in errors
    assert ("k9", "read", "FileNotFoundError") in errors
    manifest = read_manifest(out)
    text, image = manifest["counts"]["text"], manifest["counts"]["image"]
    assert text == {"read": 13, "embedded": 9, "failed": 4, "skipped": 0, "balanced": True}
    assert image == {"read": 9, "embedded": 7, "failed": 2, "skipped": 0, "balanced": True}
    assert manifest["models"]["text"]["dimension"] == 8
    assert len(manifest["models"]["image"]["sha256"]) == 64
    assert finished_run["manifest"]["model_loads"] == {"text_model_loads": 1, "image_model_loads": 1}


def test_output_metadata_names_the_model(finished_run):
    files = sorted((finished_run["out"] / "text").glob("*.parquet"))
    metadata = pq.read_schema(files[0]).metadata
    assert metadata[b"dimension"] == b"8" and metadata[b"model"] == b"text.keras"
    assert metadata[b"normalized"] == b"false"


def test_rerun_into_same_folder_has_one_row_per_record(tmp_path, tiny_text_model):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": f"good {i}"}) + "\n" for i in range(30)))
    out = tmp_path / "out"
    argv = ["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model)]
    first = run(argv)
    # leftovers of a run killed while it finalised more shards (its manifest deleted, its marker of a
    # dead process left) must not survive the rerun
    (out / MANIFEST_NAME).unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / RUNNING_NAME).write_text(json.dumps({"run_id": "killed", "host": socket.gethostname(), "pid": dead.pid}))
    (out / "text" / "part-00007-of-00009.parquet").write_bytes(b"stale")
    second = run(argv + ["--normalize"])
    table = read_embeddings(str(out), "text")
    assert sorted(table.column("id").to_pylist()) == sorted(f"r{i}" for i in range(30))
    assert not (out / "text" / "part-00007-of-00009.parquet").exists()
    assert first["run_id"] != second["run_id"]
    norms = np.linalg.norm(table.column("embedding").combine_chunks().values.to_numpy().reshape(30, -1), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_reader_refuses_a_folder_without_manifest(tmp_path, tiny_text_model):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "good"}) + "\n")
    out = tmp_path / "out"
    run(["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model)])
    (out / MANIFEST_NAME).unlink()
    with pytest.raises(IncompleteOutputError, match="did not finish"):
        read_embeddings(str(out), "text")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--text-input", "{data}", "--text-model", "{tmp}/nope.keras"], "--text-model"),
        (["--text-input", "{data}", "--text-model", "{image_model}"], "--text-model"),
        (["--image-input", "{data}", "--image-model", "{text_model}"], "--image-model"),
        (["--image-input", "{data}", "--image-model", "{image_model}", "--image-layer", "nope"], "--image-layer 'nope'"),
        (["--text-input", "{tmp}/none-*.jsonl", "--text-model", "{text_model}"], "matches no file"),
        (["--image-input", "{data}", "--image-model", "MobileNetV9"], "--image-model 'MobileNetV9'"),
        (["--image-input", "{data}", "--image-model", "mobilenet"], "did you mean MobileNet"),
        (["--text-input", "{data}"], "--text-input needs --text-model"),
        (["--text-input", "{data}", "--text-model", "{text_model}", "--text-batch-size", "0"], "--text-batch-size"),
        (["--text-input", "{data}", "--text-model", "{text_model}", "--no-such-flag", "1"], "--no-such-flag"),
    ],
)
def test_configuration_errors_name_the_flag_and_write_nothing(tmp_path, capsys, tiny_text_model, tiny_image_model, argv, message):
    data = tmp_path / "in.jsonl"  # text records, and an image manifest (its `uri`)
    data.write_text(json.dumps({"id": "a", "text": "good", "uri": "a.jpg"}) + "\n")
    values = dict(data=str(data), tmp=str(tmp_path), text_model=str(tiny_text_model), image_model=str(tiny_image_model))
    out = tmp_path / "out"
    code = main(["--output", str(out)] + [a.format(**values) for a in argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_output_is_a_configuration_error(tmp_path, capsys, tiny_text_model):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "good"}) + "\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["--output", str(blocker / "out"), "--text-input", str(data), "--text-model", str(tiny_text_model)])
    assert code == 2
    assert "--output" in capsys.readouterr().err


def test_detached_run_returns_at_once_and_the_pipeline_still_writes_the_manifest(tmp_path, capsys, tiny_text_model):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "good"}) + "\n")
    out = tmp_path / "out"
    # The local runner finishes inside run(); what --detach changes is that run() neither waits nor reads back.
    assert run(["--output", str(out), "--text-input", str(data), "--text-model", str(tiny_text_model), "--detach=true"]) == {}
    assert "Submitted run" in capsys.readouterr().out
    assert read_manifest(str(out))["counts"]["text"]["embedded"] == 1
