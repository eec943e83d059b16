"""Word2vec skip-gram with negative sampling (SGNS) on unlabelled text, built from Keras `Embedding` layers.

`train-text --objective skipgram` (and the first stage of `skipgram+classify`) runs this. The
steps, each on whole arrays (NumPy, or TensorFlow in one compiled step), never a Python loop per pair:

- `tokenize_corpus`: every text is standardised and split exactly as the saved model's `vectorize`
  layer will (a `TextVectorization` layer does it), the words counted, and the vocabulary made of
  the words seen at least `min_count` times, most frequent first, at most `vocab_size - 2` of them
  (padding and `[UNK]` take ids 0 and 1, as in every `train-text` model).
- per epoch, `epoch_pairs`: words outside the vocabulary are dropped (as gensim does), frequent
  words are subsampled (word2vec's formula: a word of corpus frequency f is kept with probability
  (sqrt(f / t) + 1) * t / f, t = `subsample`), and every (target, context) pair within a random
  window of 1..`window` words on either side, not crossing a text's end, is drawn with NumPy,
  then shuffled.
- `train_skipgram`: two `Embedding` tables, the target vectors (the ones kept: they become the
  model's `embedding` layer) and the context vectors, trained by Adam (learning rate decaying
  linearly to 1 % of its start) in batches; each batch draws `negatives` negative contexts per
  pair inside the compiled step, from the unigram distribution raised to the power 0.75 (a table
  of ids sampled uniformly). The draws are stateless (`tf.random.stateless_uniform`, seeded by
  (`seed`, step number)): XLA ignores the op seed of stateful draws, and with these the same
  `--seed` gives bit-identical vectors (the NumPy draws above come from one `default_rng(seed)`,
  the initial table from `keras.utils.set_random_seed(seed)`). The loss is -log sigmoid(t.c) - sum log sigmoid(-t.n). The step is
  compiled with XLA (`jit_compile=True`): 2.4x faster on CPU than without.

Measured on WikiText-2 train (2M tokens, 2 cores): see docs/training.md (moved from the README) and
`benchmarks/text_quality.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["SkipgramSettings", "Corpus", "tokenize_corpus", "epoch_pairs", "train_skipgram", "unigram_table"]

_LOG = logging.getLogger(__name__)

PADDING_ID = 0
OOV_ID = 1
_TABLE_SIZE = 2_000_000  # entries of the negative-sampling table (ids repeated in proportion to count**0.75)


@dataclasses.dataclass(frozen=True)
class SkipgramSettings:
    """The skip-gram flags (`train-text --window`, `--negatives`, ...)."""

    window: int = 5
    negatives: int = 5
    subsample: float = 1e-3
    epochs: int = 5
    batch_size: int = 16384
    learning_rate: float = 1e-2
    seed: int = 0


@dataclasses.dataclass
class Corpus:
    """Texts as token ids of one vocabulary: `ids` (all tokens, flat) and `lengths` (tokens per text)."""

    vocabulary: list[str]  # id -> word; "" (padding) and "[UNK]" first
    counts: np.ndarray  # (len(vocabulary),) int64: how often each word occurs; [UNK] counts the words left out
    ids: np.ndarray  # (tokens,) int32
    lengths: np.ndarray  # (texts,) int64

    @property
    def tokens(self) -> int:
        return int(self.ids.size)

    def texts_as_words(self) -> list[list[str]]:
        """Each text as its in-vocabulary words (what gensim is given in the benchmark)."""
        words = np.asarray(self.vocabulary, dtype=object)
        out, start = [], 0
        for n in self.lengths:
            chunk = self.ids[start : start + n]
            out.append(list(words[chunk[chunk > OOV_ID]]))
            start += n
        return out


def tokenize_corpus(texts: Sequence[str], vocab_size: int, min_count: int = 1, batch: int = 4096, ngrams: int = 1) -> Corpus:
    """Standardise, split and count `texts` as the model's `vectorize` layer will; see the module docstring.

    `ngrams=2` (train-text --ngrams 2: classify's vocabulary, skipgram+classify's pairs): the tokens are the words and the pairs of
    adjacent words ("the movie"), each text's words then its pairs, as a `vectorize` layer with
    `ngrams=2` gives them; `min_count` and `vocab_size` then apply to pairs as to words (skip-gram
    never trains on such a corpus: its windows would mix words and pairs)."""
    import keras
    import tensorflow as tf

    every = keras.layers.TextVectorization(
        standardize="lower_and_strip_punctuation", ragged=True, ngrams=ngrams if ngrams > 1 else None
    )
    every.adapt(tf.data.Dataset.from_tensor_slices(tf.constant(list(texts))).batch(batch))
    full = every.get_vocabulary()  # "", "[UNK]", then every word seen, most frequent first
    pieces, lengths = [], []
    for start in range(0, len(texts), batch):
        ragged = every(tf.constant(list(texts[start : start + batch])))
        pieces.append(ragged.flat_values.numpy().astype(np.int32))
        lengths.append(ragged.row_lengths().numpy())
    ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    counts = np.bincount(ids, minlength=len(full)).astype(np.int64)
    # The vocabulary is a prefix of `full` (sorted by count): those seen min_count times, capped.
    kept = OOV_ID + 1
    while kept < len(full) and kept < vocab_size and counts[kept] >= min_count:
        kept += 1
    ids = np.where(ids < kept, ids, OOV_ID).astype(np.int32)
    final_counts = counts[:kept].copy()
    final_counts[OOV_ID] = counts[OOV_ID:].sum() - counts[OOV_ID + 1 : kept].sum()
    return Corpus(vocabulary=list(full[:kept]), counts=final_counts, ids=ids, lengths=lengths)


def unigram_table(counts: np.ndarray, size: int = _TABLE_SIZE) -> np.ndarray:
    """Word ids repeated in proportion to count**0.75 (padding and [UNK] never drawn): uniform draws
    from it are the negative samples."""
    weights = counts.astype(np.float64) ** 0.75
    weights[: OOV_ID + 1] = 0.0
    if weights.sum() <= 0:
        raise ValueError("no word to sample negatives from")
    cumulative = np.cumsum(weights / weights.sum())
    return np.searchsorted(cumulative, (np.arange(size) + 0.5) / size).astype(np.int32).clip(OOV_ID + 1, len(counts) - 1)


def epoch_pairs(corpus: Corpus, settings: SkipgramSettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's shuffled (targets, contexts): subsampled tokens, random windows within each text."""
    text_of = np.repeat(np.arange(corpus.lengths.size, dtype=np.int32), corpus.lengths)
    keep = corpus.ids > OOV_ID
    if settings.subsample > 0:
        total = corpus.counts[OOV_ID + 1 :].sum()
        frequency = corpus.counts / max(total, 1)
        threshold = settings.subsample
        with np.errstate(divide="ignore", invalid="ignore"):
            keep_prob = np.where(frequency > 0, (np.sqrt(frequency / threshold) + 1) * threshold / frequency, 1.0)
        keep &= rng.random(corpus.ids.size) < keep_prob[corpus.ids]
    ids, texts = corpus.ids[keep], text_of[keep]
    reach = rng.integers(1, settings.window + 1, size=ids.size)  # word2vec's shrunk window per target
    targets, contexts = [], []
    for offset in range(1, settings.window + 1):
        same = texts[:-offset] == texts[offset:]
        forward = same & (reach[:-offset] >= offset)  # target i, context i + offset
        backward = same & (reach[offset:] >= offset)  # target i + offset, context i
        targets += [ids[:-offset][forward], ids[offset:][backward]]
        contexts += [ids[offset:][forward], ids[:-offset][backward]]
    targets = np.concatenate(targets) if targets else np.zeros(0, np.int32)
    contexts = np.concatenate(contexts) if contexts else np.zeros(0, np.int32)
    order = rng.permutation(targets.size)
    return targets[order], contexts[order]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_skipgram(
    corpus: Corpus,
    dimension: int,
    settings: SkipgramSettings,
    initial: Optional[np.ndarray] = None,
    trainable_rows: Optional[np.ndarray] = None,
    progress: Callable[[str], None] = _progress,
) -> dict:
    """Train SGNS vectors on `corpus`; {"vectors": (len(vocabulary), dimension) float32 target vectors,
    "history": loss per epoch, "pairs": pairs per epoch, "seconds": training time}.

    `initial` starts the target table from given vectors; `trainable_rows` (bool per row) leaves the
    other rows unchanged (frozen pretrained vectors)."""
    import keras
    import tensorflow as tf

    started = time.monotonic()
    keras.utils.set_random_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    vocab = len(corpus.vocabulary)
    if vocab <= OOV_ID + 1:
        raise ValueError("the vocabulary has no word")
    target = keras.layers.Embedding(
        vocab, dimension, embeddings_initializer=keras.initializers.RandomUniform(-0.5 / dimension, 0.5 / dimension)
    )
    context = keras.layers.Embedding(vocab, dimension, embeddings_initializer="zeros")
    target.build((None,))
    context.build((None,))
    if initial is not None:
        target.embeddings.assign(np.asarray(initial, np.float32))
    table = tf.constant(unigram_table(corpus.counts))
    row_mask = None if trainable_rows is None else tf.constant(np.asarray(trainable_rows, np.float32)[:, None])

    # An estimate of the steps, for the learning-rate decay: pairs of a first epoch times epochs.
    first = epoch_pairs(corpus, settings, rng)
    if first[0].size == 0:
        raise ValueError("the texts give no (word, context) pair: are they one word each, or all outside the vocabulary?")
    steps_per_epoch = -(-first[0].size // settings.batch_size)
    total_steps = max(1, steps_per_epoch * settings.epochs)
    schedule = keras.optimizers.schedules.PolynomialDecay(
        settings.learning_rate, total_steps, end_learning_rate=settings.learning_rate * 0.01
    )
    optimizer = keras.optimizers.Adam(schedule)
    variables = [target.embeddings, context.embeddings]
    optimizer.build(variables)
    negatives = settings.negatives

    @tf.function(jit_compile=True, reduce_retracing=True)
    def step(targets, contexts, draw_seed):
        n = tf.shape(targets)[0]
        picks = tf.random.stateless_uniform((n, negatives), draw_seed, 0, table.shape[0], dtype=tf.int32)
        drawn = tf.gather(table, picks)
        with tf.GradientTape() as tape:
            t = target(targets)  # (n, d)
            c = context(tf.concat([contexts[:, None], drawn], axis=1))  # (n, 1 + negatives, d)
            logits = tf.einsum("nd,nkd->nk", t, c)
            labels = tf.concat([tf.ones((n, 1)), tf.zeros((n, negatives))], axis=1)
            loss = tf.reduce_mean(tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), axis=1))
        grads = tape.gradient(loss, variables)
        grads = [tf.convert_to_tensor(g) for g in grads]
        if row_mask is not None:
            grads[0] = grads[0] * row_mask
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    history, pairs_per_epoch, step_number = [], [], 0
    for epoch in range(settings.epochs):
        epoch_started = time.monotonic()
        targets, contexts = first if epoch == 0 else epoch_pairs(corpus, settings, rng)
        total, batches, last_report = 0.0, 0, time.monotonic()
        for start in range(0, targets.size, settings.batch_size):
            draw_seed = tf.constant([settings.seed, step_number], dtype=tf.int64)
            total += float(
                step(targets[start : start + settings.batch_size], contexts[start : start + settings.batch_size], draw_seed)
            )
            batches += 1
            step_number += 1
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                progress(
                    f"skipgram epoch {epoch + 1}/{settings.epochs}: {min(start + settings.batch_size, targets.size):,} of "
                    f"{targets.size:,} pairs, loss {total / batches:.4f}"
                )
        history.append(total / max(batches, 1))
        pairs_per_epoch.append(int(targets.size))
        progress(
            f"skipgram epoch {epoch + 1}/{settings.epochs}: {targets.size:,} pairs, loss {history[-1]:.4f}, "
            f"{time.monotonic() - epoch_started:.1f} s"
        )
    return {
        "vectors": np.asarray(target.embeddings.numpy(), np.float32),
        "history": history,
        "pairs": pairs_per_epoch,
        "seconds": round(time.monotonic() - started, 3),
    }
