"""The `train-text` command: train the small sentiment model whose pooled layer is the text embedding.

The saved `.keras` file is the contract with the embedding job: a functional model taking one
string per row (`text`, shape `(1,)`), with the layers `vectorize` -> `embedding` ->
`text_embedding` (masked average of the token vectors, the record embedding) -> `sentiment`.
These names are defined once, in `transforms.embed.models` (TEXT_INPUT, TEXT_VECTORIZE_LAYER,
WORD_EMBEDDING_LAYER, TEXT_EMBEDDING_LAYER, TEXT_OUTPUT_LAYER). It loads with `keras.saving.load_model(path, safe_mode=True)`: built-in layers only.

A text with no token after standardisation (empty, or punctuation only) has nothing to average:
`text_embedding` then gives NaN (0 / 0). Such texts are bad records here, and the job must not
embed them either.

Keras and TensorFlow are imported inside the functions that need them, so that building the
command-line parser (`python -m pipeline --help`) stays fast.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import logging
import os
import time
from typing import Optional, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.train.common import (
    add_training_arguments,
    check_at_least,
    check_output,
    check_training_settings,
    history_lists,
    report_footer,
    report_path_for,
    save_model,
    train_and_print,
    write_report,
)
from transforms.embed.models import (
    TEXT_EMBEDDING_LAYER,
    TEXT_INPUT,
    TEXT_OUTPUT_LAYER,
    TEXT_VECTORIZE_LAYER,
    WORD_EMBEDDING_LAYER,
)
from transforms.errors import DataError, UserError
from transforms.io.text_formats import detect_format, iter_records

__all__ = [
    "TextTrainingConfig",
    "TrainingConfigError",
    "TrainingDataError",
    "TrainingRecords",
    "add_arguments",
    "build_text_model",
    "config_from_args",
    "load_training_records",
    "main_from_args",
    "report_path_for",
    "train_text_model",
]

_LOG = logging.getLogger(__name__)

_MAX_BAD_EXAMPLES = 10
_TRUE = ("1", "true")
_FALSE = ("0", "false")


class TrainingConfigError(UserError, ValueError):
    """A flag whose value cannot work; the message names the flag."""


class TrainingDataError(DataError, ValueError):
    """The training files cannot give a usable model (too many bad records, one class only, ...)."""


@dataclasses.dataclass(frozen=True)
class TextTrainingConfig:
    """Validated settings of one `train-text` run."""

    output: str
    inputs: tuple[str, ...] = ()
    labelled_lines: tuple[tuple[str, int], ...] = ()
    text_field: str = "text"
    label_field: str = "label"
    encoding: str = "utf-8"
    vocab_size: int = 20000
    sequence_length: int = 64
    embedding_dim: int = 64
    dropout: float = 0.2
    epochs: int = 10
    patience: int = 2
    batch_size: int = 64
    validation_split: float = 0.2
    learning_rate: float = 1e-3
    seed: int = 0
    max_bad_fraction: float = 0.1
    verbose: int = 2

    def __post_init__(self):
        check_output(self.output, TrainingConfigError)
        if not self.inputs and not self.labelled_lines:
            raise TrainingConfigError("give training data with --input GLOB or --labelled-lines FILE=LABEL")
        for path, label in self.labelled_lines:
            if label not in (0, 1):
                raise TrainingConfigError(f"--labelled-lines label must be 0 or 1, got {label!r} for {path!r}")
        for flag, value in (("--text-field", self.text_field), ("--label-field", self.label_field)):
            if not value:
                raise TrainingConfigError(f"{flag} must not be empty")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise TrainingConfigError(f"--encoding {self.encoding!r} is not an encoding Python knows") from None
        _at_least("--vocab-size", self.vocab_size, 3)  # padding, [UNK] and one word
        _at_least("--sequence-length", self.sequence_length, 1)
        _at_least("--embedding-dim", self.embedding_dim, 1)
        _at_least("--epochs", self.epochs, 1)
        _at_least("--patience", self.patience, 0)
        _at_least("--batch-size", self.batch_size, 1)
        _at_least("--seed", self.seed, 0)
        check_training_settings(
            TrainingConfigError,
            self.validation_split,
            self.dropout,
            (("--learning-rate", self.learning_rate),),
            self.max_bad_fraction,
        )

    @property
    def report_path(self) -> str:
        """Where the training report goes: `MODEL.keras` -> `MODEL.training.json`."""
        return report_path_for(self.output)

    def describe(self) -> dict:
        """The settings as plain JSON-able values, for the report."""
        settings = dataclasses.asdict(self)
        settings["inputs"] = list(self.inputs)
        settings["labelled_lines"] = {path: label for path, label in self.labelled_lines}
        return settings


def _at_least(flag: str, value: int, minimum: int) -> None:
    check_at_least(flag, value, minimum, TrainingConfigError)


# ---------------------------------------------------------------------------------------------
# Reading the training records


@dataclasses.dataclass(frozen=True)
class TrainingRecords:
    """Texts and 0/1 labels read from the training files, in file order, and what was rejected."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    bad_records: int
    bad_examples: tuple[str, ...]
    files: tuple[str, ...]

    @property
    def bad_fraction(self) -> float:
        total = len(self.texts) + self.bad_records
        return self.bad_records / total if total else 0.0


def _parse_label(value: object) -> int:
    """0 or 1 from an int, a bool, or the strings "0"/"1"/"true"/"false"; ValueError otherwise."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return 1
        if word in _FALSE:
            return 0
    raise ValueError(f'label {value!r} is not 0/1, "0"/"1" or a boolean')


def _match_files(flag: str, pattern: str) -> list[str]:
    """The files a glob (local or gs://) matches, sorted; an error naming the flag when none."""
    try:
        results = FileSystems.match([pattern])
    except Exception as exc:  # noqa: BLE001 - missing bucket, no permission, bad scheme
        raise TrainingConfigError(f"{flag} {pattern!r}: cannot list files ({type(exc).__name__}: {exc})") from exc
    paths = sorted(m.path for result in results for m in result.metadata_list if "://" in m.path or not os.path.isdir(m.path))
    if not paths:
        raise TrainingConfigError(f"{flag} {pattern!r} matches no file")
    return paths


def _resolve_sources(config: TextTrainingConfig) -> list[tuple[str, str, Optional[int]]]:
    """(path, format, fixed label or None) for every file to read, checking each glob matches."""
    sources: list[tuple[str, str, Optional[int]]] = []
    for pattern in config.inputs:
        for path in _match_files("--input", pattern):
            fmt = detect_format(path)
            if fmt == "lines":
                raise TrainingConfigError(
                    f"--input {pattern!r}: {path} is not JSONL, CSV, TSV or Parquet (by its extension), so it has "
                    f"no label field; for a plain text file of one label use --labelled-lines FILE=LABEL"
                )
            sources.append((path, fmt, None))
    for pattern, label in config.labelled_lines:
        for path in _match_files("--labelled-lines", pattern):
            sources.append((path, "lines", label))
    return sources


def _has_tokens(texts: Sequence[str]) -> np.ndarray:
    """Whether each text keeps at least one token after the model's own standardisation and split."""
    import keras
    import tensorflow as tf

    if not texts:
        return np.zeros(0, dtype=bool)
    # A fixed one-word vocabulary: every token maps to 1 ([UNK]) or 2, padding to 0; no adapt needed.
    probe = keras.layers.TextVectorization(
        standardize="lower_and_strip_punctuation", vocabulary=["the"], output_sequence_length=1
    )
    first = np.concatenate([np.asarray(probe(tf.constant(list(texts[i : i + 4096]))))[:, 0] for i in range(0, len(texts), 4096)])
    return first != 0


def load_training_records(config: TextTrainingConfig) -> TrainingRecords:
    """Every (text, label) of the configured files; bad lines are counted with a few examples kept."""
    texts: list[str] = []
    labels: list[int] = []
    origins: list[str] = []
    bad = 0
    examples: list[str] = []

    def reject(where: str, reason: str) -> None:
        nonlocal bad
        bad += 1
        if len(examples) < _MAX_BAD_EXAMPLES:
            examples.append(f"{where}: {reason}")

    sources = _resolve_sources(config)
    for path, fmt, fixed_label in sources:
        with FileSystems.open(path) as handle:
            for parsed in iter_records(handle, fmt, config.encoding, config.text_field):
                where = f"{path}:{parsed.line}"
                if parsed.error is not None:
                    reject(where, str(parsed.error))
                    continue
                record = parsed.record
                text = record.get(config.text_field)
                if fixed_label is not None and isinstance(text, str) and not text.strip():
                    continue  # a blank line in a plain text file is not a record
                if not isinstance(text, str):
                    if config.text_field not in record:
                        reason = "missing"
                    else:
                        reason = "null" if text is None else f"{type(text).__name__}, not a string"
                    reject(where, f"text field {config.text_field!r} is {reason}")
                    continue
                if fixed_label is not None:
                    label = fixed_label
                elif config.label_field not in record:
                    reject(where, f"label field {config.label_field!r} is missing")
                    continue
                else:
                    try:
                        label = _parse_label(record[config.label_field])
                    except ValueError as exc:
                        reject(where, str(exc))
                        continue
                texts.append(text)
                labels.append(label)
                origins.append(where)

    keep = _has_tokens(texts)
    for index in np.flatnonzero(~keep):
        reject(origins[index], "text has no word once lower-cased and stripped of punctuation")
    return TrainingRecords(
        texts=tuple(t for t, k in zip(texts, keep) if k),
        labels=tuple(label for label, k in zip(labels, keep) if k),
        bad_records=bad,
        bad_examples=tuple(examples),
        files=tuple(path for path, _, _ in sources),
    )


def _check_records(records: TrainingRecords, config: TextTrainingConfig) -> None:
    """Refuse data that would give a meaningless model, with the reason and examples of bad lines."""
    total = len(records.texts) + records.bad_records
    if records.bad_fraction > config.max_bad_fraction:
        shown = "\n  ".join(records.bad_examples)
        raise TrainingDataError(
            f"{records.bad_records} of {total} records are bad ({records.bad_fraction:.1%} > "
            f"--max-bad-fraction {config.max_bad_fraction:.0%}); first ones:\n  {shown}"
        )
    classes = set(records.labels)
    if classes != {0, 1}:
        raise TrainingDataError(
            f"training needs both labels 0 and 1; the {len(records.texts)} good records have only {sorted(classes)}"
        )
    n_val = round(len(records.texts) * config.validation_split)
    if n_val < 1 or len(records.texts) - n_val < 1:
        raise TrainingDataError(
            f"{len(records.texts)} good records cannot be split with --validation-split {config.validation_split}"
        )


# ---------------------------------------------------------------------------------------------
# The model


def build_text_model(config: TextTrainingConfig, train_texts: Sequence[str]):
    """The functional model of the contract, its vocabulary adapted on `train_texts` only."""
    import keras
    import tensorflow as tf

    vectorize = keras.layers.TextVectorization(
        name=TEXT_VECTORIZE_LAYER,
        max_tokens=config.vocab_size,
        output_sequence_length=config.sequence_length,
        standardize="lower_and_strip_punctuation",
    )
    vectorize.adapt(tf.data.Dataset.from_tensor_slices(tf.constant(list(train_texts))).batch(1024))
    text = keras.Input(shape=(1,), dtype="string", name=TEXT_INPUT)
    tokens = vectorize(text)
    vectors = keras.layers.Embedding(
        name=WORD_EMBEDDING_LAYER, input_dim=config.vocab_size, output_dim=config.embedding_dim, mask_zero=True
    )(tokens)
    pooled = keras.layers.GlobalAveragePooling1D(name=TEXT_EMBEDDING_LAYER)(vectors)  # masked mean: padding ignored
    features = keras.layers.Dropout(config.dropout, name="dropout")(pooled) if config.dropout else pooled
    sentiment = keras.layers.Dense(1, activation="sigmoid", name=TEXT_OUTPUT_LAYER)(features)
    return keras.Model(text, sentiment, name="text_sentiment")


def _dataset(texts: Sequence[str], labels: np.ndarray, batch_size: int, shuffle_seed: Optional[int] = None):
    """Batches of ((batch, 1) strings, (batch,) float labels); Keras cannot fit NumPy string arrays."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((tf.constant(list(texts))[:, None], tf.constant(labels, tf.float32)))
    if shuffle_seed is not None:
        data = data.shuffle(len(texts), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.batch(batch_size)


def train_text_model(config: TextTrainingConfig) -> dict:
    """Read, split, train with early stopping, save `config.output` and its report; the report's dict."""
    import keras

    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    records = load_training_records(config)
    _check_records(records, config)

    order = np.random.default_rng(config.seed).permutation(len(records.texts))
    texts = [records.texts[i] for i in order]
    labels = np.asarray([records.labels[i] for i in order], dtype="float32")
    n_val = round(len(texts) * config.validation_split)
    val_texts, val_labels = texts[:n_val], labels[:n_val]
    train_texts, train_labels = texts[n_val:], labels[n_val:]

    model = build_text_model(config, train_texts)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="binary_crossentropy", metrics=["accuracy"])
    train_data = _dataset(train_texts, train_labels, config.batch_size, shuffle_seed=config.seed)
    val_data = _dataset(val_texts, val_labels, config.batch_size)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs,
        shuffle=False,
        callbacks=[stopper],
        verbose=config.verbose,
    )
    # The restored (best) weights, measured without dropout on both splits.
    train_loss, train_accuracy = model.evaluate(_dataset(train_texts, train_labels, 1024), verbose=0)
    val_loss, val_accuracy = model.evaluate(_dataset(val_texts, val_labels, 1024), verbose=0)

    save_model(model.inputs, model.outputs, model.name, config.output)
    report = {
        "model": config.output,
        "train_accuracy": float(train_accuracy),
        "train_loss": float(train_loss),
        "val_accuracy": float(val_accuracy),
        "val_loss": float(val_loss),
        "train_records": len(train_texts),
        "val_records": len(val_texts),
        "train_positive": int(train_labels.sum()),
        "val_positive": int(val_labels.sum()),
        "bad_records": records.bad_records,
        "bad_examples": list(records.bad_examples),
        "vocabulary_size": int(model.get_layer(TEXT_VECTORIZE_LAYER).vocabulary_size()),
        "epochs_run": len(history.history["loss"]),
        "best_epoch": int(stopper.best_epoch) + 1,
        "history": history_lists(history),
        "files": list(records.files),
        **report_footer(config.describe(), started),
    }
    write_report(report, config.output)
    _LOG.info("saved %s and %s", config.output, config.report_path)
    return report


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline train-text`."""
    d = TextTrainingConfig.__dataclass_fields__
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="GLOB",
        help="Glob of JSONL, CSV, TSV or Parquet files with a text and a 0/1 label field (local or gs://). Repeatable.",
    )
    parser.add_argument(
        "--labelled-lines",
        action="append",
        default=[],
        metavar="FILE=LABEL",
        help="A plain text file (or glob) whose every line is a record with LABEL (0 or 1). Repeatable.",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="MODEL.keras",
        help="Where to save the model (local or gs://); the report goes to MODEL.training.json.",
    )
    parser.add_argument(
        "--text-field", default=d["text_field"].default, help="Field/column holding the text (default: %(default)s)."
    )
    parser.add_argument(
        "--label-field", default=d["label_field"].default, help="Field/column holding the 0/1 label (default: %(default)s)."
    )
    parser.add_argument(
        "--encoding", default=d["encoding"].default, help="Encoding of the input files (default: %(default)s; e.g. cp1252)."
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=d["vocab_size"].default,
        help="Vocabulary size, padding and [UNK] included (default: %(default)s).",
    )
    parser.add_argument(
        "--sequence-length", type=int, default=d["sequence_length"].default, help="Tokens kept per text (default: %(default)s)."
    )
    parser.add_argument(
        "--embedding-dim", type=int, default=d["embedding_dim"].default, help="Size of the text embedding (default: %(default)s)."
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=d["dropout"].default,
        help="Dropout on the embedding before the classifier; 0 for none (default: %(default)s).",
    )
    add_training_arguments(parser, TextTrainingConfig)


def _parse_labelled_lines(value: str) -> tuple[str, int]:
    path, sep, label = value.rpartition("=")
    if not sep or not path:
        raise TrainingConfigError(f"--labelled-lines must be FILE=LABEL, got {value!r}")
    try:
        return path, _parse_label(label)
    except ValueError:
        raise TrainingConfigError(f"--labelled-lines label must be 0 or 1, got {label!r} in {value!r}") from None


def config_from_args(args: argparse.Namespace) -> TextTrainingConfig:
    """Validated settings from parsed flags; every glob must match a file. Raises TrainingConfigError."""
    config = TextTrainingConfig(
        output=args.output,
        inputs=tuple(args.input or ()),
        labelled_lines=tuple(_parse_labelled_lines(v) for v in (args.labelled_lines or ())),
        text_field=args.text_field,
        label_field=args.label_field,
        encoding=args.encoding,
        vocab_size=args.vocab_size,
        sequence_length=args.sequence_length,
        embedding_dim=args.embedding_dim,
        dropout=args.dropout,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        validation_split=args.validation_split,
        learning_rate=args.learning_rate,
        seed=args.seed,
        max_bad_fraction=args.max_bad_fraction,
    )
    _resolve_sources(config)
    return config


def main_from_args(args: argparse.Namespace) -> int:
    """Run `train-text`: the report alone on stdout, progress on stderr. A bad flag raises
    TrainingConfigError (exit 2), unusable data TrainingDataError (exit 1), both `UserError`s."""
    config = config_from_args(args)
    train_and_print(train_text_model, config)  # Keras' epoch lines are progress: stdout holds the report only
    return 0
