"""The `train-image` command: transfer-learn an image classifier whose `embedding` layer the job then uses.

The saved `.keras` file is a functional model with built-in layers only (safe-mode loadable):

    pixels (h, w, 3) float, 0..255
      -> preprocess: the base network's own `preprocess_input`, as built-in layers (Rescaling,
         Normalization, or a fixed 1x1 Conv2D for the RGB->BGR "caffe" networks), so the model
         takes raw pixels and `run --image-model MODEL.keras` needs no --image-preprocess
      -> base: a headless Keras Applications network with average pooling (called in inference
         mode, so its BatchNormalization statistics never move)
      -> dropout -> embedding (Dense, ReLU) -> classes (Dense, softmax)

`run --image-model MODEL.keras` embeds with the layer that feeds the last one: `embedding`.

Training runs in two phases. First the base is frozen: its pooled features are computed once per
image and the head (dropout, embedding, classes) is trained on them, with early stopping on the
validation loss. Then, with `--fine-tune-layers N`, the top N layers of the base (its
BatchNormalization layers excepted) are unfrozen and the whole model is trained end to end on the
pixels, with random horizontal flips, at the low `--fine-tune-learning-rate`; if that ends with
a higher validation loss than before it, the model from before it is kept (and the report says so).

Input: a folder of class subfolders (the label is the subfolder's name; local or gs://; the images
below each at any depth, as `run --image-input DIR` reads a folder: `image_read.IMAGE_EXTENSIONS`,
any case; other files, such as a manifest beside them, are not read), or a
manifest (.csv, .tsv, .jsonl, .parquet) with a uri and a label column (relative uris are resolved
against the manifest's folder). Images are decoded exactly as the job decodes them
(`transforms.embed.decode.decode_image`: upright, RGB, stretched to the input size) and held in memory
as uint8. The split is stratified and seeded. The report, with the validation accuracy, goes
beside the model as `MODEL.training.json`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import logging
import operator
import os
import time
from typing import Optional, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.flags_map import TRAIN_IMAGE_FLAGS, user_message
from pipeline.tools.common import ToolError
from pipeline.train.common import (
    OUTPUT_FLAG,
    TrainFlag,
    add_flags,
    check_at_least,
    check_output,
    check_training_settings,
    config_values,
    flag_default,
    history_lists,
    report_footer,
    report_path_for,
    save_model,
    train_and_print,
    training_flags,
    write_report,
)
from transforms.embed.models import NETWORKS, ModelConfigError, Network, build_base_network, preprocessing_layers
from transforms.io import fileio
from transforms.io.image_read import IMAGE_EXTENSIONS, is_image_name
from transforms.io.text_formats import detect_format, iter_records

__all__ = [
    "FLAGS",
    "IMAGE_EXTENSIONS",
    "ImageTrainingConfig",
    "LabelledImages",
    "list_labelled_images",
    "load_labelled_images",
    "base_network",
    "report_path_for",
    "train_image_model",
    "add_arguments",
    "config_from_args",
    "main_from_args",
]

_LOG = logging.getLogger(__name__)

EMBEDDING_LAYER = "embedding"
CLASSES_LAYER = "classes"
_MAX_BAD_EXAMPLES = 10


# The flags of `python -m pipeline train-image`, each declared once with its default (see
# `pipeline.train.common.TrainFlag`); ImageTrainingConfig's defaults are read from here.
FLAGS = (
    TrainFlag(
        "--image-input",
        "A folder of class subfolders (label = subfolder name), or a manifest .csv/.jsonl/.parquet with uri and label columns.",
        aliases=("--input",),
        dest="input",
        required=True,
        metavar="DIR_OR_MANIFEST",
    ),
    TrainFlag("--base", f"Keras Applications network: {', '.join(NETWORKS)}.", required=True, metavar="NAME"),
    OUTPUT_FLAG,
    TrainFlag(
        "--image-weights",
        "imagenet (Keras download) or a no-top weights file, local or gs:// (default: %(default)s).",
        default="imagenet",
        aliases=("--base-weights",),
        dest="base_weights",
        metavar="WEIGHTS",
    ),
    TrainFlag("--image-size", "Input size in pixels (default: the network's own, e.g. 224).", type=int),
    TrainFlag(
        "--image-alpha",
        "Width multiplier of a MobileNet base (e.g. 0.25); must match the weights.",
        aliases=("--alpha",),
        dest="alpha",
        metavar="ALPHA",
        type=float,
    ),
    TrainFlag("--embedding-dim", "Size of the `embedding` layer (default: %(default)s).", default=128, type=int),
    TrainFlag("--dropout", "Dropout on the base's features; 0 for none (default: %(default)s).", default=0.2, type=float),
    *training_flags(stage=" of the head (frozen base)", epochs=10, patience=3, batch_size=32, learning_rate=1e-3),
    TrainFlag(
        "--fine-tune-layers",
        "After the head, unfreeze this many top layers of the base and train end to end; 0: no fine-tuning "
        "(default: %(default)s).",
        default=0,
        type=int,
    ),
    TrainFlag("--fine-tune-epochs", "Most fine-tuning epochs (default: %(default)s).", default=5, type=int),
    TrainFlag(
        "--fine-tune-learning-rate",
        "Adam learning rate while fine-tuning: keep it low (default: %(default)s).",
        default=1e-4,
        type=float,
    ),
    TrainFlag(
        "--no-flip",
        "No random horizontal flips while fine-tuning.",
        default=False,
        action="store_true",
        field="flip",
        convert=operator.not_,
    ),
    TrainFlag(
        "--image-uri-field",
        "Manifest column of the image uri (default: %(default)s).",
        default="uri",
        aliases=("--uri-field",),
        dest="uri_field",
    ),
    TrainFlag("--label-field", "Manifest column of the label (default: %(default)s).", default="label"),
)


def _default(field: str):
    return flag_default(FLAGS, field)


@dataclasses.dataclass(frozen=True)
class ImageTrainingConfig:
    """Validated settings of one `train-image` run."""

    input: str
    base: str
    output: str
    base_weights: str = _default("base_weights")
    image_size: Optional[int] = _default("image_size")
    alpha: Optional[float] = _default("alpha")
    embedding_dim: int = _default("embedding_dim")
    dropout: float = _default("dropout")
    epochs: int = _default("epochs")
    learning_rate: float = _default("learning_rate")
    patience: int = _default("patience")
    fine_tune_layers: int = _default("fine_tune_layers")
    fine_tune_epochs: int = _default("fine_tune_epochs")
    fine_tune_learning_rate: float = _default("fine_tune_learning_rate")
    batch_size: int = _default("batch_size")
    validation_split: float = _default("validation_split")
    seed: int = _default("seed")
    flip: bool = _default("flip")
    uri_field: str = _default("uri_field")
    label_field: str = _default("label_field")
    max_bad_fraction: float = _default("max_bad_fraction")
    verbose: int = 2

    def __post_init__(self):
        check_output(self.output, ToolError)
        if self.base not in NETWORKS:
            raise ToolError(f"--base {self.base!r}: unknown network; one of {', '.join(NETWORKS)}")
        network = NETWORKS[self.base]
        if self.alpha is not None and not network.has_alpha:
            raise ToolError(f"--image-alpha: {self.base} has no width multiplier")
        if self.image_size is not None and self.image_size < 32:
            raise ToolError(f"--image-size must be at least 32, got {self.image_size}")
        if network.fixed_size and self.image_size not in (None, network.default_size):
            raise ToolError(f"--image-size: {self.base} only takes {network.default_size}")
        if not self.base_weights:
            raise ToolError("--image-weights must be imagenet or a weights file")
        for flag, value, minimum in (
            ("--embedding-dim", self.embedding_dim, 1),
            ("--epochs", self.epochs, 1),
            ("--patience", self.patience, 0),
            ("--fine-tune-layers", self.fine_tune_layers, 0),
            ("--fine-tune-epochs", self.fine_tune_epochs, 1),
            ("--batch-size", self.batch_size, 1),
            ("--seed", self.seed, 0),
        ):
            check_at_least(flag, value, minimum, ToolError)
        check_training_settings(
            ToolError,
            self.validation_split,
            self.dropout,
            (("--learning-rate", self.learning_rate), ("--fine-tune-learning-rate", self.fine_tune_learning_rate)),
            self.max_bad_fraction,
        )

    @property
    def network(self) -> Network:
        return NETWORKS[self.base]

    @property
    def size(self) -> int:
        return self.image_size or self.network.default_size

    @property
    def report_path(self) -> str:
        return report_path_for(self.output)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Reading the labelled images


def _is_manifest(path: str) -> bool:
    return detect_format(path) in ("csv", "tsv", "jsonl", "parquet") and not is_image_name(path) and not fileio.is_folder(path)


def list_labelled_images(path: str, uri_field: str = "uri", label_field: str = "label") -> list[tuple[str, str]]:
    """(uri, label) of every image of a class-folder tree or a manifest, in a stable order."""
    if _is_manifest(path):
        if not FileSystems.exists(path):
            raise ToolError(f"--image-input {path!r}: no such manifest")
        items, bad = [], []
        with FileSystems.open(path) as handle:
            for parsed in iter_records(handle, detect_format(path), "utf-8", uri_field):
                record = parsed.record or {}
                uri, label = record.get(uri_field), record.get(label_field)
                if parsed.error is not None or not isinstance(uri, str) or not uri.strip() or label in (None, ""):
                    bad.append(parsed.line)
                    continue
                items.append((fileio.resolve_relative(uri.strip(), path), str(label)))
        if bad:
            _LOG.warning(
                "%s: %d rows without a %r and a %r value were skipped (first: line %s)",
                path,
                len(bad),
                uri_field,
                label_field,
                bad[0],
            )
        if not items:
            raise ToolError(
                f"--image-input {path!r}: no row has both a {uri_field!r} and a {label_field!r} value (set --image-uri-field / --label-field)"
            )
        return items
    # A folder of images as `run --image-input DIR` reads it (`transforms.io.image_read`): every file
    # below it with an image extension, at any depth; the label is the first subfolder's name.
    base = path.rstrip("/")
    matched = fileio.match_paths([fileio.folder_glob(base)])
    items, unlabelled = [], []
    for uri in matched:
        if not is_image_name(uri):
            continue  # a manifest or a note beside the images: not an image
        parts = uri[len(base) + 1 :].replace("\\", "/").split("/")
        if len(parts) < 2:
            unlabelled.append(uri)
            continue
        items.append((uri, parts[0]))
    if unlabelled:
        _LOG.warning("%s: %d image(s) outside a class subfolder were skipped (first: %s)", path, len(unlabelled), unlabelled[0])
    if not items:
        raise ToolError(
            f"--image-input {path!r}: no images in class subfolders (expected DIR/<label>/<image>.jpg, or a manifest .csv with "
            f"{uri_field},{label_field})"
        )
    return items


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """Decoded images (uint8, n x h x w x 3), their class numbers, the class names and what failed."""

    pixels: np.ndarray
    labels: np.ndarray
    classes: list[str]
    uris: list[str]
    bad: list[str]  # "uri: reason" of images that could not be read or decoded


def load_labelled_images(items: Sequence[tuple[str, str]], size: int, threads: Optional[int] = None) -> LabelledImages:
    """Decode every image as the job does; failures are collected, not raised."""
    from transforms.embed.decode import decode_image

    def load(item):
        uri, _ = item
        try:
            return decode_image(fileio.read_bytes(uri), (size, size)), None
        except Exception as exc:  # noqa: BLE001 - a bad image is counted, not fatal
            return None, f"{uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(load, items))
    kept = [(item, pixels) for item, (pixels, _) in zip(items, results) if pixels is not None]
    bad = [reason for _, reason in results if reason is not None]
    classes = sorted({label for (_, label), _ in kept})
    code = {name: i for i, name in enumerate(classes)}
    pixels = np.stack([p for _, p in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    labels = np.array([code[label] for (_, label), _ in kept], dtype=np.int64)
    return LabelledImages(pixels, labels, classes, [uri for (uri, _), _ in kept], bad)


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: `fraction` of each class (at least one, when it has two) held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(max(int(round(len(members) * fraction)), 1), len(members) - 1) if len(members) >= 2 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return rng.permutation(np.concatenate(train)), np.sort(np.concatenate(val))


# ---------------------------------------------------------------------------------------------
# The model


def base_network(config: ImageTrainingConfig):
    """The headless, average-pooled base network, built as the job builds `--image-model NAME`
    (`transforms.embed.models.build_base_network`, seeded with `--seed`); errors name this command's flags."""
    try:
        return build_base_network(config.base, config.base_weights, config.alpha, config.image_size, config.seed)
    except ModelConfigError as exc:
        raise ToolError(user_message(exc, TRAIN_IMAGE_FLAGS)) from exc


def _head_layers(config: ImageTrainingConfig, classes: int) -> list:
    import keras

    layers = [keras.layers.Dropout(config.dropout, name="dropout")] if config.dropout else []
    return layers + [
        keras.layers.Dense(config.embedding_dim, activation="relu", name=EMBEDDING_LAYER),
        keras.layers.Dense(classes, activation="softmax", name=CLASSES_LAYER),
    ]


def _apply(layers: Sequence, x):
    for layer in layers:
        x = layer(x)
    return x


def _unfreeze_top(base, count: int) -> int:
    """Make the top `count` layers of the base trainable (BatchNormalization never); returns how many have weights."""
    import keras

    base.trainable = True  # a frozen parent hides every child's weights; freeze children one by one instead
    for layer in base.layers:
        layer.trainable = False
    unfrozen = 0
    for layer in base.layers[-count:] if count else []:
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        layer.trainable = True
        unfrozen += bool(layer.weights)
    return unfrozen


def _pixel_dataset(pixels: np.ndarray, labels: np.ndarray, batch_size: int, seed: Optional[int], flip: bool):
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((pixels, labels))
    if seed is not None:
        data = data.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)

    def prepare(image, label):
        image = tf.cast(image, tf.float32)
        if flip:
            image = tf.image.random_flip_left_right(image, seed=seed)
        return image, label

    return data.map(prepare).batch(batch_size).prefetch(2)


def train_image_model(config: ImageTrainingConfig) -> dict:
    """Read, split, train the head then optionally fine-tune, save `config.output` and its report; the report."""
    import keras
    import tensorflow as tf

    started = time.monotonic()
    items = list_labelled_images(config.input, config.uri_field, config.label_field)
    images = load_labelled_images(items, config.size)
    bad_fraction = len(images.bad) / len(items)
    if bad_fraction > config.max_bad_fraction:
        raise ToolError(
            f"--image-input {config.input!r}: {len(images.bad)} of {len(items)} images could not be read or decoded "
            f"(more than --max-bad-fraction {config.max_bad_fraction}); first: {images.bad[0]}"
        )
    counts = np.bincount(images.labels, minlength=len(images.classes))
    if len(images.classes) < 2 or (counts >= 2).sum() < 2:
        raise ToolError(
            f"--image-input {config.input!r}: needs at least two labels with two images each, found {dict(zip(images.classes, counts.tolist()))}"
        )
    train, val = _stratified_split(images.labels, config.validation_split, config.seed)

    keras.utils.set_random_seed(config.seed)
    base = base_network(config)
    base.trainable = False
    pixels_in = keras.Input(shape=(config.size, config.size, 3), dtype="float32", name="pixels")
    features = base(_apply(preprocessing_layers(config.network), pixels_in), training=False)
    feature_model = keras.Model(pixels_in, features, name="features")
    head = _head_layers(config, len(images.classes))

    # Phase 1: the base is frozen, so each image's features are computed once and the head trains on them.
    all_features = feature_model.predict(
        tf.data.Dataset.from_tensor_slices(images.pixels).map(lambda x: tf.cast(x, tf.float32)).batch(64),
        verbose=0,
    )
    feature_in = keras.Input(shape=(all_features.shape[1],), name="features")
    head_model = keras.Model(feature_in, _apply(head, feature_in), name="head")
    head_model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    head_history = head_model.fit(
        all_features[train],
        images.labels[train],
        validation_data=(all_features[val], images.labels[val]),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=[stopper],
        verbose=config.verbose,
    )
    _, head_val_accuracy = head_model.evaluate(all_features[val], images.labels[val], verbose=0)

    # The classifier on pixels: preprocessing, base and the trained head, sharing the head's layers.
    model = keras.Model(pixels_in, _apply(head, features), name=f"{config.base.lower()}_classifier")
    report_fine_tune = None
    unfrozen = _unfreeze_top(base, config.fine_tune_layers) if config.fine_tune_layers else 0
    model.compile(
        optimizer=keras.optimizers.Adam(config.fine_tune_learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    val_data = _pixel_dataset(images.pixels[val], images.labels[val], 64, None, False)
    val_loss, val_accuracy = model.evaluate(val_data, verbose=0)
    if config.fine_tune_layers:
        before = model.get_weights()
        fine_stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
        fine_history = model.fit(
            _pixel_dataset(images.pixels[train], images.labels[train], config.batch_size, config.seed, config.flip),
            validation_data=val_data,
            epochs=config.fine_tune_epochs,
            shuffle=False,
            callbacks=[fine_stopper],
            verbose=config.verbose,
        )
        tuned_loss, tuned_accuracy = model.evaluate(val_data, verbose=0)
        kept = bool(tuned_loss <= val_loss)
        if kept:
            val_loss, val_accuracy = tuned_loss, tuned_accuracy
        else:  # fine-tuning made validation worse (too high a learning rate?): keep the frozen-base model
            model.set_weights(before)
            _LOG.warning(
                "fine-tuning raised the validation loss from %.4f to %.4f; kept the model before it", val_loss, tuned_loss
            )
        report_fine_tune = {
            "layers": config.fine_tune_layers,
            "layers_with_weights_unfrozen": unfrozen,
            "trainable_weights": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "epochs_run": len(fine_history.history["loss"]),
            "val_accuracy": float(tuned_accuracy),
            "val_loss": float(tuned_loss),
            "kept": kept,
            "history": history_lists(fine_history),
        }
        base.trainable = False

    save_model(pixels_in, model.output, model.name, config.output)
    report = {
        "model": config.output,
        "val_accuracy": float(val_accuracy),
        "val_loss": float(val_loss),
        "head_val_accuracy": float(head_val_accuracy),
        "fine_tune": report_fine_tune,
        "classes": images.classes,
        "class_counts": dict(zip(images.classes, counts.tolist())),
        "train_images": int(len(train)),
        "val_images": int(len(val)),
        "bad_images": len(images.bad),
        "bad_examples": images.bad[:_MAX_BAD_EXAMPLES],
        "input_size": [config.size, config.size],
        "embedding_layer": EMBEDDING_LAYER,
        "embedding_dim": config.embedding_dim,
        "preprocessing": config.network.preprocessing,
        "head_epochs_run": len(head_history.history["loss"]),
        "head_history": history_lists(head_history),
        **report_footer(config.describe(), started),
    }
    write_report(report, config.output)
    return report


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline train-image` (`FLAGS`)."""
    add_flags(parser, FLAGS)


def config_from_args(args: argparse.Namespace) -> ImageTrainingConfig:
    """Validated settings from parsed flags (raises ToolError naming the flag)."""
    return ImageTrainingConfig(**config_values(FLAGS, args))


def main_from_args(args: argparse.Namespace) -> int:
    """Run `train-image`: Keras' progress on stderr, the report alone on stdout."""
    train_and_print(train_image_model, config_from_args(args))
    return 0
