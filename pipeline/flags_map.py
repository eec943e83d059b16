"""The command line's names for the model specs' fields: the one place that maps them to flags.

The model layer (`transforms.embed.models`) raises `ModelConfigError` naming a spec's own field
("text.layer", "image.weights", ...); `user_message` writes such an error with the flag a command-line
user typed, so the model layer never speaks CLI. `pipeline.cli.exit_status` prints every user error
through it; `train-image` maps the network to its own `--base` (`TRAIN_IMAGE_FLAGS`).
This module imports nothing heavy.
"""

from __future__ import annotations

from typing import Mapping, Optional

__all__ = ["MODEL_FLAGS", "TRAIN_IMAGE_FLAGS", "user_message"]

# "<modality>.<field of TextModelSpec / ImageModelSpec>" -> the `run` flag that sets it.
MODEL_FLAGS = {
    "text.path": "--text-model",
    "text.layer": "--text-layer",
    "text.batch_size": "--text-batch-size",
    "text.unsafe_loading": "--unsafe-model-loading",
    "image.model": "--image-model",
    "image.weights": "--image-weights",
    "image.image_size": "--image-size",
    "image.alpha": "--image-alpha",
    "image.layer": "--image-layer",
    "image.preprocess": "--image-preprocess",
    "image.batch_size": "--image-batch-size",
    "image.unsafe_loading": "--unsafe-model-loading",
    "image.backend": "--image-backend",
    "image.precision": "--image-precision",
    "image.decoder": "--image-decoder",
}
# `train-image` names the network with --base; its other model flags are the job's.
TRAIN_IMAGE_FLAGS = {**MODEL_FLAGS, "image.model": "--base"}


def user_message(exc: BaseException, flags: Optional[Mapping[str, str]] = None) -> str:
    """The one line a command-line user sees for `exc`: a model error names the flag (`flags`,
    default `MODEL_FLAGS`), any other error is its own message."""
    describe = getattr(exc, "describe", None)
    if callable(describe) and hasattr(exc, "key") and getattr(exc, "names", None) is None:  # not named already (the API)
        return describe(MODEL_FLAGS if flags is None else flags)
    return str(exc)
