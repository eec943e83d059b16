"""Issue 20 item 3: any text encoder in the job: a SavedModel directory or a string-input `.keras`
model (not made by `train-text`), cut at `--text-layer`.

The encoders are built here (nothing is downloaded): the job's vectors must be bit-identical to
calling the model directly on the same strings, the manifest must carry the model's identity (the
sha256 of its files), and an encoder that cannot give one float vector per string must fail at
launch with one line naming `--text-model` / `--text-layer` (exit 2), before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest

from gcs_emulator import gcs_emulator  # noqa: F401 - the fixture
from pipeline.run import main as run_main
from transforms.embed.models import TextModelSpec, load_text_embedder
from transforms.results import read_embeddings, read_errors, read_manifest

TEXTS = [
    "the special effects are stunning",
    "a dreadful waiter and cold soup",
    "Great acting, weak plot",
    "stunning views from the hotel",
    "the camera is dreadful in low light",
    "an ordinary film",
    "ünïcödé text is still text",
    "one",
]
DIM = 6


def _write_records(path, texts):
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _dir_sha256(folder) -> str:
    """The identity the job gives a SavedModel, computed independently: every file's relative path and sha256."""
    digest = hashlib.sha256()
    files = sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)
    for relative in files:
        with open(os.path.join(folder, relative), "rb") as handle:
            digest.update(f"{relative}\0{hashlib.sha256(handle.read()).hexdigest()}\n".encode())
    return digest.hexdigest()


def _bag_of_words_module(output: str = "good"):
    """A tf.Module: hashed words -> a table row each -> their mean, one float vector per string.
    `output`: "good" (float (n, DIM)), "rank3" (a padded (n, words, DIM)), "ints" (int64 (n, 1)),
    "floats_in" (takes float32 (n, 4), not strings)."""
    import tensorflow as tf

    class Encoder(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.Variable(np.random.RandomState(0).normal(size=(97, DIM)).astype(np.float32))

        def _rows(self, texts):
            words = tf.strings.split(tf.strings.lower(texts))
            return tf.gather(self.table, tf.strings.to_hash_bucket_fast(words, 97))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def good(self, texts):
            rows = self._rows(texts)
            return {"embedding": tf.reduce_mean(rows, axis=1), "norm": tf.norm(tf.reduce_mean(rows, axis=1), axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def rank3(self, texts):
            return {"tokens": self._rows(texts).to_tensor()}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def ints(self, texts):
            return {"ids": tf.strings.to_hash_bucket_fast(tf.reshape(texts, [-1, 1]), 97)}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def floats_in(self, x):
            return {"embedding": x * 2.0}

    module = Encoder()
    return module, getattr(module, output)


def _save_module(path, output: str = "good"):
    import tensorflow as tf

    module, function = _bag_of_words_module(output)
    tf.saved_model.save(module, str(path), signatures={"serving_default": function})
    return module, function


def _string_keras_model(path):
    """TextVectorization -> Embedding -> GlobalAveragePooling1D -> Dense "proj" -> a head: not a
    `train-text` model (no `text_embedding` layer; a rank-1 string input)."""
    import keras

    keras.utils.set_random_seed(0)
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=7, name="vectorize")
    vectorize.adapt(TEXTS)
    inputs = keras.Input(shape=(), dtype="string", name="sentence")
    x = keras.layers.Embedding(40, 8, name="words")(vectorize(inputs))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    x = keras.layers.Dense(5, name="proj")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.save(path)
    return model


def _run(tmp_path, capsys, *flags) -> tuple[int, str]:
    data = _write_records(tmp_path / "in.jsonl", TEXTS)
    code = run_main(["--output", str(tmp_path / "out"), "--text-input", str(data), *map(str, flags)])
    return code, capsys.readouterr().err


def _job_vectors(out) -> tuple[list, np.ndarray]:
    table = read_embeddings(str(out), "text")
    ids = table.column("id").to_pylist()
    order = np.argsort([int(i[1:]) for i in ids])
    return [ids[i] for i in order], np.stack([np.asarray(v, dtype=np.float32) for v in table.column("embedding").to_pylist()])[
        order
    ]


def test_the_job_embeds_with_a_savedmodel_bit_identical_to_calling_it(tmp_path, capsys):
    import tensorflow as tf

    model_dir = tmp_path / "encoder"
    _, function = _save_module(model_dir)
    expected = function(tf.constant(TEXTS))["embedding"].numpy()  # the model itself, before saving
    code, err = _run(tmp_path, capsys, "--text-model", model_dir, "--text-batch-size", 3)
    assert code == 0, err
    ids, vectors = _job_vectors(tmp_path / "out")
    assert ids == [f"r{i}" for i in range(len(TEXTS))] and read_errors(str(tmp_path / "out")).num_rows == 0
    assert vectors.tobytes() == expected.tobytes()  # batches of 3 in the job, one call here: bit for bit
    text = read_manifest(str(tmp_path / "out"))["models"]["text"]
    assert text["sha256"] == _dir_sha256(model_dir) and text["dimension"] == DIM and text["name"] == "encoder"
    table = read_embeddings(str(tmp_path / "out"), "text")
    assert set(table.column("model_sha256").to_pylist()) == {_dir_sha256(model_dir)}


def test_a_string_input_keras_model_is_cut_at_the_named_layer(tmp_path, capsys):
    import keras
    import tensorflow as tf

    path = tmp_path / "sentences.keras"
    model = _string_keras_model(path)
    cut = keras.Model(model.inputs, model.get_layer("proj").output)
    expected = cut(tf.constant(TEXTS), training=False).numpy()
    code, err = _run(tmp_path, capsys, "--text-model", path, "--text-layer", "proj")
    assert code == 0, err
    _, vectors = _job_vectors(tmp_path / "out")
    assert vectors.shape == (len(TEXTS), 5) and vectors.tobytes() == expected.tobytes()
    text = read_manifest(str(tmp_path / "out"))["models"]["text"]
    files = hashlib.sha256(path.read_bytes()).hexdigest()
    # the file's sha256 with the layer folded in: another layer of the same file is another model
    assert text["sha256"] == hashlib.sha256(f"{files}+layer=proj".encode()).hexdigest()
    assert text["name"] == "sentences.keras#proj"


def test_a_named_savedmodel_output_and_a_failing_record_are_handled_like_any_model(tmp_path):
    import tensorflow as tf

    model_dir = tmp_path / "encoder"
    _, function = _save_module(model_dir)
    embedder = load_text_embedder(TextModelSpec(str(model_dir), batch_size=2, layer="embedding"))
    assert embedder.dimension == DIM and embedder.model_name == "encoder#embedding"
    texts = ["stunning", "   ", "dreadful camera"]  # only whitespace: no words, a mean of nothing (NaN)
    got = embedder.embed(texts)
    expected = function(tf.constant(texts))["embedding"].numpy()
    assert got.tobytes() == expected.tobytes()
    assert np.isnan(got[1]).all()  # the job makes it a NonFiniteEmbedding dead letter (dofns.embed_isolating_failures)


@pytest.mark.parametrize(
    "case, flags, message",
    [
        (
            "rank3",
            [],
            r"error: --text-model '.*encoder': has no output of one float vector per text .*tokens \(float32 \(None, None, 6\)\).*--text-layer",
        ),
        (
            "rank3",
            ["--text-layer", "tokens"],
            r"error: --text-layer 'tokens': output is tokens \(float32 .*expected one float vector per text",
        ),
        ("ints", [], r"error: --text-model '.*encoder': has no output of one float vector per text .*ids \(int64"),
        ("floats_in", [], r"error: --text-model '.*encoder': takes float32 input 'x', not a batch of strings"),
        (
            "good",
            ["--text-layer", "nope"],
            r"error: --text-layer 'nope': no such output .*outputs are: embedding \(float32 \(None, 6\)\), norm",
        ),
    ],
)
def test_a_savedmodel_that_cannot_give_a_vector_per_string_fails_at_launch(tmp_path, capsys, case, flags, message):
    _save_module(tmp_path / "encoder", case)
    code, err = _run(tmp_path, capsys, "--text-model", tmp_path / "encoder", *flags)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and re.match(message, lines[0]), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--text-layer", "words"], r"error: --text-layer 'words': layer 'words' outputs float32 of shape \(None, 7, 8\)"),
        (["--text-layer", "vectorize"], r"error: --text-layer 'vectorize': layer 'vectorize' outputs int64"),
        ([], r"error: --text-model '.*sentences.keras': has no layer named 'text_embedding'.*--text-layer"),
    ],
)
def test_a_keras_layer_that_is_not_one_float_vector_per_string_fails_at_launch(tmp_path, capsys, flags, message):

    _string_keras_model(tmp_path / "sentences.keras")
    code, err = _run(tmp_path, capsys, "--text-model", tmp_path / "sentences.keras", *flags)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and re.match(message, lines[0]), err


def test_an_image_model_or_a_folder_without_a_savedmodel_is_not_a_text_encoder(tmp_path, capsys, tiny_image_model):

    code, err = _run(tmp_path, capsys, "--text-model", tiny_image_model)
    assert code == 2 and re.match(
        r"error: --text-model '.*image.keras': takes float32 of shape \(None, 32, 32, 3\), not a batch of strings", err
    )
    (tmp_path / "empty").mkdir()
    code, err = _run(tmp_path, capsys, "--text-model", tmp_path / "empty")
    assert code == 2 and "or a SavedModel directory (holding saved_model.pb)" in err and err.startswith("error: --text-model ")


def test_a_savedmodel_on_gcs_is_copied_through_beams_filesystems(tmp_path, gcs_emulator):
    """TensorFlow's own gs:// reader ignores the storage emulator: the folder comes through Beam's
    FileSystems (as a .keras file does), and is the same model with the same identity."""
    local = tmp_path / "encoder"
    _save_module(local)
    remote = gcs_emulator.upload_tree(local, "models", "encoder")
    texts = TEXTS[:3]
    here = load_text_embedder(TextModelSpec(str(local), batch_size=2))
    there = load_text_embedder(TextModelSpec(remote, batch_size=2))
    assert there.model_sha256 == here.model_sha256 == _dir_sha256(local) and there.model_name == "encoder"
    assert there.embed(texts).tobytes() == here.embed(texts).tobytes()
