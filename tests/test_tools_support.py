"""Helpers for the `pipeline.tools` tests (no tests here): hand-written run folders and tiny models."""

from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.records import TEXT, embedding_schema
from transforms.results import MANIFEST_NAME

MODEL_NAME = "synthetic-model"
MODEL_SHA256 = "0" * 64


def write_run(
    folder: pathlib.Path,
    vectors: np.ndarray,
    ids: Optional[Sequence[str]] = None,
    passthrough: Optional[dict] = None,
    modality: str = "image",
    files: int = 2,
    row_group_rows: int = 10,
    run_id: str = "run-1",
    manifest: bool = True,
) -> pathlib.Path:
    """A finished run as the job lays it out (`transforms.sinks`): Parquet parts of one modality and `_MANIFEST.json`."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    ids = list(ids) if ids is not None else [f"{modality}-{i:04d}" for i in range(n)]
    passthrough = dict(passthrough or {})
    schema = embedding_schema(modality, d, list(passthrough))
    (folder / modality).mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, files + 1).astype(int)
    relative = []
    for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        flat = pa.array(vectors[lo:hi].reshape(-1), type=pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(flat, d)
        columns = {
            "id": pa.array(ids[lo:hi], pa.string()),
            "source": pa.array([f"/data/{i}" for i in ids[lo:hi]], pa.string()),
            "content_sha256": pa.array(["x"] * (hi - lo), pa.string()),
            "embedding": embedding,
            "model": pa.array([MODEL_NAME] * (hi - lo), pa.string()),
            "model_sha256": pa.array([MODEL_SHA256] * (hi - lo), pa.string()),
        }
        if modality == TEXT:
            columns["line"] = pa.array(range(lo + 1, hi + 1), pa.int64())
        for name, values in passthrough.items():
            columns[name] = pa.array(values[lo:hi], pa.string())
        table = pa.table({f.name: columns[f.name] for f in schema}, schema=schema)
        name = f"{modality}/part-{part:05d}-of-{files:05d}.parquet"
        pq.write_table(table, folder / name, row_group_size=row_group_rows)
        relative.append(name)
    if manifest:
        (folder / MANIFEST_NAME).write_text(
            json.dumps(
                {
                    "status": "complete",
                    "run_id": run_id,
                    "finished_at": "2026-01-01T00:00:00+00:00",
                    "output": str(folder),
                    "files": {modality: relative},
                    "models": {modality: {"name": MODEL_NAME, "sha256": MODEL_SHA256, "dimension": d, "details": {}}},
                    "options": {"passthrough": list(passthrough)},
                    "counts": {modality: {"read": n, "embedded": n, "failed": 0, "skipped": 0, "balanced": True}},
                }
            )
        )
    return folder


def run_cli(module, argv: Sequence[str]) -> int:
    """A command module's exit code for some flags, as `pipeline.cli` would run it (its one exit path)."""
    import argparse

    from pipeline.cli import COMMANDS, exit_status

    parser = argparse.ArgumentParser(prog="test")
    module.add_arguments(parser)
    args = parser.parse_args(list(argv))
    command = next(name for name, (home, _) in COMMANDS.items() if home == module.__name__)
    return exit_status(command, lambda: module.main_from_args(args))


POSITIVE = ("good", "great", "excellent")
NEGATIVE = ("bad", "awful", "terrible")
FILLER = "the a film movie plot story was is and it this one".split()


def sentiment_sentences(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """Easy labelled sentences: one sentiment word among neutral filler."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        label = i % 2
        words = list(rng.choice(FILLER, 4, replace=False)) + [str(rng.choice(POSITIVE if label else NEGATIVE))]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def build_text_model(texts: Sequence[str], dim: int = 8, seed: int = 0, sequence_length: int = 8):
    """A model of `train-text`'s contract: text -> vectorize -> embedding -> text_embedding -> sentiment."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    vectorize = keras.layers.TextVectorization(
        name="vectorize", max_tokens=100, output_sequence_length=sequence_length, standardize="lower_and_strip_punctuation"
    )
    vectorize.adapt(tf.constant(list(texts)))
    text = keras.Input(shape=(1,), dtype="string", name="text")
    vectors = keras.layers.Embedding(100, dim, mask_zero=True, name="embedding")(vectorize(text))
    pooled = keras.layers.GlobalAveragePooling1D(name="text_embedding")(vectors)
    sentiment = keras.layers.Dense(1, activation="sigmoid", name="sentiment")(pooled)
    return keras.Model(text, sentiment)


def train_text_model(path: pathlib.Path, rows: Sequence[tuple[str, int]], epochs: int = 30, seed: int = 0) -> pathlib.Path:
    """Fit a tiny sentiment model on `rows` and save it to `path` (.keras)."""
    import keras
    import tensorflow as tf

    texts = [t for t, _ in rows]
    model = build_text_model(texts, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    data = tf.data.Dataset.from_tensor_slices((tf.constant(texts)[:, None], tf.constant([float(y) for _, y in rows])))
    model.fit(data.batch(32), epochs=epochs, shuffle=False, verbose=0)
    model.save(path)
    return path
