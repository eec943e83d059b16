"""Test-wide setup: Keras and TensorFlow stay quiet and write nothing outside temp dirs."""

import os
import pathlib
import tempfile

import pytest

# Keras writes ~/.keras/keras.json on import; keep it (and any cache) in a temp dir.
_KERAS_HOME = tempfile.mkdtemp(prefix="keras-home-")
os.environ.setdefault("KERAS_HOME", _KERAS_HOME)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# As the CLI does first (importing `transforms` does not): TensorFlow's C++ start-up lines hidden, and
# OpenVINO's telemetry off before a test imports OpenVINO itself (pytest.importorskip("openvino")).
from transforms import quiet  # noqa: E402

quiet.install()

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real public data beside the project (`../shared/data`); skips where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (see the README's Tests section)")
    return SHARED_DATA


def make_tiny_text_model(path: pathlib.Path, sequence_length: int = 8, dim: int = 8) -> pathlib.Path:
    """A real, untrained model with the `train-text` layer contract (string input, `text_embedding`)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(1,), dtype="string", name="text")
    vectorize = keras.layers.TextVectorization(name="vectorize", max_tokens=50, output_sequence_length=sequence_length)
    vectorize.adapt(tf.constant([["good movie"], ["bad film"], ["great acting"], ["awful plot twist"]]))
    x = keras.layers.Embedding(50, dim, name="embedding", mask_zero=True)(vectorize(inp))
    x = keras.layers.GlobalAveragePooling1D(name="text_embedding")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="sentiment")(x)
    keras.Model(inp, out).save(path)
    return path


def make_tiny_image_model(path: pathlib.Path, size: int = 32) -> pathlib.Path:
    """A real, untrained little classifier: Rescaling -> Conv -> `features` -> `classes`."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    out = keras.layers.Dense(3, activation="softmax", name="classes")(x)
    keras.Model(inp, out).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> pathlib.Path:
    return make_tiny_text_model(tmp_path_factory.mktemp("models") / "text.keras")


@pytest.fixture(scope="session")
def tiny_image_model(tmp_path_factory) -> pathlib.Path:
    return make_tiny_image_model(tmp_path_factory.mktemp("models") / "image.keras")
