"""The `train-text` command: train the Embedding-layer text model whose pooled layer is the text embedding.

The saved `.keras` file is the contract with the embedding job: a functional model taking one
string per row (`text`, shape `(1,)`), with the layers `vectorize` -> `embedding` -> ... ->
`text_embedding` (the record embedding). These names are defined once, in `transforms.embed.models`
(TEXT_INPUT, TEXT_VECTORIZE_LAYER, WORD_EMBEDDING_LAYER, TEXT_EMBEDDING_LAYER, TEXT_OUTPUT_LAYER).
It loads with `keras.saving.load_model(path, safe_mode=True)`: built-in layers only, so the job
embeds every model below with no change.

Objectives (`--objective`):

- `classify` (the default): a classifier head on the pooled vector, trained on labels. Labels 0/1
  (or true/false) train a binary `sentiment` head (sigmoid), as always; any other set of labels
  (strings or integers, e.g. AG News's four topics) a softmax `classes` head; `--multi-label`
  (a list, or a string split on `--label-separator`, per record) a sigmoid `classes` head of one
  unit per label. The report gives precision, recall and F1 per class on the validation part.
- `skipgram`: word2vec skip-gram with negative sampling on unlabelled text (`pipeline.train.skipgram`):
  no labels, no head; the saved model is `vectorize` -> `embedding` -> pooling.
- `skipgram+classify`: the skip-gram vectors, then `classify` fine-tunes them on the labels (with
  --ngrams 2, and pairs of words that start at random).

Pooling (`--pooling`): `mean` is the masked mean of the word vectors (GlobalAveragePooling1D named
`text_embedding`). `sif` is Arora et al. (2017)'s smooth inverse frequency: a second, frozen
Embedding `sif_weights` holds a / (a + p(w)) per token (p from the training texts), a third,
frozen `sif_share` with a Softmax over the tokens gives 1/n per real token (logit 0; padding -inf),
their product weighs the word vectors in one Dot over the tokens (`sif_mean`: the weighted average,
as fast as the plain mean; a Multiply on the (batch, 64, d) vectors and a masked mean ran at half
its speed), and a frozen bias-free Dense named `text_embedding` with the kernel I - u u^T removes
the first principal component u of the training texts' weighted averages. All built-in layers:
the weights live in the saved model.

`--ngrams 2` (classify, skipgram+classify) makes every pair of adjacent words a token too, fastText-style: the
`vectorize` layer is a TextVectorization with `ngrams=2` (each text's words, then its pairs, e.g.
"not good" beside "not" and "good"), so the mean pools word and pair vectors and the classifier can
tell "dog bites man" from "man bites dog". --vocab-size then defaults to PAIRS_VOCAB_SIZE;
--sequence-length (64) counts words and pairs (a text's words come first: 64 tokens hold all of a
text of up to 32 words, the first 64 words of a longer one); --min-count counts pairs as words.
The saved model keeps the contract: the job embeds it unchanged. Skip-gram learns word vectors only:
--ngrams 2 with --objective skipgram is refused (no classifier to use pairs); with skipgram+classify
the words are the skip-gram's (vocabulary, vectors scaled by `_fine_tune_scale`; --vocab-size caps
them as without pairs) and the pairs are those of the labelled training texts (never the validation
part; --min-count applies, most frequent first, at most PAIRS_VOCAB_SIZE), starting at random as the
Embedding layer's own start (`_training_pairs`); fine-tuning then learns both. --init-vectors starts
the words from the file and the pairs at random. The word-vector tools leave the pairs out
(`pipeline.tools.word_vectors`).

`--init-vectors FILE` starts the `embedding` layer from pretrained vectors (`pipeline.train.vectors`).

A text with no token after standardisation (empty, or punctuation only) has nothing to average:
`text_embedding` then gives NaN (0 / 0), with either pooling. Such texts are bad records here, and
the job must not embed them either.

Keras and TensorFlow are imported inside the functions that need them, so that building the
command-line parser (`python -m pipeline --help`) stays fast.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import logging
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.tools.word_vectors import is_pair, word_count, word_rows
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
from pipeline.train.skipgram import SkipgramSettings, tokenize_corpus, train_skipgram
from pipeline.train.vectors import initial_embeddings, random_rows, read_word_vectors, sif_weights
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
    "FLAGS",
    "OBJECTIVES",
    "POOLINGS",
    "TextTrainingConfig",
    "TrainingConfigError",
    "TrainingDataError",
    "TrainingRecords",
    "add_arguments",
    "build_text_model",
    "config_from_args",
    "load_training_records",
    "main_from_args",
    "per_class_figures",
    "report_path_for",
    "train_text_model",
]

_LOG = logging.getLogger(__name__)

OBJECTIVES = ("classify", "skipgram", "skipgram+classify")
POOLINGS = ("mean", "sif")
CLASSES_LAYER = "classes"  # the head of a multi-class or multi-label model (a binary one keeps TEXT_OUTPUT_LAYER)
SIF_WEIGHTS_LAYER = "sif_weights"
SIF_MEAN_LAYER = "sif_mean"
SIF_SHARE_LAYER = "sif_share"
_MAX_BAD_EXAMPLES = 10
_TRUE = ("1", "true")
_FALSE = ("0", "false")
_SIF_TEXTS = 20000  # texts whose weighted averages give the first principal component
_SKIPGRAM = SkipgramSettings()  # the defaults of the skip-gram flags (--window, --negatives, ..., --skipgram-*)
NGRAMS = (1, 2)
# --vocab-size when not given: words (--ngrams 1), and words and pairs (--ngrams 2). Measured on rt-polarity
# with seeds 10-14 (five validation splits, none of the reported seeds 0-2): words 0.7667 (mean); pairs with
# 200,000 entries 0.7775 with 128 tokens, 0.7758 with 64 (every split better than words); pairs capped at
# 20,000 entries 0.7693. --sequence-length stays 64 with pairs: 128 tokens were within noise of 64 and
# ran the model alone at 0.54x, 64 at 0.79x, today's words-only speed.
WORDS_VOCAB_SIZE = 20000
PAIRS_VOCAB_SIZE = 200000


class TrainingConfigError(UserError, ValueError):
    """A flag whose value cannot work; the message names the flag."""


class TrainingDataError(DataError, ValueError):
    """The training files cannot give a usable model (too many bad records, one class only, ...)."""


def _parse_labelled_lines(value: str) -> tuple[str, str]:
    path, sep, label = value.rpartition("=")
    if not sep or not path:
        raise TrainingConfigError(f"--labelled-lines must be FILE=LABEL, got {value!r}")
    if not label.strip():
        raise TrainingConfigError(f"--labelled-lines label must not be empty, got {value!r}")
    return path, label.strip()


def _as_tuple(values) -> tuple:
    return tuple(values or ())


_SKIPGRAM_GROUP = "skip-gram (--objective skipgram, skipgram+classify)"

# The flags of `python -m pipeline train-text`, each declared once with its default (see
# `pipeline.train.common.TrainFlag`); TextTrainingConfig's defaults are read from here.
FLAGS = (
    TrainFlag(
        "--objective",
        "classify: a classifier on labels (binary, multi-class or --multi-label); skipgram: word2vec skip-gram on "
        "unlabelled text, no labels; skipgram+classify: skip-gram, then classify fine-tunes (default: %(default)s).",
        default="classify",
        choices=OBJECTIVES,
    ),
    TrainFlag(
        "--pooling",
        "Text embedding from the word vectors: mean, or sif (frequency-weighted mean, first principal component "
        "removed; Arora et al. 2017) (default: %(default)s).",
        default="mean",
        choices=POOLINGS,
    ),
    TrainFlag(
        "--text-input",
        "Glob of JSONL, CSV, TSV or Parquet files with a text and a label field (local or gs://); with "
        "--objective skipgram the label is not needed (and plain text files are read as one text per line). Repeatable.",
        default=[],
        aliases=("--input",),
        dest="input",
        field="inputs",
        action="append",
        metavar="GLOB",
        convert=_as_tuple,
    ),
    TrainFlag(
        "--labelled-lines",
        "A plain text file (or glob) whose every line is a record with LABEL (0/1, or any class name). Repeatable.",
        default=[],
        action="append",
        metavar="FILE=LABEL",
        convert=lambda values: tuple(_parse_labelled_lines(v) for v in values or ()),
    ),
    TrainFlag(
        "--unlabelled",
        "Unlabelled text for skipgram and skipgram+classify: plain text files (one text per line) or JSONL, "
        "CSV, TSV, Parquet records (their --text-field). Repeatable.",
        default=[],
        action="append",
        metavar="GLOB",
        convert=_as_tuple,
    ),
    OUTPUT_FLAG,
    TrainFlag("--text-field", "Field/column holding the text (default: %(default)s).", default="text"),
    TrainFlag("--label-field", "Field/column holding the label (default: %(default)s).", default="label"),
    TrainFlag(
        "--multi-label",
        "Each record has any number of labels: a list, or a string split on --label-separator.",
        default=False,
        action="store_true",
    ),
    TrainFlag("--label-separator", "Separator of --multi-label strings (default: %(default)r).", default=","),
    TrainFlag(
        "--text-encoding",
        "Encoding of the input files (default: %(default)s; e.g. cp1252).",
        default="utf-8",
        aliases=("--encoding",),
        dest="encoding",
    ),
    TrainFlag(
        "--ngrams",
        "1: words; 2: words and pairs of adjacent words as tokens (fastText-style bigrams; classify and "
        "skipgram+classify, whose pairs start at random) (default: %(default)s).",
        default=1,
        type=int,
        choices=NGRAMS,
    ),
    TrainFlag(
        "--vocab-size",
        "Most vocabulary entries, padding and [UNK] included: at most this less 2 words (and pairs) "
        f"(default: {WORDS_VOCAB_SIZE:,}; {PAIRS_VOCAB_SIZE:,} with --ngrams 2). skipgram+classify --ngrams 2: "
        f"this caps the skip-gram words; the {PAIRS_VOCAB_SIZE:,} most frequent pairs at most are added.",
        type=int,
    ),
    TrainFlag(
        "--min-count",
        "Leave out of the vocabulary the words seen fewer times (default: 5 for skipgram, 1 for classify and skipgram+classify).",
        type=int,
    ),
    TrainFlag(
        "--sequence-length",
        "Tokens kept per text; with --ngrams 2 the words, then the pairs, count (default: %(default)s).",
        default=64,
        type=int,
    ),
    TrainFlag("--embedding-dim", "Size of the text embedding (default: %(default)s).", default=64, type=int),
    TrainFlag(
        "--dropout",
        "Dropout on the embedding before the classifier; 0 for none (default: %(default)s).",
        default=0.2,
        type=float,
    ),
    TrainFlag(
        "--init-vectors",
        "Start the word vectors from this file: word2vec text format (GloVe, fastText .vec; .gz too) or the "
        "Parquet of export-word-vectors. The report says how much of the vocabulary it covers.",
        metavar="FILE",
    ),
    TrainFlag(
        "--freeze-vectors",
        "Keep the --init-vectors vectors as they are (classify: the whole Embedding layer is frozen; skipgram "
        "learns only the words the file lacks).",
        default=False,
        action="store_true",
    ),
    TrainFlag(
        "--window",
        "Context words on each side, at most (default: %(default)s).",
        default=_SKIPGRAM.window,
        type=int,
        group=_SKIPGRAM_GROUP,
    ),
    TrainFlag(
        "--negatives",
        "Negative samples per (word, context) pair (default: %(default)s).",
        default=_SKIPGRAM.negatives,
        type=int,
        group=_SKIPGRAM_GROUP,
    ),
    TrainFlag(
        "--subsample",
        "Frequent-word subsampling threshold t (word2vec's `sample`); 0 keeps every word (default: %(default)s).",
        default=_SKIPGRAM.subsample,
        type=float,
        group=_SKIPGRAM_GROUP,
    ),
    TrainFlag(
        "--skipgram-epochs",
        "Passes over the text (default: %(default)s).",
        default=_SKIPGRAM.epochs,
        type=int,
        group=_SKIPGRAM_GROUP,
    ),
    TrainFlag(
        "--skipgram-batch-size",
        "Pairs per step (default: %(default)s).",
        default=_SKIPGRAM.batch_size,
        type=int,
        group=_SKIPGRAM_GROUP,
    ),
    TrainFlag(
        "--skipgram-learning-rate",
        "Adam learning rate at the start, decaying linearly to 1%% of it (default: %(default)s).",
        default=_SKIPGRAM.learning_rate,
        type=float,
        group=_SKIPGRAM_GROUP,
    ),
    TrainFlag("--sif-a", "SIF's a in a / (a + p(w)) (default: %(default)s).", default=1e-3, type=float),
    *training_flags(stage=" of the classifier", epochs=10, patience=2, batch_size=64, learning_rate=1e-3),
)


def _default(field: str):
    return flag_default(FLAGS, field)


@dataclasses.dataclass(frozen=True)
class TextTrainingConfig:
    """Validated settings of one `train-text` run."""

    output: str
    inputs: tuple[str, ...] = _default("inputs")
    labelled_lines: tuple[tuple[str, str], ...] = _default("labelled_lines")
    unlabelled: tuple[str, ...] = _default("unlabelled")
    objective: str = _default("objective")
    pooling: str = _default("pooling")
    multi_label: bool = _default("multi_label")
    label_separator: str = _default("label_separator")
    text_field: str = _default("text_field")
    label_field: str = _default("label_field")
    encoding: str = _default("encoding")
    ngrams: int = _default("ngrams")
    vocab_size: Optional[int] = _default("vocab_size")  # None: WORDS_VOCAB_SIZE, or PAIRS_VOCAB_SIZE with classify --ngrams 2
    min_count: Optional[int] = _default("min_count")  # None: 5 for skipgram, 1 for classify and skipgram+classify
    sequence_length: int = _default("sequence_length")
    embedding_dim: int = _default("embedding_dim")
    dropout: float = _default("dropout")
    epochs: int = _default("epochs")
    patience: int = _default("patience")
    batch_size: int = _default("batch_size")
    validation_split: float = _default("validation_split")
    learning_rate: float = _default("learning_rate")
    window: int = _default("window")  # the skip-gram defaults are SkipgramSettings'
    negatives: int = _default("negatives")
    subsample: float = _default("subsample")
    skipgram_epochs: int = _default("skipgram_epochs")
    skipgram_batch_size: int = _default("skipgram_batch_size")
    skipgram_learning_rate: float = _default("skipgram_learning_rate")
    sif_a: float = _default("sif_a")
    init_vectors: Optional[str] = _default("init_vectors")
    freeze_vectors: bool = _default("freeze_vectors")
    seed: int = _default("seed")
    max_bad_fraction: float = _default("max_bad_fraction")
    verbose: int = 2

    def __post_init__(self):
        check_output(self.output, TrainingConfigError)
        if self.objective not in OBJECTIVES:
            raise TrainingConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.pooling not in POOLINGS:
            raise TrainingConfigError(f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.objective == "skipgram":
            if not self.inputs and not self.labelled_lines and not self.unlabelled:
                raise TrainingConfigError(
                    "give training text with --unlabelled GLOB (plain lines or records) or --text-input GLOB"
                )
        elif not self.inputs and not self.labelled_lines:
            raise TrainingConfigError("give training data with --text-input GLOB or --labelled-lines FILE=LABEL")
        if self.unlabelled and self.objective == "classify":
            raise TrainingConfigError("--unlabelled text is for --objective skipgram or skipgram+classify, not classify")
        if self.freeze_vectors and not self.init_vectors:
            raise TrainingConfigError("--freeze-vectors needs --init-vectors FILE")
        if self.freeze_vectors and self.ngrams > 1:
            # the whole Embedding layer is frozen: the pairs, which no file has, would keep their random start
            raise TrainingConfigError(
                "--freeze-vectors cannot go with --ngrams 2: the pairs' vectors start at random and must learn"
            )
        if self.multi_label and not self.label_separator:
            raise TrainingConfigError("--label-separator must not be empty")
        for path, label in self.labelled_lines:
            if not str(label).strip():
                raise TrainingConfigError(f"--labelled-lines label must not be empty, for {path!r}")
        for flag, value in (("--text-field", self.text_field), ("--label-field", self.label_field)):
            if not value:
                raise TrainingConfigError(f"{flag} must not be empty")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise TrainingConfigError(f"--text-encoding {self.encoding!r} is not an encoding Python knows") from None
        if self.ngrams not in NGRAMS:
            raise TrainingConfigError(f"--ngrams must be 1 or 2, got {self.ngrams!r}")
        if self.ngrams > 1 and not self.classifies:
            raise TrainingConfigError(
                f"--ngrams {self.ngrams} is for --objective classify or skipgram+classify, not --objective {self.objective} "
                "(skip-gram learns word vectors only, and it has no classifier to use pairs)"
            )
        if self.vocab_size is not None:
            _at_least("--vocab-size", self.vocab_size, 3)  # padding, [UNK] and one word
        if self.min_count is not None:
            _at_least("--min-count", self.min_count, 1)
        _at_least("--sequence-length", self.sequence_length, 1)
        _at_least("--embedding-dim", self.embedding_dim, 1)
        _at_least("--epochs", self.epochs, 1)
        _at_least("--patience", self.patience, 0)
        _at_least("--batch-size", self.batch_size, 1)
        _at_least("--window", self.window, 1)
        _at_least("--negatives", self.negatives, 1)
        _at_least("--skipgram-epochs", self.skipgram_epochs, 1)
        _at_least("--skipgram-batch-size", self.skipgram_batch_size, 1)
        _at_least("--seed", self.seed, 0)
        if not 0 <= self.subsample < 1:
            raise TrainingConfigError(f"--subsample must be in [0, 1), got {self.subsample}")
        if not self.sif_a > 0:
            raise TrainingConfigError(f"--sif-a must be positive, got {self.sif_a}")
        check_training_settings(
            TrainingConfigError,
            self.validation_split,
            self.dropout,
            (("--learning-rate", self.learning_rate), ("--skipgram-learning-rate", self.skipgram_learning_rate)),
            self.max_bad_fraction,
        )

    @property
    def report_path(self) -> str:
        """Where the training report goes: `MODEL.keras` -> `MODEL.training.json`."""
        return report_path_for(self.output)

    @property
    def pretrains(self) -> bool:
        return self.objective in ("skipgram", "skipgram+classify")

    @property
    def classifies(self) -> bool:
        return self.objective in ("classify", "skipgram+classify")

    @property
    def effective_vocab_size(self) -> int:
        if self.vocab_size is not None:
            return self.vocab_size
        # skipgram+classify: --vocab-size caps the skip-gram words; the pairs are capped apart (`_training_pairs`)
        return PAIRS_VOCAB_SIZE if self.ngrams > 1 and not self.pretrains else WORDS_VOCAB_SIZE

    @property
    def effective_min_count(self) -> int:
        # skipgram+classify keeps the rare words: the classifier learns them (rt-polarity: 0.767 with 5, 0.779 with 1)
        return self.min_count if self.min_count is not None else (5 if self.objective == "skipgram" else 1)

    def skipgram_settings(self) -> SkipgramSettings:
        return SkipgramSettings(
            window=self.window,
            negatives=self.negatives,
            subsample=self.subsample,
            epochs=self.skipgram_epochs,
            batch_size=self.skipgram_batch_size,
            learning_rate=self.skipgram_learning_rate,
            seed=self.seed,
        )

    def describe(self) -> dict:
        """The settings as plain JSON-able values, for the report."""
        settings = dataclasses.asdict(self)
        settings["inputs"] = list(self.inputs)
        settings["unlabelled"] = list(self.unlabelled)
        settings["labelled_lines"] = {path: label for path, label in self.labelled_lines}
        settings["min_count"] = self.effective_min_count
        settings["vocab_size"] = self.effective_vocab_size
        return settings


def _at_least(flag: str, value: int, minimum: int) -> None:
    check_at_least(flag, value, minimum, TrainingConfigError)


# ---------------------------------------------------------------------------------------------
# Reading the training records


@dataclasses.dataclass(frozen=True)
class TrainingRecords:
    """Labelled texts and their labels (as read: strings, or tuples of strings for --multi-label),
    unlabelled texts, in file order, and what was rejected."""

    texts: tuple[str, ...]
    labels: tuple
    bad_records: int
    bad_examples: tuple[str, ...]
    files: tuple[str, ...]
    unlabelled: tuple[str, ...] = ()

    @property
    def bad_fraction(self) -> float:
        total = len(self.texts) + len(self.unlabelled) + self.bad_records
        return self.bad_records / total if total else 0.0


def _label_text(value: object) -> str:
    """One class name: ints as digits, strings stripped; ValueError (naming the value) for anything else."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"label {value!r} is not a class name (a non-empty string or an integer)")


def _binary_label(value: object) -> Optional[int]:
    """0 or 1 from an int, a bool, or the strings "0"/"1"/"true"/"false"; None otherwise."""
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
    return None


def _multi_labels(value: object, separator: str) -> tuple[str, ...]:
    """The labels of one --multi-label record: a list, or a string split on `separator`."""
    if isinstance(value, str):
        parts = {p.strip() for p in value.split(separator)}
        return tuple(sorted(p for p in parts if p))
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(sorted({_label_text(v) for v in value}))
    return (_label_text(value),)


def _settle_labels(raw: list, config: TextTrainingConfig, reject) -> list:
    """The labels as trained (None: the record is rejected, with the reason, through `reject(index, reason)`).

    Binary (ints 0/1) when all but at most --max-bad-fraction of the labels are 0/1/true/false, as
    the sentiment model has always been trained: the other labels are then bad records (a stray
    "yes" or 2 is a mistake, not a third class). Otherwise multi-class: every label is a class name
    (strings, integers). --multi-label: tuples of class names."""
    out: list = []
    if config.multi_label:
        for index, value in enumerate(raw):
            try:
                out.append(_multi_labels(value, config.label_separator))
            except ValueError as exc:
                reject(index, str(exc))
                out.append(None)
        return out
    binary = [_binary_label(v) for v in raw]
    if raw and sum(b is not None for b in binary) >= (1 - config.max_bad_fraction) * len(raw):
        for index, (value, label) in enumerate(zip(raw, binary)):
            if label is None:
                reject(index, f'label {value!r} is not 0/1, "0"/"1" or a boolean')
        return binary
    for index, value in enumerate(raw):
        try:
            out.append(_label_text(value))
        except ValueError as exc:
            reject(index, str(exc))
            out.append(None)
    return out


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


_UNLABELLED = object()  # the "label" of a source read for its text only


def _resolve_sources(config: TextTrainingConfig) -> list[tuple[str, str, object]]:
    """(path, format, fixed label, None (read it) or _UNLABELLED) for every file, checking each glob matches."""
    sources: list[tuple[str, str, object]] = []
    for pattern in config.inputs:
        for path in _match_files("--text-input", pattern):
            fmt = detect_format(path)
            if fmt == "lines" and config.classifies:
                raise TrainingConfigError(
                    f"--text-input {pattern!r}: {path} is not JSONL, CSV, TSV or Parquet (by its extension), so it has "
                    f"no label field; for a plain text file of one label use --labelled-lines FILE=LABEL"
                )
            sources.append((path, fmt, None if config.classifies else _UNLABELLED))
    for pattern, label in config.labelled_lines:
        for path in _match_files("--labelled-lines", pattern):
            sources.append((path, "lines", label))
    for pattern in config.unlabelled:
        for path in _match_files("--unlabelled", pattern):
            sources.append((path, detect_format(path), _UNLABELLED))
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
    """Every (text, label) and unlabelled text of the configured files; bad lines are counted with a few examples kept."""
    texts: list[str] = []
    labels: list = []
    origins: list[str] = []
    unlabelled: list[str] = []
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
                if fmt == "lines" and isinstance(text, str) and not text.strip():
                    continue  # a blank line in a plain text file is not a record
                if not isinstance(text, str):
                    if config.text_field not in record:
                        reason = "missing"
                    else:
                        reason = "null" if text is None else f"{type(text).__name__}, not a string"
                    reject(where, f"text field {config.text_field!r} is {reason}")
                    continue
                if fixed_label is _UNLABELLED:
                    unlabelled.append(text)  # texts without a word add nothing to skip-gram: kept, harmless
                    continue
                if fixed_label is not None:
                    label = fixed_label
                elif config.label_field not in record:
                    reject(where, f"label field {config.label_field!r} is missing")
                    continue
                else:
                    label = record[config.label_field]
                texts.append(text)
                labels.append(label)
                origins.append(where)

    keep = np.ones(len(texts), dtype=bool)
    if config.classifies:
        labels = _settle_labels(labels, config, lambda index, reason: reject(origins[index], reason))
        keep &= np.asarray([label is not None for label in labels], dtype=bool)
    worded = _has_tokens(texts)
    for index in np.flatnonzero(keep & ~worded):
        reject(origins[index], "text has no word once lower-cased and stripped of punctuation")
    keep &= worded
    return TrainingRecords(
        texts=tuple(t for t, k in zip(texts, keep) if k),
        labels=tuple(label for label, k in zip(labels, keep) if k),
        bad_records=bad,
        bad_examples=tuple(examples),
        files=tuple(path for path, _, _ in sources),
        unlabelled=tuple(unlabelled),
    )


@dataclasses.dataclass(frozen=True)
class LabelCoding:
    """How labels become training targets: `kind` binary|multiclass|multilabel and the class names."""

    kind: str
    classes: tuple[str, ...]

    @property
    def head_units(self) -> int:
        return 1 if self.kind == "binary" else len(self.classes)

    def encode(self, labels: Sequence) -> np.ndarray:
        if self.kind == "binary":
            return np.asarray(labels, dtype=np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        if self.kind == "multiclass":
            return np.asarray([index[v] for v in labels], dtype=np.int32)
        out = np.zeros((len(labels), len(self.classes)), dtype=np.float32)
        for row, values in enumerate(labels):
            out[row, [index[v] for v in values]] = 1.0
        return out


def _sort_key(name: str):
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _label_coding(records: TrainingRecords, config: TextTrainingConfig) -> LabelCoding:
    if config.multi_label:
        names = sorted({v for values in records.labels for v in values}, key=_sort_key)
        return LabelCoding("multilabel", tuple(names))
    if all(isinstance(v, int) for v in records.labels):
        return LabelCoding("binary", ("0", "1"))
    return LabelCoding("multiclass", tuple(sorted(set(records.labels), key=_sort_key)))


def _check_records(records: TrainingRecords, config: TextTrainingConfig) -> Optional[LabelCoding]:
    """Refuse data that would give a meaningless model, with the reason and examples of bad lines; the label coding."""
    total = len(records.texts) + len(records.unlabelled) + records.bad_records
    if records.bad_fraction > config.max_bad_fraction:
        shown = "\n  ".join(records.bad_examples)
        raise TrainingDataError(
            f"{records.bad_records} of {total} records are bad ({records.bad_fraction:.1%} > "
            f"--max-bad-fraction {config.max_bad_fraction:.0%}); first ones:\n  {shown}"
        )
    if not config.classifies:
        if not records.texts and not records.unlabelled:
            raise TrainingDataError("the training files hold no text")
        return None
    coding = _label_coding(records, config)
    if coding.kind == "binary":
        classes = set(records.labels)
        if classes != {0, 1}:
            raise TrainingDataError(
                f"training needs both labels 0 and 1; the {len(records.texts)} good records have only {sorted(classes)}"
            )
    elif len(coding.classes) < 2:
        raise TrainingDataError(
            f"training needs at least two different labels; the {len(records.texts)} good records have only "
            f"{list(coding.classes)}"
        )
    n_val = round(len(records.texts) * config.validation_split)
    if n_val < 1 or len(records.texts) - n_val < 1:
        raise TrainingDataError(
            f"{len(records.texts)} good records cannot be split with --validation-split {config.validation_split}"
        )
    return coding


# ---------------------------------------------------------------------------------------------
# The model


def _ngrams(ngrams: int) -> Optional[int]:
    """TextVectorization's `ngrams` for --ngrams: None for words (the layer's default: a model
    trained before --ngrams existed has the same config), 2 for words and pairs."""
    return ngrams if ngrams > 1 else None


def _adapted_vocabulary(config: TextTrainingConfig, texts: Sequence[str]) -> list[str]:
    """The vocabulary a `vectorize` layer adapted on `texts` has (padding and [UNK] first), without the
    words seen fewer than --min-count times; with --ngrams 2 the words and pairs, the rare pairs left out too."""
    import keras
    import tensorflow as tf

    if config.effective_min_count > 1:
        # the skip-gram's counting: the same standardisation and order, cut where counts fall below min_count
        vocabulary = list(
            tokenize_corpus(texts, config.effective_vocab_size, config.effective_min_count, ngrams=config.ngrams).vocabulary
        )
        if len(vocabulary) <= 2:
            raise TrainingDataError(
                f"no word occurs --min-count {config.effective_min_count} times in the {len(texts)} training texts"
            )
        return vocabulary
    probe = keras.layers.TextVectorization(
        max_tokens=config.effective_vocab_size, standardize="lower_and_strip_punctuation", ngrams=_ngrams(config.ngrams)
    )
    probe.adapt(tf.data.Dataset.from_tensor_slices(tf.constant(list(texts))).batch(1024))
    return [str(w) for w in probe.get_vocabulary()]


def build_text_model(
    config: TextTrainingConfig,
    vocabulary: Sequence[str],
    word_vectors: Optional[np.ndarray] = None,
    token_weights: Optional[np.ndarray] = None,
    coding: Optional[LabelCoding] = None,
    trainable_vectors: bool = True,
):
    """The functional model of the contract for `vocabulary` (padding and [UNK] first): `vectorize` ->
    `embedding` (from `word_vectors` when given) -> pooling -> `text_embedding`, then a classifier
    head for `coding` (none: the model's output is `text_embedding`). `token_weights` are the SIF
    weights (--pooling sif)."""
    import keras

    vectorize = keras.layers.TextVectorization(
        name=TEXT_VECTORIZE_LAYER,
        vocabulary=list(vocabulary[2:]),
        output_sequence_length=config.sequence_length,
        standardize="lower_and_strip_punctuation",
        ngrams=_ngrams(config.ngrams),
    )
    text = keras.Input(shape=(1,), dtype="string", name=TEXT_INPUT)
    tokens = vectorize(text)
    rows, dim = len(vocabulary), config.embedding_dim
    # Given values are assigned once the layers are built, never passed as a Constant initializer: that
    # would be written into the saved config.json (56 MB of JSON for 20,000 x 128 vectors, parsed at every
    # load: 12 s per load, at launch and in every worker) beside the same values in model.weights.h5.
    given: list = []
    word_layer = keras.layers.Embedding(
        name=WORD_EMBEDDING_LAYER, input_dim=rows, output_dim=dim, mask_zero=True, trainable=trainable_vectors
    )
    vectors = word_layer(tokens)
    if word_vectors is not None:
        given.append((word_layer, word_vectors))
    if config.pooling == "mean":
        pooled = keras.layers.GlobalAveragePooling1D(name=TEXT_EMBEDDING_LAYER)(vectors)  # masked mean: padding ignored
    else:
        # (1/n) sum_t a/(a+p(w_t)) v_t as one batched product over the tokens, (b, 1, 64) x (b, 64, d):
        # Multiply + masked GlobalAveragePooling1D on the (b, 64, d) vectors cost 2x the whole mean model
        # (Keras's masked Multiply broadcasts and selects on the full tensor several times).
        # `sif_share` gives 1/n per real token: a softmax over the tokens of frozen logits 0 (padding:
        # -inf, hence 0; a text with no token: all -inf, hence NaN, as the mean gives for 0 / 0).
        share_layer = keras.layers.Embedding(name=SIF_SHARE_LAYER, input_dim=rows, output_dim=1, trainable=False)
        share = keras.layers.Softmax(axis=1, name="sif_share_softmax")(share_layer(tokens))  # (b, 64, 1): 1/n, padding 0
        weights_layer = keras.layers.Embedding(name=SIF_WEIGHTS_LAYER, input_dim=rows, output_dim=1, trainable=False)
        weights = weights_layer(tokens)
        given += [(share_layer, _share_logits(rows)), (weights_layer, np.asarray(token_weights).reshape(rows, 1))]
        token_share = keras.layers.Multiply(name="sif_token_share")([weights, share])  # a/(a+p(w_t)) / n, (b, 64, 1)
        summed = keras.layers.Dot(axes=(1, 1), name="sif_sum")([token_share, vectors])  # (b, 1, d); no mask left
        mean = keras.layers.Flatten(name=SIF_MEAN_LAYER)(summed)  # (1/n) sum a/(a+p(w)) v_w
        pooled = keras.layers.Dense(
            dim, use_bias=False, trainable=False, kernel_initializer="identity", name=TEXT_EMBEDDING_LAYER
        )(mean)  # I - u u^T once u is known (`_remove_first_component`)
    for layer, values in given:
        layer.embeddings.assign(np.asarray(values, np.float32))
    if coding is None:
        return keras.Model(text, pooled, name="text_vectors")
    features = keras.layers.Dropout(config.dropout, name="dropout")(pooled) if config.dropout else pooled
    if coding.kind == "binary":
        head = keras.layers.Dense(1, activation="sigmoid", name=TEXT_OUTPUT_LAYER)(features)
        return keras.Model(text, head, name="text_sentiment")
    activation = "softmax" if coding.kind == "multiclass" else "sigmoid"
    head = keras.layers.Dense(coding.head_units, activation=activation, name=CLASSES_LAYER)(features)
    return keras.Model(text, head, name="text_classifier")


def _share_logits(rows: int) -> np.ndarray:
    """The `sif_share` logits: 0 for every word, -inf for padding (id 0)."""
    logits = np.zeros((rows, 1), np.float32)
    logits[0] = -np.inf
    return logits


def _remove_first_component(model, texts: Sequence[str], seed: int) -> dict:
    """SIF's last step: u = the first singular vector of the weighted averages of (a sample of) `texts`;
    `text_embedding`'s kernel becomes I - u u^T."""
    import keras
    import tensorflow as tf

    if len(texts) > _SIF_TEXTS:
        chosen = np.sort(np.random.default_rng(seed).choice(len(texts), _SIF_TEXTS, replace=False))
        texts = [texts[i] for i in chosen]
    means = keras.Model(model.inputs, model.get_layer(SIF_MEAN_LAYER).output)
    rows = [
        np.asarray(means(tf.constant(list(texts[i : i + 1024]))[:, None], training=False)) for i in range(0, len(texts), 1024)
    ]
    matrix = np.concatenate(rows).astype(np.float64)
    matrix = matrix[np.isfinite(matrix).all(axis=1)]
    if not len(matrix):
        raise TrainingDataError("no training text has a word in the vocabulary: SIF pooling has nothing to average")
    _, singular, vt = np.linalg.svd(matrix, full_matrices=False)
    u = vt[0]
    layer = model.get_layer(TEXT_EMBEDDING_LAYER)
    layer.kernel.assign((np.eye(len(u)) - np.outer(u, u)).astype(np.float32))
    share = float(singular[0] ** 2 / (singular**2).sum())
    return {"texts": int(len(matrix)), "first_component_variance_share": round(share, 4), "a": None}


def _dataset(texts: Sequence[str], labels: np.ndarray, batch_size: int, shuffle_seed: Optional[int] = None):
    """Batches of ((batch, 1) strings, labels); Keras cannot fit NumPy string arrays."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((tf.constant(list(texts))[:, None], tf.constant(labels)))
    if shuffle_seed is not None:
        data = data.shuffle(len(texts), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.batch(batch_size)


def _predict(model, texts: Sequence[str]) -> np.ndarray:
    import tensorflow as tf

    return np.concatenate(
        [np.asarray(model(tf.constant(list(texts[i : i + 1024]))[:, None], training=False)) for i in range(0, len(texts), 1024)]
    )


def per_class_figures(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class; `truth`/`predicted` are class numbers, or
    (rows, classes) 0/1 matrices for multi-label."""
    out = []
    for index, name in enumerate(classes):
        if truth.ndim == 2:
            real, said = truth[:, index] > 0.5, predicted[:, index] > 0.5
        else:
            real, said = truth == index, predicted == index
        hits = int((real & said).sum())
        precision = hits / said.sum() if said.sum() else 0.0
        recall = hits / real.sum() if real.sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(
            {
                "class": name,
                "precision": round(float(precision), 4),
                "recall": round(float(recall), 4),
                "f1": round(float(f1), 4),
                "support": int(real.sum()),
            }
        )
    return out


def _decisions(coding: LabelCoding, probabilities: np.ndarray) -> np.ndarray:
    if coding.kind == "binary":
        return (probabilities.reshape(-1) > 0.5).astype(np.int64)
    if coding.kind == "multiclass":
        return probabilities.argmax(axis=1)
    return (probabilities > 0.5).astype(np.float32)


def _accuracy(coding: LabelCoding, truth: np.ndarray, decided: np.ndarray) -> float:
    if coding.kind == "multilabel":
        return float((decided == truth).all(axis=1).mean())  # every label of the record right
    return float((decided == truth.astype(np.int64)).mean())


def _initial_vectors(
    config: TextTrainingConfig, vocabulary: Sequence[str], counts=None
) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[dict]]:
    if not config.init_vectors:
        return None, None, None
    pretrained = read_word_vectors(config.init_vectors)
    weights, covered, report = initial_embeddings(vocabulary, pretrained, config.embedding_dim, config.seed, counts)
    report["frozen"] = config.freeze_vectors
    _LOG.info("--init-vectors: %d of %d words covered", report["covered_words"], report["vocabulary_words"])
    return weights, covered, report


def _pretrain(config: TextTrainingConfig, texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Skip-gram vectors for the vocabulary of `texts`: (vocabulary, counts, vectors, report part)."""
    corpus = tokenize_corpus(texts, config.effective_vocab_size, config.effective_min_count)
    if len(corpus.vocabulary) <= 2:
        raise TrainingDataError(
            f"no word occurs --min-count {config.effective_min_count} times in the {len(texts)} training texts"
        )
    initial, covered, init_report = _initial_vectors(config, corpus.vocabulary, corpus.counts)
    trainable = None if not config.freeze_vectors else ~covered
    try:
        result = train_skipgram(
            corpus, config.embedding_dim, config.skipgram_settings(), initial=initial, trainable_rows=trainable
        )
    except ValueError as exc:
        raise TrainingDataError(f"skip-gram training: {exc}") from exc
    report = {
        "texts": len(texts),
        "tokens": corpus.tokens,
        "in_vocabulary_tokens": int((corpus.ids > 1).sum()),
        "pairs_per_epoch": result["pairs"],
        "loss": result["history"],
        "seconds": result["seconds"],
    }
    if init_report:
        report["init_vectors"] = init_report
    return corpus.vocabulary, corpus.counts, result["vectors"], report


def _fine_tune_scale(vectors: np.ndarray) -> tuple[np.ndarray, dict]:
    """Skip-gram vectors scaled (one factor: cosines unchanged) to the RMS of the Embedding layer's
    own start, uniform in [-0.05, 0.05], before `classify` fine-tunes them.

    Adam moves every weight by about the learning rate per step, whatever the weight's size: skip-gram
    vectors (RMS ~0.4 for 64-d on WikiText-2, 14x the uniform start's 0.029) would be fine-tuned at
    an effective rate 14x below `classify`'s from scratch at the same --learning-rate. Measured on
    rt-polarity with a seed kept out of the reported ones: the same validation accuracy (0.769 vs
    0.770), early-stopped after 9 epochs instead of 13; a frozen warm-up (0.765; frozen WikiText-2
    vectors alone reach 0.650), a lower rate (3e-4: 0.760) or classify's vocabulary (0.769) did not
    do better."""
    rows = np.asarray(vectors[2:], np.float64)  # padding and [UNK] left out (never pre-trained)
    rms = float(np.sqrt(np.mean(rows**2))) if rows.size else 0.0
    target = 0.05 / 3**0.5  # RMS of keras.initializers.RandomUniform(-0.05, 0.05), the "uniform" start
    factor = target / rms if rms > 0 else 1.0
    return (np.asarray(vectors, np.float32) * np.float32(factor)), {
        "vector_scale": round(factor, 6),
        "skipgram_rms": round(rms, 6),
    }


def _training_pairs(config: TextTrainingConfig, train_texts: Sequence[str]) -> list[str]:
    """skipgram+classify --ngrams 2: the pairs of adjacent words of the labelled training texts (never the
    validation part, nor --unlabelled), counted and cut as classify's (--min-count; most frequent first),
    at most PAIRS_VOCAB_SIZE of them. A pair holds a space and a word never does: they cannot collide."""
    corpus = tokenize_corpus(train_texts, sys.maxsize, config.effective_min_count, ngrams=config.ngrams)
    return [token for token in corpus.vocabulary[2:] if is_pair(token)][:PAIRS_VOCAB_SIZE]


def _token_counts(vocabulary: Sequence[str], texts: Sequence[str], ngrams: int = 1) -> np.ndarray:
    """How often each vocabulary id (word, or pair with --ngrams 2) occurs in `texts` (as the vectorize layer splits them)."""
    import keras
    import tensorflow as tf

    layer = keras.layers.TextVectorization(
        vocabulary=list(vocabulary[2:]), ragged=True, standardize="lower_and_strip_punctuation", ngrams=_ngrams(ngrams)
    )
    counts = np.zeros(len(vocabulary), np.int64)
    for i in range(0, len(texts), 4096):
        ids = layer(tf.constant(list(texts[i : i + 4096]))).flat_values.numpy()
        counts += np.bincount(ids, minlength=len(vocabulary))[: len(vocabulary)]
    return counts


def train_text_model(config: TextTrainingConfig) -> dict:
    """Read, pre-train and/or split and train with early stopping, save `config.output` and its report; the report's dict."""
    import keras

    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    records = load_training_records(config)
    coding = _check_records(records, config)
    report: dict = {"model": config.output, "objective": config.objective, "pooling": config.pooling}

    texts, labels, train_texts = list(records.texts), list(records.labels), list(records.texts)
    val_texts: list[str] = []
    if coding is not None:
        order = np.random.default_rng(config.seed).permutation(len(texts))
        texts = [texts[i] for i in order]
        labels = [labels[i] for i in order]
        n_val = round(len(texts) * config.validation_split)
        val_texts, train_texts = texts[:n_val], texts[n_val:]
        val_labels, train_labels = labels[:n_val], labels[n_val:]

    vectors = covered = None
    if config.pretrains:
        corpus_texts = list(records.unlabelled) + train_texts  # never the validation texts
        vocabulary, counts, vectors, report["skipgram"] = _pretrain(config, corpus_texts)
        sif_texts = corpus_texts
        if coding is not None:
            vectors, report["fine_tune"] = _fine_tune_scale(vectors)
        if config.ngrams > 1:  # skipgram+classify: the skip-gram words, then the training texts' pairs, at random
            pairs = _training_pairs(config, train_texts)
            vocabulary = list(vocabulary) + pairs
            vectors = np.concatenate([vectors, random_rows(len(pairs), config.embedding_dim, config.seed)])
            if config.pooling == "sif":  # the words' and the pairs' shares of the same texts' tokens
                counts = _token_counts(vocabulary, corpus_texts, config.ngrams)
    else:
        vocabulary = _adapted_vocabulary(config, train_texts)  # the vocabulary comes from the train part only
        vectors, covered, init_report = _initial_vectors(config, vocabulary)
        if init_report:
            report["init_vectors"] = init_report
        counts = _token_counts(vocabulary, train_texts, config.ngrams) if config.pooling == "sif" else None
        sif_texts = train_texts
    token_weights = sif_weights(counts, config.sif_a) if config.pooling == "sif" else None
    trainable = (
        not config.freeze_vectors
    )  # frozen: all rows (skipgram+classify: the rows the file lacks were learnt by skip-gram)
    model = build_text_model(config, vocabulary, vectors, token_weights, coding, trainable_vectors=trainable)

    history = stopper = None
    if coding is not None:
        y_train, y_val = coding.encode(train_labels), coding.encode(val_labels)
        loss = "sparse_categorical_crossentropy" if coding.kind == "multiclass" else "binary_crossentropy"
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
        history = model.fit(
            _dataset(train_texts, y_train, config.batch_size, shuffle_seed=config.seed),
            validation_data=_dataset(val_texts, y_val, config.batch_size),
            epochs=config.epochs,
            shuffle=False,
            callbacks=[stopper],
            verbose=config.verbose,
        )
    if config.pooling == "sif":
        report["sif"] = {**_remove_first_component(model, sif_texts, config.seed), "a": config.sif_a}
    if coding is not None:
        # The restored (best) weights, measured without dropout on both splits (after the SIF component removal).
        train_loss = float(model.evaluate(_dataset(train_texts, y_train, 1024), verbose=0))
        val_loss = float(model.evaluate(_dataset(val_texts, y_val, 1024), verbose=0))
        train_decided, val_decided = (
            _decisions(coding, _predict(model, train_texts)),
            _decisions(coding, _predict(model, val_texts)),
        )
        report.update(
            {
                "label_kind": coding.kind,
                "classes": list(coding.classes),
                "train_accuracy": _accuracy(coding, y_train, train_decided),
                "train_loss": train_loss,
                "val_accuracy": _accuracy(coding, y_val, val_decided),
                "val_loss": val_loss,
                "val_per_class": per_class_figures(
                    y_val if y_val.ndim == 2 else y_val.astype(np.int64), val_decided, coding.classes
                ),
                "train_records": len(train_texts),
                "val_records": len(val_texts),
            }
        )
        if coding.kind == "binary":
            report["train_positive"] = int(y_train.sum())
            report["val_positive"] = int(y_val.sum())
    else:
        report["train_records"] = len(records.texts) + len(records.unlabelled)
    save_model(model.inputs, model.outputs, model.name, config.output)
    model_vocabulary = model.get_layer(TEXT_VECTORIZE_LAYER).get_vocabulary()
    words = int(word_rows(model_vocabulary).sum())
    pairs = word_count(len(model_vocabulary)) - words
    report.update(
        {
            "bad_records": records.bad_records,
            "bad_examples": list(records.bad_examples),
            # the number export-word-vectors and similar-words report too: padding, [UNK] and pairs left out
            "words": words,
        }
    )
    if config.ngrams > 1:
        report["pairs"] = pairs  # vocabulary entries that are pairs of adjacent words
    if history is not None:
        report.update(
            {
                "epochs_run": len(history.history["loss"]),
                "best_epoch": int(stopper.best_epoch) + 1,
                "history": history_lists(history),
            }
        )
    report.update({"files": list(records.files), **report_footer(config.describe(), started)})
    write_report(report, config.output)
    _LOG.info("saved %s and %s", config.output, config.report_path)
    return report


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline train-text` (`FLAGS`)."""
    add_flags(parser, FLAGS)


def config_from_args(args: argparse.Namespace) -> TextTrainingConfig:
    """Validated settings from parsed flags; every glob must match a file. Raises TrainingConfigError."""
    config = TextTrainingConfig(**config_values(FLAGS, args))
    _resolve_sources(config)
    return config


def main_from_args(args: argparse.Namespace) -> int:
    """Run `train-text`: the report alone on stdout, progress on stderr. A bad flag raises
    TrainingConfigError (exit 2), unusable data TrainingDataError (exit 1), both `UserError`s;
    a bad --init-vectors file VectorFileError (exit 2)."""
    config = config_from_args(args)
    train_and_print(train_text_model, config)  # Keras' epoch lines are progress: stdout holds the report only
    return 0
