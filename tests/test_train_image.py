"""Tests of `train-image`: preprocessing inside the model, the saved contract, and that fine-tuning helps on real data."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from test_tools_support import run_cli

from pipeline.train import image as train_image
from pipeline.train.image import ImageTrainingConfig, base_network, list_labelled_images, report_path_for
from transforms.embed.models import NETWORKS, ImageModelSpec, load_image_embedder, preprocessing_layers

CIFAR = "images/cifar10-subset"
MOBILENET_WEIGHTS = "weights/mobilenet_2_5_224_tf_no_top.h5"


def _write_class_folders(root: pathlib.Path, per_class: int = 8, size: int = 40) -> pathlib.Path:
    """Two easy classes of small PNGs: reddish and bluish noise."""
    rng = np.random.default_rng(0)
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            pixels[..., channel] += 160
            Image.fromarray(pixels).save(root / label / f"{i:02d}.png")
    (root / "README.txt").write_text("not an image, not in a class folder")
    return root


# One network per keras.applications module: every preprocess_input the table knows.
ONE_PER_MODULE = sorted({n.module: name for name, n in NETWORKS.items()}.values())


@pytest.mark.parametrize("network", ONE_PER_MODULE)
def test_preprocessing_layers_reproduce_preprocess_input(network):
    pixels = np.random.default_rng(1).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    x = pixels
    for layer in preprocessing_layers(NETWORKS[network]):
        x = layer(x)
    expected = NETWORKS[network].preprocess()(pixels.copy())
    np.testing.assert_allclose(np.asarray(x), np.asarray(expected), rtol=1e-5, atol=1e-4)


def test_the_trainer_and_the_job_build_the_same_base_network(tmp_path):
    """`train-image --base MobileNet` trains on the features `run --image-model MobileNet` embeds with,
    for the same weights, alpha and size: same weights, same preprocessing, same vectors."""
    import keras

    keras.utils.set_random_seed(3)
    weights = tmp_path / "random.weights.h5"
    keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, include_top=False, pooling="avg", weights=None
    ).save_weights(weights)
    config = ImageTrainingConfig(
        input=str(tmp_path),
        base="MobileNet",
        output=str(tmp_path / "m.keras"),
        base_weights=str(weights),
        alpha=0.25,
        image_size=32,
    )
    base = base_network(config)
    embedder = load_image_embedder(
        ImageModelSpec("MobileNet", weights=str(weights), alpha=0.25, image_size=32, batch_size=3, backend="tensorflow")
    )
    assert embedder.input_size == (32, 32) and embedder.dimension == base.output.shape[-1]
    job_weights = embedder._model.get_weights()  # the pooled network the job runs
    assert len(job_weights) == len(base.get_weights())
    for ours, theirs in zip(base.get_weights(), job_weights):
        np.testing.assert_array_equal(ours, theirs)

    pixels = np.random.default_rng(4).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    x = pixels.astype(np.float32)
    for layer in preprocessing_layers(config.network):  # what the trainer puts in front of the base
        x = layer(x)
    np.testing.assert_allclose(np.asarray(base(x, training=False)), embedder.embed(pixels), rtol=1e-4, atol=1e-5)


def test_base_network_errors_name_the_trainers_flags(tmp_path):
    config = ImageTrainingConfig(
        input=str(tmp_path), base="MobileNet", output=str(tmp_path / "m.keras"), base_weights=str(tmp_path / "missing.h5")
    )
    with pytest.raises(ValueError, match="--image-weights .*missing.h5.*no such file"):
        base_network(config)


def test_images_are_listed_from_class_folders_and_from_a_manifest(tmp_path):
    root = _write_class_folders(tmp_path / "images", per_class=3)
    items = list_labelled_images(str(root))
    assert [label for _, label in items] == ["blue"] * 3 + ["red"] * 3
    assert all(uri.endswith(".png") for uri, _ in items)

    manifest = tmp_path / "images" / "train.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label"])
        writer.writerow(["red/00.png", "red"])
        writer.writerow([str(root / "blue" / "01.png"), "blue"])
        writer.writerow(["", "blue"])  # no uri: skipped
    assert list_labelled_images(str(manifest)) == [(str(root / "red" / "00.png"), "red"), (str(root / "blue" / "01.png"), "blue")]

    with pytest.raises(ValueError, match="no images in class subfolders"):
        list_labelled_images(str(tmp_path / "images" / "red"))


def test_bad_flags_fail_before_training(tmp_path, capsys):
    root = _write_class_folders(tmp_path / "images", per_class=2)
    assert run_cli(train_image, ["--input", str(root), "--base", "NoSuchNet", "--output", str(tmp_path / "m.keras")]) == 2
    assert "--base 'NoSuchNet': unknown network" in capsys.readouterr().err
    assert run_cli(train_image, ["--input", str(root), "--base", "MobileNet", "--output", str(tmp_path / "m.h5")]) == 2
    assert "--output must end in .keras" in capsys.readouterr().err
    assert (
        run_cli(
            train_image, ["--input", str(root), "--base", "ResNet50", "--alpha", "0.5", "--output", str(tmp_path / "m.keras")]
        )
        == 2
    )
    assert "--image-alpha" in capsys.readouterr().err


@pytest.mark.slow
def test_the_saved_model_is_safe_mode_loadable_and_the_job_embeds_with_its_embedding_layer(tmp_path, capsys):
    import keras

    from transforms.embed.models import ImageModelSpec, load_image_embedder

    root = _write_class_folders(tmp_path / "images")
    weights = tmp_path / "random.weights.h5"
    keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, include_top=False, pooling="avg", weights=None
    ).save_weights(weights)
    output = tmp_path / "models" / "colours.keras"

    code = run_cli(
        train_image,
        [
            "--input",
            str(root),
            "--base",
            "MobileNet",
            "--base-weights",
            str(weights),
            "--alpha",
            "0.25",
            "--image-size",
            "32",
            "--embedding-dim",
            "16",
            "--epochs",
            "2",
            "--fine-tune-layers",
            "6",
            "--fine-tune-epochs",
            "1",
            "--batch-size",
            "4",
            "--validation-split",
            "0.25",
            "--output",
            str(output),
        ],
    )

    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads(pathlib.Path(report_path_for(str(output))).read_text())
    assert report == printed
    assert report["classes"] == ["blue", "red"] and report["train_images"] == 12 and report["val_images"] == 4
    assert 0.0 <= report["val_accuracy"] <= 1.0 and report["fine_tune"]["epochs_run"] == 1
    assert report["fine_tune"]["layers_with_weights_unfrozen"] >= 1

    model = keras.saving.load_model(output, safe_mode=True)  # built-in layers only: no Lambda
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["pixels", "preprocess"] and names[-3:] == ["dropout", "embedding", "classes"]
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)
    assert model.output.shape[-1] == 2

    embedder = load_image_embedder(ImageModelSpec(model=str(output), batch_size=4))  # as `run --image-model` does
    assert embedder.model_name == "colours.keras#embedding"
    assert embedder.input_size == (32, 32) and embedder.dimension == 16
    pixels = np.random.default_rng(2).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    headless = keras.Model(model.inputs, model.get_layer("embedding").output)
    np.testing.assert_allclose(
        embedder.embed(pixels), headless.predict(pixels.astype(np.float32), verbose=0), rtol=1e-4, atol=1e-5
    )


def _cifar_manifest(path: pathlib.Path, root: pathlib.Path, first: int, stop: int) -> pathlib.Path:
    """A uri,label manifest of images number `first` to `stop - 1` of every class of the CIFAR-10 subset."""
    with (root / "MANIFEST.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if first <= int(pathlib.Path(r["path"]).stem) < stop]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label"])
        writer.writerows([str(root / r["path"]), r["label"]] for r in rows)
    return path


@pytest.mark.slow
@pytest.mark.shared_data
def test_fine_tuning_beats_the_base_network_on_held_out_cifar_images(shared_data, tmp_path, capsys):
    """Train on images 0-199 of each class, then compare precision@10 on images 200-249, never seen in training."""
    from pipeline.run import run
    from pipeline.tools.evaluate import evaluate_embeddings
    from pipeline.tools.store import open_embeddings

    root = shared_data / CIFAR
    weights = shared_data / MOBILENET_WEIGHTS
    train = _cifar_manifest(tmp_path / "train.csv", root, 0, 200)
    held_out = _cifar_manifest(tmp_path / "held_out.csv", root, 200, 250)
    model = tmp_path / "cifar.keras"

    code = run_cli(
        train_image,
        [
            "--input",
            str(train),
            "--base",
            "MobileNet",
            "--base-weights",
            str(weights),
            "--alpha",
            "0.25",
            "--image-size",
            "96",
            "--epochs",
            "15",
            "--fine-tune-layers",
            "100",
            "--fine-tune-epochs",
            "8",
            "--fine-tune-learning-rate",
            "3e-4",
            "--output",
            str(model),
        ],
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_images"] + report["val_images"] == 2000
    assert report["val_accuracy"] > 0.4  # chance is 0.1

    common = ["--image-input", str(held_out), "--passthrough", "label", "--image-batch-size", "50"]
    run(
        [
            "--output",
            str(tmp_path / "base"),
            "--image-model",
            "MobileNet",
            "--image-weights",
            str(weights),
            "--image-alpha",
            "0.25",
            "--image-size",
            "96",
            *common,
        ]
    )
    run(["--output", str(tmp_path / "tuned"), "--image-model", str(model), *common])  # no preprocessing flag needed
    base = evaluate_embeddings(open_embeddings(str(tmp_path / "base")), "label")
    tuned = evaluate_embeddings(open_embeddings(str(tmp_path / "tuned")), "label")

    print(
        f"\nheld-out precision@10: base {base['precision_at_10']:.4f}, fine-tuned {tuned['precision_at_10']:.4f}; "
        f"precision@1: base {base['precision_at_1']:.4f}, fine-tuned {tuned['precision_at_1']:.4f}; "
        f"val accuracy {report['val_accuracy']:.4f}"
    )
    assert base["evaluated"] == tuned["evaluated"] == 500
    assert tuned["model"] == "cifar.keras#embedding"
    assert base["precision_at_10"] > 0.25  # the pretrained base is far above chance already
    assert tuned["precision_at_10"] > base["precision_at_10"] + 0.05

    # An image query is embedded with each run's own model, read from its manifest: a stored image finds itself.
    from pipeline.tools import neighbors

    image = str(root / "cat" / "0210.jpg")
    capsys.readouterr()  # the runs' summaries
    for run_dir in ("base", "tuned"):
        assert run_cli(neighbors, ["--embeddings", str(tmp_path / run_dir), "--image", image, "-k", "3", "--json"]) == 0
        top = json.loads(capsys.readouterr().out.splitlines()[0])
        assert top["id"] == image and top["label"] == "cat" and top["score"] > 0.999
