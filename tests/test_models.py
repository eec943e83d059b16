"""Model loading: every required network headless with its own preprocessing, and the weights paths."""

import re
import shutil

import numpy as np
import pytest

from pipeline.flags_map import MODEL_FLAGS, user_message
from transforms.embed.interface import Embedder, ModelSpec
from transforms.embed.models import (
    NETWORKS,
    ImageModelSpec,
    ModelConfigError,
    TextModelSpec,
    load_image_embedder,
    load_text_embedder,
    model_fields,
)

# The networks the issue names, each at a small input size so the test stays quick.
REQUIRED = {
    "MobileNet": 64,
    "MobileNetV2": 64,
    "MobileNetV3Small": 64,
    "MobileNetV3Large": 64,
    "ResNet50": 64,
    "VGG16": 32,
    "InceptionV3": 75,
    "EfficientNetB0": 64,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_network_is_headless_and_fed_with_its_own_preprocessing(name):
    import keras

    size = REQUIRED[name]
    embedder = load_image_embedder(ImageModelSpec(name, weights="none", image_size=size, batch_size=4))
    network = NETWORKS[name]
    keras.utils.set_random_seed(0)  # the same random weights the loader built
    reference = network.builder()(input_shape=(size, size, 3), include_top=False, pooling="avg", weights=None)
    pixels = np.random.RandomState(0).randint(0, 256, (3, size, size, 3)).astype(np.uint8)
    expected = reference(network.preprocess()(pixels.astype(np.float32)), training=False).numpy()
    got = embedder.embed(pixels)
    assert got.shape == (3, reference.output_shape[-1]) == (3, embedder.dimension)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert embedder.input_size == (size, size)
    assert f"keras.applications.{name}(" in embedder.model_name and len(embedder.model_sha256) == 64


def test_random_weights_are_seeded_so_every_worker_agrees():
    spec = ImageModelSpec("MobileNetV3Small", weights="none", image_size=32, batch_size=2)
    first, second = load_image_embedder(spec), load_image_embedder(spec)
    assert first.model_sha256 == second.model_sha256
    pixels = np.full((2, 32, 32, 3), 100, np.uint8)
    assert first.embed(pixels).tobytes() == second.embed(pixels).tobytes()


def test_a_short_last_batch_reuses_the_traced_function():
    spec = ImageModelSpec("MobileNetV3Small", weights="none", image_size=32, batch_size=4, backend="tensorflow")
    embedder = load_image_embedder(spec)
    pixels = np.random.RandomState(1).randint(0, 256, (7, 32, 32, 3)).astype(np.uint8)
    whole = embedder.embed(pixels)
    one_by_one = np.concatenate([embedder.embed(pixels[i : i + 1]) for i in range(7)])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5, atol=1e-6)
    assert embedder._forward.experimental_get_tracing_count() == 1


@pytest.mark.shared_data
def test_imagenet_weights_come_from_the_keras_cache_like_after_a_download(shared_data, tmp_path, monkeypatch):
    """`--image-weights imagenet` is Keras' own download; with the file already in Keras' cache (as
    after a first download on a machine with internet) it loads offline and equals the file path."""
    weights = shared_data / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
    if not weights.exists():
        pytest.skip("MobileNet weights missing from ../shared/data")
    cache = tmp_path / "keras-home" / "models"
    cache.mkdir(parents=True)
    shutil.copy(weights, cache / weights.name)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    import keras.src.utils.file_utils as file_utils

    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path / "keras-home"), raising=False)
    from_cache = load_image_embedder(ImageModelSpec("MobileNet", weights="imagenet", alpha=0.25, batch_size=2))
    from_file = load_image_embedder(ImageModelSpec("MobileNet", weights=str(weights), alpha=0.25, batch_size=2))
    pixels = np.random.RandomState(2).randint(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    np.testing.assert_array_equal(from_cache.embed(pixels), from_file.embed(pixels))
    assert "weights=imagenet" in from_cache.model_name


def _model_error(load, spec) -> ModelConfigError:
    with pytest.raises(ModelConfigError) as info:
        load(spec)
    return info.value


def test_wrong_kinds_of_model_are_named_by_field_and_the_cli_names_the_flag(tmp_path, tiny_text_model, tiny_image_model):
    """The model layer names its spec's fields; the command line (`pipeline.flags_map`) turns them into the flags."""
    cases = [
        (load_text_embedder, TextModelSpec(str(tiny_image_model)), "text.path", "--text-model .*is it an image model"),
        (
            load_image_embedder,
            ImageModelSpec(str(tiny_text_model), weights="none"),
            "image.model",
            "--image-model .*is it a text model",
        ),
        (
            load_image_embedder,
            ImageModelSpec("ResNet50", weights="none", alpha=0.5),
            "image.alpha",
            "--image-alpha 0.5: ResNet50 has no alpha",
        ),
        (
            load_image_embedder,
            ImageModelSpec("MobileNet", weights=str(tmp_path / "missing.h5")),
            "image.weights",
            "--image-weights .*no such file",
        ),
        (
            load_image_embedder,
            ImageModelSpec(str(tiny_image_model), layer="nope"),
            "image.layer",
            "--image-layer 'nope': no such layer",
        ),
        (
            load_text_embedder,
            TextModelSpec(str(tiny_text_model), layer="nope"),
            "text.layer",
            "--text-layer 'nope': no such layer",
        ),
        (load_text_embedder, TextModelSpec(str(tmp_path / "model.txt")), "text.path", "--text-model .*SavedModel directory"),
    ]
    for load, spec, key, cli_message in cases:
        error = _model_error(load, spec)
        assert error.key == key
        assert "--" not in str(error).split(":")[0]  # the library's own message names the spec field ...
        assert str(error).startswith(f"{type(spec).__name__}.{error.field} ")
        assert re.match(cli_message, user_message(error)), user_message(error)  # ... the CLI the flag
    unsafe = ModelConfigError("path", "m.keras", "custom code; pass {unsafe_loading} only if you trust this file", "text")
    assert user_message(unsafe) == "--text-model 'm.keras': custom code; pass --unsafe-model-loading only if you trust this file"
    assert str(unsafe).endswith("pass TextModelSpec.unsafe_loading only if you trust this file")
    with pytest.raises(ValueError, match="not a field"):
        ModelConfigError("--text-model", "x", "flags are the CLI's business", "text")


def test_every_model_field_that_has_a_flag_maps_to_a_real_run_flag():
    from pipeline.cli import run_help

    help_text = run_help()
    for key, flag in MODEL_FLAGS.items():
        modality, field = key.split(".")
        assert field in model_fields(modality), key
        assert f"{flag} " in help_text or f"{flag}\n" in help_text, flag
    for modality in ("text", "image"):  # every field but the seed (not a flag) has one
        assert {f for f in model_fields(modality) if f"{modality}.{f}" not in MODEL_FLAGS} <= {"seed"}


def test_specs_and_embedders_implement_the_model_interface(tiny_text_model):
    spec = TextModelSpec(str(tiny_text_model), batch_size=4)
    assert isinstance(spec, ModelSpec) and isinstance(ImageModelSpec("MobileNetV2"), ModelSpec)
    embedder = spec.load_model()
    assert isinstance(embedder, Embedder) and embedder.spec == spec
    vectors = embedder.embed(["good movie", "bad film"])
    assert vectors.shape == (2, embedder.dimension) and vectors.dtype == np.float32
    assert embedder.model_name == "text.keras" and len(embedder.model_sha256) == 64


def test_user_classifier_defaults_to_the_layer_feeding_its_last_layer(tiny_image_model):
    embedder = load_image_embedder(ImageModelSpec(str(tiny_image_model), weights="none"))
    assert embedder.model_name == "image.keras#features" and embedder.dimension == 6
