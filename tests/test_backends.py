"""Issue 10: the OpenVINO backend gives TensorFlow's embeddings, falls back where it cannot, and says so."""

import json
import re
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_models import REQUIRED

from pipeline.flags_map import user_message
from pipeline.run import main, run
from transforms.embed.models import ImageModelSpec, ModelConfigError, load_image_embedder
from transforms.results import read_embeddings

pytest.importorskip("openvino", reason="the openvino package is not installed (requirements.txt pins it)")


def _compare(spec: ImageModelSpec, pixels: np.ndarray):
    """(max relative difference, min cosine) of OpenVINO f32 against TensorFlow on the same spec."""
    import dataclasses

    tf_ = load_image_embedder(dataclasses.replace(spec, backend="tensorflow"))
    ov_ = load_image_embedder(dataclasses.replace(spec, backend="openvino"))
    assert (tf_.backend, ov_.backend, ov_.precision) == ("tensorflow", "openvino", "f32")
    assert ov_.model_sha256 == tf_.model_sha256  # same model: an incremental run reuses across backends
    a, b = tf_.embed(pixels), ov_.embed(pixels)
    relative = float(np.abs(a - b).max() / np.abs(a).max())
    cosine = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())
    return relative, cosine, ov_


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_openvino_gives_tensorflows_embeddings_for_every_network(name):
    size = REQUIRED[name]
    pixels = np.random.RandomState(0).randint(0, 256, (5, size, size, 3)).astype(np.uint8)  # 4 + a short batch
    relative, cosine, embedder = _compare(ImageModelSpec(name, weights="none", image_size=size, batch_size=4), pixels)
    assert relative <= 1e-4 and cosine >= 0.99999, (relative, cosine)
    assert embedder.backend_details["convert_seconds"] > 0 and embedder.concurrent_calls >= 1
    from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils

    assert convert_impl.tm is telemetry_stub and telemetry_utils.tm is telemetry_stub  # no usage reports sent


def _classifier(path, size=32):
    """A user's classifier: a small MobileNetV3 body with BatchNorm and hard-swish, a Dense head."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((size, size, 3))
    body = keras.applications.MobileNetV3Small(
        input_shape=(size, size, 3), include_top=False, weights=None, include_preprocessing=True
    )
    x = body(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pooled")(x)
    x = keras.layers.Dense(16, activation="relu", name="features")(x)
    out = keras.layers.Dense(4, activation="softmax", name="classes")(x)
    keras.Model(inp, out).save(path)
    return path


def test_openvino_gives_tensorflows_embeddings_for_a_cut_keras_classifier(tmp_path, tiny_image_model):
    model = str(_classifier(tmp_path / "classifier.keras"))
    pixels = np.random.RandomState(1).randint(0, 256, (7, 32, 32, 3)).astype(np.uint8)
    for spec in (
        ImageModelSpec(model, weights="none", batch_size=4),  # default: feeds the head
        ImageModelSpec(model, weights="none", layer="pooled", batch_size=4),  # cut earlier
        ImageModelSpec(str(tiny_image_model), weights="none", batch_size=4),
    ):  # conftest's classifier
        relative, cosine, embedder = _compare(spec, pixels)
        assert relative <= 1e-4 and cosine >= 0.99999, (spec.layer, relative, cosine)
    assert embedder.model_name == "image.keras#features"


def _pyfunc_classifier(path):
    """A classifier with a layer OpenVINO cannot convert: it calls NumPy through tf.numpy_function (PyFunc)."""
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="test_backends")
    class NumpySquare(keras.layers.Layer):
        def call(self, x):
            return tf.ensure_shape(tf.numpy_function(lambda a: np.square(a).astype(np.float32), [x], tf.float32), x.shape)

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = NumpySquare(name="square")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    keras.Model(inp, keras.layers.Dense(2, name="classes")(x)).save(path)
    return path


def test_a_network_that_does_not_convert_runs_on_tensorflow_with_a_note(tmp_path):
    model = str(_pyfunc_classifier(tmp_path / "pyfunc.keras"))
    embedder = load_image_embedder(ImageModelSpec(model, weights="none", batch_size=2))
    assert embedder.backend == "tensorflow" and embedder.precision == "f32"
    note = embedder.backend_details["backend_note"]
    assert "does not convert to OpenVINO" in note and "PyFunc" in note and "pyfunc.keras#features" in note
    assert embedder.embed(np.full((3, 32, 32, 3), 7, np.uint8)).shape == (3, 4)
    with pytest.raises(ModelConfigError) as info:
        load_image_embedder(ImageModelSpec(model, weights="none", batch_size=2, backend="openvino"))
    assert re.search(
        "--image-backend 'openvino'.*PyFunc.*use --image-backend tensorflow or auto", user_message(info.value)
    )  # as the command line says it


def test_without_the_openvino_package_auto_runs_tensorflow_and_openvino_is_an_error(monkeypatch, tiny_image_model):
    # A forced failure, stated plainly: the import of `openvino` is made to fail as on a machine without it.
    monkeypatch.setitem(sys.modules, "openvino", None)
    embedder = load_image_embedder(ImageModelSpec(str(tiny_image_model), weights="none", batch_size=2))
    assert embedder.backend == "tensorflow" and "OpenVINO is not installed" in embedder.backend_details["backend_note"]
    with pytest.raises(ModelConfigError) as info:
        load_image_embedder(ImageModelSpec(str(tiny_image_model), weights="none", batch_size=2, backend="openvino"))
    assert re.search("--image-backend 'openvino'.*not installed", user_message(info.value))  # as the command line says it


def test_bf16_is_opt_in_a_different_model_identity_and_close(tiny_image_model):
    base = load_image_embedder(ImageModelSpec(str(tiny_image_model), weights="none", batch_size=4, backend="openvino"))
    bf16 = load_image_embedder(ImageModelSpec(str(tiny_image_model), weights="none", batch_size=4, precision="bf16"))
    assert base.precision == "f32"
    if bf16.precision != "bf16":
        pytest.skip(f"this CPU has no bf16: OpenVINO runs {bf16.precision}")
    assert bf16.model_sha256 != base.model_sha256 and bf16.backend_details["weights_sha256"] == base.model_sha256
    pixels = np.random.RandomState(2).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    a, b = base.embed(pixels), bf16.embed(pixels)
    assert ((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min() > 0.9
    with pytest.raises(ModelConfigError) as info:
        load_image_embedder(ImageModelSpec(str(tiny_image_model), weights="none", precision="bf16", backend="tensorflow"))
    assert re.search("--image-precision 'bf16'", user_message(info.value))  # as the command line says it


def _images(folder, n=5):
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (40, 30), (i * 50, 100, 200 - i * 30)).save(folder / f"{i}.png")
    return str(folder / "*.png")


def test_manifest_and_parquet_record_the_backend_and_a_backend_change_is_the_same_model(tmp_path, tiny_image_model):
    pattern = _images(tmp_path / "img")
    common = ["--image-input", pattern, "--image-model", str(tiny_image_model)]
    first = run(["--output", str(tmp_path / "ov")] + common)  # default: auto
    details = first["models"]["image"]["details"]
    assert details["backend"] == "openvino" and details["precision"] == "f32" and details["backend_requested"] == "auto"
    assert details["convert_seconds"] > 0 and details["openvino_version"]
    assert first["options"]["image_model"]["backend"] == "openvino"  # what the workers were told to run
    assert first["model_loads"] == {"image_model_loads": 1}
    metadata = pq.read_schema(next((tmp_path / "ov" / "image").glob("*.parquet"))).metadata
    assert metadata[b"backend"] == b"openvino" and metadata[b"precision"] == b"f32"

    # switching backend at f32 is the same model: the incremental run re-embeds nothing
    second = run(
        ["--output", str(tmp_path / "tf"), "--image-backend", "tensorflow", "--incremental-from", str(tmp_path / "ov")] + common
    )
    assert second["models"]["image"]["details"]["backend"] == "tensorflow"
    assert second["counts"]["image"] == {"read": 5, "embedded": 0, "failed": 0, "skipped": 5, "removed": 0, "balanced": True}
    third = run(["--output", str(tmp_path / "tf2"), "--image-backend", "tensorflow"] + common)
    ov = read_embeddings(str(tmp_path / "ov"), "image").sort_by("id")
    tf_ = read_embeddings(str(tmp_path / "tf2"), "image").sort_by("id")
    a = np.stack(ov.column("embedding").to_numpy(zero_copy_only=False))
    b = np.stack(tf_.column("embedding").to_numpy(zero_copy_only=False))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    assert json.loads((tmp_path / "tf2" / "_MANIFEST.json").read_text())["models"]["image"]["details"]["backend"] == "tensorflow"
    assert third["counts"]["image"]["embedded"] == 5


def test_bad_backend_flags_are_named(tmp_path, capsys, tiny_image_model):
    pattern = _images(tmp_path / "img", 1)
    argv = ["--output", str(tmp_path / "o"), "--image-input", pattern, "--image-model", str(tiny_image_model)]
    assert main(argv + ["--image-backend", "tensorflow", "--image-precision", "bf16"]) == 2
    assert "--image-precision bf16 needs --image-backend openvino" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv + ["--image-backend", "onnx"])
    assert "--image-backend" in capsys.readouterr().err
