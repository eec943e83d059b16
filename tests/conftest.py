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

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real public data beside the project (`../shared/data`); skips where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (see the README's Tests section)")
    return SHARED_DATA
