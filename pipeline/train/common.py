"""What the two trainers share: their common flags and the checks of them, and saving the model with its report.

Both save an uncompiled `.keras` file (no optimizer state) to a local or gs:// `--output`, with the
training report beside it as `MODEL.training.json`, and print that report alone on stdout while
Keras' progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Callable, Sequence, TypeVar

from transforms.io import fileio

__all__ = [
    "MODEL_SUFFIX",
    "REPORT_SUFFIX",
    "report_path_for",
    "add_training_arguments",
    "check_output",
    "check_at_least",
    "check_training_settings",
    "history_lists",
    "report_footer",
    "save_model",
    "write_report",
    "train_and_print",
]

MODEL_SUFFIX = ".keras"
REPORT_SUFFIX = ".training.json"

_Config = TypeVar("_Config")


def report_path_for(model_path: str) -> str:
    """`MODEL.keras` -> `MODEL.training.json`."""
    return model_path[: -len(MODEL_SUFFIX)] + REPORT_SUFFIX


def add_training_arguments(parser: argparse.ArgumentParser, config_type: type, *, stage: str = "") -> None:
    """Add the training flags both trainers have, with the same names, types and meaning: --epochs,
    --patience, --batch-size, --learning-rate, --validation-split, --seed and --max-bad-fraction.

    Their defaults are the field defaults of the trainer's settings dataclass `config_type` (each
    trainer keeps its own); `stage` says what --epochs and --learning-rate train where the trainer
    has more than one stage (e.g. " of the head (frozen base)")."""
    d = {field.name: field.default for field in dataclasses.fields(config_type)}
    parser.add_argument(
        "--epochs",
        type=int,
        default=d["epochs"],
        help=f"Most epochs{stage}; stops early on validation loss (default: %(default)s).",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=d["patience"],
        help="Epochs without a better validation loss before stopping (default: %(default)s).",
    )
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], help="Training batch size (default: %(default)s).")
    parser.add_argument(
        "--learning-rate", type=float, default=d["learning_rate"], help=f"Adam learning rate{stage} (default: %(default)s)."
    )
    parser.add_argument(
        "--validation-split",
        type=float,
        default=d["validation_split"],
        help="Fraction held out for validation (of each class, in train-image), drawn with --seed (default: %(default)s).",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d["seed"],
        help="Seed of the validation split, the shuffling, the initial weights and any augmentation (default: %(default)s).",
    )
    parser.add_argument(
        "--max-bad-fraction",
        type=float,
        default=d["max_bad_fraction"],
        help="Fail when more than this fraction of the training records is unusable (a malformed or unlabelled "
        "record, an image that cannot be decoded) (default: %(default)s).",
    )


def check_output(output: str, error: type[Exception]) -> None:
    """`--output` must be a Keras 3 model file; `error` (the trainer's flag error) otherwise."""
    if not output.endswith(MODEL_SUFFIX):
        raise error(f"--output must end in {MODEL_SUFFIX} (the Keras 3 format), got {output!r}")


def check_at_least(flag: str, value: object, minimum: int, error: type[Exception]) -> None:
    """An integer flag (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error(f"{flag} must be an integer >= {minimum}, got {value!r}")


def check_training_settings(
    error: type[Exception],
    validation_split: float,
    dropout: float,
    learning_rates: Sequence[tuple[str, float]],
    max_bad_fraction: float,
) -> None:
    """The flags both trainers have: --validation-split, --dropout, the learning rates, --max-bad-fraction."""
    if not 0 < validation_split < 1:
        raise error(f"--validation-split must be in (0, 1), got {validation_split}")
    if not 0 <= dropout < 1:
        raise error(f"--dropout must be in [0, 1), got {dropout}")
    for flag, value in learning_rates:
        if not value > 0:
            raise error(f"{flag} must be positive, got {value}")
    if not 0 <= max_bad_fraction <= 1:
        raise error(f"--max-bad-fraction must be in [0, 1], got {max_bad_fraction}")


def history_lists(history) -> dict[str, list[float]]:
    """A Keras `History`'s metrics per epoch as plain floats (JSON-able)."""
    return {name: [float(v) for v in values] for name, values in history.history.items()}


def report_footer(settings: dict, started: float) -> dict:
    """The last fields of every training report: the settings, the time since `started` (monotonic), the versions."""
    import keras
    import tensorflow as tf

    return {
        "settings": settings,
        "elapsed_seconds": round(time.monotonic() - started, 3),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }


def save_model(inputs, outputs, name: str, destination: str) -> None:
    """Save `keras.Model(inputs, outputs, name=name)` (uncompiled: no optimizer state, a third of the
    size) to `destination`, local or gs://, through a local temporary file."""
    import keras

    with tempfile.TemporaryDirectory(prefix="train-") as scratch:
        local = os.path.join(scratch, "model" + MODEL_SUFFIX)
        keras.Model(inputs, outputs, name=name).save(local)
        fileio.upload(local, destination)


def write_report(report: dict, model_path: str) -> None:
    """The report as indented JSON beside the model (`report_path_for(model_path)`), local or gs://."""
    fileio.write_bytes(report_path_for(model_path), (json.dumps(report, indent=2) + "\n").encode("utf-8"), "application/json")


def train_and_print(train: Callable[[_Config], dict], config: _Config) -> dict:
    """Run `train(config)` with stdout sent to stderr (Keras' epoch lines are progress), then print its report alone on stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        report = train(config)
    print(json.dumps(report, indent=2))
    return report
