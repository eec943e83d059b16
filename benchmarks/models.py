"""The benchmark's model files: the text model, and `.keras` files for the RunInference peer.

The peer is given the same network as the job, saved as one `.keras` file a Beam user would hand
to `TFModelHandlerNumpy`/`TFModelHandlerTensor`:

* images: uint8 pixels -> `Rescaling(1/127.5, offset=-1)` (what `preprocess_input` does for the
  MobileNets) -> the headless network with `pooling="avg"`, built exactly as the job builds it
  (same weights file, or the same seed for random weights);
* text: the `train-text` model cut at its `text_embedding` layer.

TensorFlow is imported inside the functions: the harness process that only orchestrates stays light.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Optional

__all__ = ["PREPROCESS_SCALED", "train_text_model", "save_peer_image_model", "save_headless_text_model"]

# Networks whose preprocess_input maps 0..255 to [-1, 1] (x / 127.5 - 1): a Rescaling layer is exact.
PREPROCESS_SCALED = ("MobileNet", "MobileNetV2")


def train_text_model(shared: pathlib.Path, output: pathlib.Path, epochs: Optional[int] = None) -> str:
    """The Embedding-layer text model: made by `python -m pipeline train-text` where the project has
    it, else an equivalent model built here. Returns how it was made."""
    from benchmarks.inputs import PROJECT_ROOT

    output.parent.mkdir(parents=True, exist_ok=True)
    sentiment = shared / "sentiment"
    if any((PROJECT_ROOT / "pipeline" / p).exists() for p in ("train/text.py", "train_text.py")):  # now / before the layout move
        cmd = [
            sys.executable, "-m", "pipeline", "train-text",
            "--labelled-lines", f"{sentiment / 'rt-polarity.pos'}=1",
            "--labelled-lines", f"{sentiment / 'rt-polarity.neg'}=0",
            "--encoding", "cp1252", "--output", str(output),
        ] + (["--epochs", str(epochs)] if epochs else [])
        log = output.with_suffix(".log")
        with open(log, "w") as handle:
            done = subprocess.run(cmd, cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if done.returncode == 0 and output.exists():
            return "python -m pipeline train-text"
        print(f"train-text failed (see {log}); building an equivalent model instead", file=sys.stderr)
    _build_equivalent_text_model(shared, output, epochs or 3)
    return "benchmarks.models equivalent (TextVectorization -> Embedding -> GlobalAveragePooling1D -> Dense)"


def _build_equivalent_text_model(shared: pathlib.Path, output: pathlib.Path, epochs: int) -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks.inputs import rt_polarity_sentences

    keras.utils.set_random_seed(0)
    texts = rt_polarity_sentences(shared)
    labels = np.array([1.0] * 5331 + [0.0] * (len(texts) - 5331), dtype="float32")
    vectorize = keras.layers.TextVectorization(name="vectorize", max_tokens=20000, output_sequence_length=64)
    vectorize.adapt(tf.constant(texts))
    inp = keras.Input(shape=(1,), dtype="string", name="text")
    x = keras.layers.Embedding(20000, 64, name="embedding", mask_zero=True)(vectorize(inp))
    x = keras.layers.GlobalAveragePooling1D(name="text_embedding")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="sentiment")(x)
    model = keras.Model(inp, out)
    model.compile("adam", "binary_crossentropy")
    data = tf.data.Dataset.from_tensor_slices((tf.constant(texts)[:, None], labels)).shuffle(len(texts), seed=0).batch(64)
    model.fit(data, epochs=epochs, verbose=0)
    model.save(output)


def save_headless_text_model(source: str, output: str) -> None:
    """The text model cut at `text_embedding`, as its own `.keras` file."""
    import keras

    model = keras.saving.load_model(source, compile=False)
    _save_atomically(keras.Model(model.inputs, model.get_layer("text_embedding").output, name="text_embedder"), output)


def _save_atomically(model, output: str) -> None:
    """Save under a temporary name, then rename: another invocation may be making the same file."""
    tmp = f"{output}.{os.getpid()}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, output)


def save_peer_image_model(network: str, size: int, alpha: Optional[float], weights: str, output: str) -> None:
    """uint8 pixels in, pooled embedding out: the job's network with its preprocessing as a layer."""
    import keras

    if network not in PREPROCESS_SCALED:
        raise ValueError(f"{network}: only {', '.join(PREPROCESS_SCALED)} have a Rescaling-equivalent preprocess_input")
    kwargs = dict(input_shape=(size, size, 3), include_top=False, pooling="avg",
                  weights=None if weights == "none" else weights)
    if alpha is not None:
        kwargs["alpha"] = alpha
    keras.utils.set_random_seed(0)  # as transforms.models does before building (ImageModelSpec.seed)
    base = getattr(keras.applications, network)(**kwargs)
    pixels = keras.Input((size, size, 3), name="pixels")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(pixels)
    _save_atomically(keras.Model(pixels, base(scaled), name=f"peer_{network}"), output)
