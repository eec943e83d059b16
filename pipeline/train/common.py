"""What the two trainers share: how a flag is declared (`TrainFlag`), their common flags and the checks of them,
and saving the model with its report.

Both save an uncompiled `.keras` file (no optimizer state) to a local or gs:// `--output`, with the
training report beside it as `MODEL.training.json`, and print that report alone on stdout while
Keras' progress goes to stderr.

Each trainer declares its flags once, in a `FLAGS` table of `TrainFlag`s (`pipeline.command_flags.CommandFlag`,
which the tools use too; the job's option views use `pipeline.options.Flag`); its parser is built from the
table (`add_flags`), its config dataclass reads its defaults from it (`flag_default`) and is built
from the parsed flags through it (`config_values`): all four are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from typing import Callable, Sequence, TypeVar

from pipeline.command_flags import CommandFlag, add_flags, config_values, flag_default
from transforms.io import fileio

__all__ = [
    "MODEL_SUFFIX",
    "REPORT_SUFFIX",
    "report_path_for",
    "TrainFlag",
    "OUTPUT_FLAG",
    "add_flags",
    "flag_default",
    "config_values",
    "training_flags",
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


TrainFlag = CommandFlag  # a trainer's flag: `pipeline.command_flags.CommandFlag`, shared with the tools

OUTPUT_FLAG = TrainFlag(
    "--output",
    f"Where to save the model (local or gs://); the report goes to MODEL{REPORT_SUFFIX}.",
    required=True,
    metavar=f"MODEL{MODEL_SUFFIX}",
)


def training_flags(
    *,
    stage: str,
    epochs: int,
    patience: int,
    batch_size: int,
    learning_rate: float,
    validation_split: float = 0.2,
    seed: int = 0,
    max_bad_fraction: float = 0.1,
) -> tuple[TrainFlag, ...]:
    """The training flags both trainers have, with the same names, types and meaning: --epochs,
    --patience, --batch-size, --learning-rate, --validation-split, --seed and --max-bad-fraction,
    with the trainer's defaults; `stage` says what --epochs and --learning-rate train where the
    trainer has more than one stage (e.g. " of the head (frozen base)")."""
    return (
        TrainFlag(
            "--epochs",
            f"Most epochs{stage}; stops early on validation loss (default: %(default)s).",
            default=epochs,
            type=int,
        ),
        TrainFlag(
            "--patience",
            "Epochs without a better validation loss before stopping (default: %(default)s).",
            default=patience,
            type=int,
        ),
        TrainFlag("--batch-size", "Training batch size (default: %(default)s).", default=batch_size, type=int),
        TrainFlag("--learning-rate", f"Adam learning rate{stage} (default: %(default)s).", default=learning_rate, type=float),
        TrainFlag(
            "--validation-split",
            "Fraction held out for validation (of each class, in train-image), drawn with --seed (default: %(default)s).",
            default=validation_split,
            type=float,
        ),
        TrainFlag(
            "--seed",
            "Seed of the validation split, the shuffling, the initial weights and any augmentation (default: %(default)s).",
            default=seed,
            type=int,
        ),
        TrainFlag(
            "--max-bad-fraction",
            "Fail when more than this fraction of the training records is unusable (a malformed or unlabelled "
            "record, an image that cannot be decoded) (default: %(default)s).",
            default=max_bad_fraction,
            type=float,
        ),
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
