"""The benchmark's model files: the text model, and `.keras` files for the RunInference peer.

The peer is given the same network as the job, saved as one `.keras` file a Beam user would hand
to `TFModelHandlerNumpy`/`TFModelHandlerTensor`:

* images: uint8 pixels -> the network's preprocessing as built-in layers -> the headless network
  with `pooling="avg"`, built by the job's own `transforms.embed.models.build_base_network` (same weights
  file, or the same seed for random weights);
* text: the `train-text` model cut at its `text_embedding` layer.

TensorFlow is imported inside the functions: the harness process that only orchestrates stays light.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Optional

__all__ = ["rt_polarity_flags", "train_text_model", "save_peer_image_model", "save_headless_text_model"]


def rt_polarity_flags(shared: pathlib.Path) -> list[str]:
    """train-text's flags for the shared rt-polarity corpus (label 1 positive, 0 negative)."""
    sentiment = shared / "sentiment"
    return [
        "--labelled-lines",
        f"{sentiment / 'rt-polarity.pos'}=1",
        "--labelled-lines",
        f"{sentiment / 'rt-polarity.neg'}=0",
        "--encoding",
        "cp1252",
    ]


def train_text_model(shared: pathlib.Path, output: pathlib.Path, epochs: Optional[int] = None) -> str:
    """The Embedding-layer text model, made by the project's own trainer (`python -m pipeline
    train-text` on rt-polarity). Returns how it was made."""
    from benchmarks.inputs import PROJECT_ROOT

    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline", "train-text", *rt_polarity_flags(shared), "--output", str(output)]
    cmd += ["--epochs", str(epochs)] if epochs else []
    log = output.with_suffix(".log")
    with open(log, "w") as handle:
        done = subprocess.run(
            cmd, cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        )
    if done.returncode != 0 or not output.exists():
        raise RuntimeError(f"train-text failed (exit {done.returncode}); see {log}")
    return "python -m pipeline train-text"


def save_headless_text_model(source: str, output: str) -> None:
    """The text model cut at `text_embedding`, as its own `.keras` file."""
    import keras

    from transforms.embed.models import TEXT_EMBEDDING_LAYER

    model = keras.saving.load_model(source, compile=False)
    _save_atomically(keras.Model(model.inputs, model.get_layer(TEXT_EMBEDDING_LAYER).output, name="text_embedder"), output)


def _save_atomically(model, output: str) -> None:
    """Save under a temporary name, then rename: another invocation may be making the same file."""
    tmp = f"{output}.{os.getpid()}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, output)


def save_peer_image_model(network: str, size: int, alpha: Optional[float], weights: str, output: str) -> None:
    """uint8 pixels in, pooled embedding out: the job's own network (`transforms.embed.models.build_base_network`,
    same weights file or the same seed) with its preprocessing as built-in layers in front."""
    import keras

    from transforms.embed.models import NETWORKS, build_base_network, preprocessing_layers

    base = build_base_network(network, weights=None if weights == "none" else weights, alpha=alpha, image_size=size)
    pixels = keras.Input((size, size, 3), name="pixels")
    x = pixels
    for layer in preprocessing_layers(NETWORKS[network]):
        x = layer(x)
    _save_atomically(keras.Model(pixels, base(x), name=f"peer_{network}"), output)
