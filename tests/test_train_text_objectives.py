"""Tests of `train-text --objective skipgram|skipgram+classify`, multi-class and multi-label labels, and
`--pooling sif`; and of the word tools (similar-words, export-word-vectors, evaluate --word-similarity)
on a skip-gram model. Tiny corpora written by the tests."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import random
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_tools_support import run_cli

from pipeline.tools import evaluate, similar_words, word_vectors
from pipeline.tools.evaluate import spearman
from pipeline.train import text as train_text
from pipeline.train.skipgram import SkipgramSettings, epoch_pairs, tokenize_corpus, train_skipgram
from tests_support import train_text_config

# Planted synonyms: the two words of each pair occur in exactly the same contexts, and each pair in its own.
_PAIRS = {
    "cat": ("kitten", "the {} purred and chased a mouse under the warm sofa"),
    "car": ("truck", "he parked the {} near the garage and checked its engine oil"),
    "apple": ("pear", "she peeled a ripe juicy {} and ate it with cheese at lunch"),
    "river": ("stream", "cold water in the {} flowed past rocks toward the valley"),
}


def _write_corpus(path: pathlib.Path, lines_per_word: int = 60, seed: int = 0) -> pathlib.Path:
    rng = random.Random(seed)
    lines = []
    for word, (synonym, template) in _PAIRS.items():
        for i in range(lines_per_word):
            context = template.split()
            rng.shuffle(context)  # same bag of context words, varied order
            lines.append(" ".join(context).replace("{}", word if i % 2 else synonym))
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_config = train_text_config


_SKIPGRAM = ("--embedding-dim", "16", "--skipgram-batch-size", "256", "--skipgram-epochs", "15", "--subsample", "0")
_SKIPGRAM += ("--min-count", "1", "--skipgram-learning-rate", "0.02")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def skipgram_model(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("sg") / "words.keras"
    report = train_text.train_text_model(
        _config("--objective", "skipgram", "--unlabelled", str(corpus), "--output", str(out), *_SKIPGRAM)
    )
    return out, report


# --- skip-gram -----------------------------------------------------------------------------------


def test_pairs_stay_inside_a_text_and_within_the_window():
    corpus = tokenize_corpus(["a b c d e f", "g h"], vocab_size=100)
    targets, contexts = epoch_pairs(corpus, SkipgramSettings(window=2, subsample=0), np.random.default_rng(0))
    words = corpus.vocabulary
    position = {w: i for i, w in enumerate("abcdefgh")}
    pairs = {(words[t], words[c]) for t, c in zip(targets, contexts)}
    assert pairs, "no pair drawn"
    for t, c in pairs:
        assert (t in "abcdef") == (c in "abcdef")  # never across two texts
        assert 1 <= abs(position[t] - position[c]) <= 2
    assert ("g", "h") in pairs and ("h", "g") in pairs  # the 1-word distance is always inside the window


def test_skipgram_runs_with_the_same_seed_give_identical_vectors(corpus):
    # Subsampling on, several steps per epoch, negatives drawn inside the XLA step: every random draw is seeded.
    texts = corpus.read_text(encoding="utf-8").splitlines()
    words = tokenize_corpus(texts, vocab_size=1000)

    def vectors(seed: int) -> np.ndarray:
        settings = SkipgramSettings(epochs=2, batch_size=512, subsample=1e-2, seed=seed)
        return train_skipgram(words, 8, settings, progress=lambda _: None)["vectors"]

    first, again, other = vectors(3), vectors(3), vectors(4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_skipgram_loss_falls_and_planted_synonyms_are_nearest(skipgram_model, capsys):
    path, report = skipgram_model
    losses = report["skipgram"]["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert report["objective"] == "skipgram" and "val_accuracy" not in report
    for word, (synonym, _) in _PAIRS.items():
        assert run_cli(similar_words, ["--text-model", str(path), "--word", word, "-k", "1", "--json"]) == 0
        nearest = json.loads(capsys.readouterr().out.splitlines()[0])
        assert nearest["word"] == synonym, (word, nearest)


def test_skipgram_model_keeps_the_job_contract(skipgram_model):
    import keras

    from transforms.embed.models import TextModelSpec, load_text_embedder

    path, _ = skipgram_model
    model = keras.saving.load_model(path, safe_mode=True)
    assert [layer.name for layer in model.layers] == ["text", "vectorize", "embedding", "text_embedding"]
    embedder = load_text_embedder(TextModelSpec(str(path), batch_size=4))
    vectors = embedder.embed(["the cat purred", "...", "a truck"])
    weights = model.get_layer("embedding").get_weights()[0]
    vocabulary = model.get_layer("vectorize").get_vocabulary()
    expected = weights[[vocabulary.index("the"), vocabulary.index("cat"), vocabulary.index("purred")]].mean(axis=0)
    np.testing.assert_allclose(vectors[0], expected, rtol=1e-5, atol=1e-6)
    assert np.isnan(vectors[1]).all()  # no word: NaN, which the job turns into a dead letter


def test_export_and_word_similarity_on_a_skipgram_model(skipgram_model, tmp_path, capsys):
    path, _ = skipgram_model
    out = tmp_path / "words.parquet"
    assert run_cli(word_vectors, ["--text-model", str(path), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = pq.read_table(out)
    assert summary["dimension"] == 16 and table.num_rows == summary["rows"] == summary["words"] + 1
    assert {"cat", "kitten", "river"} <= set(table.column("token").to_pylist())

    # Pairs ranked by a human: synonyms high, unrelated words low; one pair outside the vocabulary.
    pairs = tmp_path / "similarity.txt"
    lines = ["# word1\tword2\tscore"]
    lines += [f"{w}\t{s}\t9.{i}" for i, (w, (s, _)) in enumerate(_PAIRS.items())]
    lines += ["cat\ttruck\t1.0", "apple\triver\t0.5", "car\tstream\t0.8", "pear\tkitten\t0.2", "zebra\tcat\t3.0"]
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["--text-model", str(path), "--word-similarity", str(pairs), "--json"]
    assert run_cli(evaluate, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["pairs"], report["covered_pairs"]) == (9, 8)
    assert report["missing_examples"] == ["zebra/cat"]
    assert report["spearman"] > 0.6, report

    pairs.write_text("cat\tkitten\tvery\n", encoding="utf-8")
    assert run_cli(evaluate, argv) == 2
    assert f"{pairs}:1: expected word1<TAB>word2<TAB>score" in capsys.readouterr().err


def test_spearman_matches_the_definition():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: ranks (1.5, 1.5, 3) and (1, 2, 3) -> r = 0.866
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)


# --- classify: multi-class, multi-label -----------------------------------------------------------

_TOPICS = {
    "sport": "match goal team score coach league",
    "business": "market stock shares profit bank trade",
    "science": "space nasa planet research telescope physics",
}
_SHARED = "the a today news report said on in of new".split()


def _topic_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        topic = list(_TOPICS)[i % 3]
        words = rng.sample(_SHARED, 4) + rng.sample(_TOPICS[topic].split(), 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": topic})
    return rows


def test_multi_class_string_labels_with_per_class_figures(tmp_path):
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _topic_rows(300)), encoding="utf-8")
    out = tmp_path / "topics.keras"
    report = train_text.train_text_model(
        _config("--input", str(path), "--output", str(out), "--epochs", "15", "--learning-rate", "0.02", "--embedding-dim", "16")
    )
    assert report["label_kind"] == "multiclass" and report["classes"] == ["business", "science", "sport"]
    assert report["history"]["loss"][-1] < report["history"]["loss"][0]
    assert report["val_accuracy"] > 0.9, report
    figures = {row["class"]: row for row in report["val_per_class"]}
    assert set(figures) == {"business", "science", "sport"}
    assert sum(row["support"] for row in figures.values()) == report["val_records"] == 60
    for row in figures.values():
        assert row["precision"] > 0.8 and row["recall"] > 0.8 and 0 < row["f1"] <= 1

    import keras

    model = keras.saving.load_model(out, safe_mode=True)
    assert model.get_layer("classes").units == 3  # a softmax head; the job uses text_embedding only
    assert model.get_layer("text_embedding").output.shape[-1] == 16


def test_integer_classes_like_ag_news(tmp_path):
    rows = [{"text": row["text"], "label": list(_TOPICS).index(row["label"]) + 2} for row in _topic_rows(90)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    report = train_text.train_text_model(_config("--input", str(path), "--output", str(tmp_path / "m.keras"), "--epochs", "2"))
    assert report["classes"] == ["2", "3", "4"] and report["label_kind"] == "multiclass"


def test_multi_label(tmp_path):
    rng = random.Random(1)
    rows = []
    for _ in range(300):
        chosen = sorted(rng.sample(list(_TOPICS), rng.choice([1, 2])))
        words = rng.sample(_SHARED, 3) + [w for t in chosen for w in rng.sample(_TOPICS[t].split(), 2)]
        rows.append({"text": " ".join(words), "label": "|".join(chosen)})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = _config(
        "--input", str(path), "--output", str(tmp_path / "m.keras"), "--multi-label", "--label-separator", "|", "--epochs", "25"
    )
    report = train_text.train_text_model(dataclasses.replace(config, learning_rate=0.02))
    assert report["label_kind"] == "multilabel" and report["classes"] == ["business", "science", "sport"]
    assert report["history"]["loss"][-1] < 0.7 * report["history"]["loss"][0]
    assert all(row["f1"] > 0.8 for row in report["val_per_class"]), report["val_per_class"]


# --- SIF pooling, skipgram+classify ---------------------------------------------------------------


def test_sif_model_reloads_in_safe_mode_with_the_same_vectors(corpus, tmp_path):
    import keras
    import tensorflow as tf

    out = tmp_path / "sif.keras"
    report = train_text.train_text_model(
        _config("--objective", "skipgram", "--pooling", "sif", "--unlabelled", str(corpus), "--output", str(out), *_SKIPGRAM)
    )
    assert report["sif"]["a"] == 1e-3 and 0 < report["sif"]["first_component_variance_share"] <= 1
    with zipfile.ZipFile(out) as saved:  # the vectors are in model.weights.h5 only, not copied into the JSON
        config = saved.read("config.json").decode()  # (as a Constant initializer: 56 MB, 12 s a load, for 20,000 x 128)
    assert "Constant" not in config and "Infinity" not in config
    model = keras.saving.load_model(out, safe_mode=True)
    assert "sif_weights" in [layer.name for layer in model.layers]
    texts = ["the cat purred", "he parked the truck", "!!!"]
    embed = keras.Model(model.inputs, model.get_layer("text_embedding").output)
    first = np.asarray(embed(tf.constant(texts)[:, None]))
    again = keras.saving.load_model(out, safe_mode=True)
    second = np.asarray(keras.Model(again.inputs, again.get_layer("text_embedding").output)(tf.constant(texts)[:, None]))
    np.testing.assert_array_equal(first, second)
    assert np.isnan(first[2]).all()

    # By hand: (1/n) sum a/(a+p(w)) v_w, then the first principal component u removed.
    vocabulary = model.get_layer("vectorize").get_vocabulary()
    vectors = model.get_layer("embedding").get_weights()[0]
    weights = model.get_layer("sif_weights").get_weights()[0][:, 0]
    kernel = model.get_layer("text_embedding").get_weights()[0]
    ids = [vocabulary.index(w) for w in "the cat purred".split()]
    mean = (weights[ids, None] * vectors[ids]).mean(axis=0)
    np.testing.assert_allclose(first[0], mean @ kernel, rtol=1e-4, atol=1e-7)
    u = np.linalg.eigh(np.eye(len(kernel)) - kernel)[1][:, -1]  # the removed direction
    np.testing.assert_allclose(kernel, np.eye(len(kernel)) - np.outer(u, u), atol=1e-5)
    assert abs(first[0] @ u) < 1e-5
    assert weights[vocabulary.index("the")] < weights[vocabulary.index("purred")]  # frequent words weigh less


def test_sif_pooling_gives_what_the_multiply_and_masked_mean_construction_gave(tmp_path):
    # The SIF model sums with one Dot over the tokens (Multiply + masked GlobalAveragePooling1D on the
    # (batch, 64, d) vectors ran at half the mean model's speed); the vectors are those of the old layers.
    import keras
    import tensorflow as tf

    words = ["the", "cat", "purred", "truck", "engine"]
    vocabulary = ["", "[UNK]", *words]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(vocabulary), 8)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, size=len(vocabulary)).astype(np.float32)
    config = train_text.TextTrainingConfig(
        output=str(tmp_path / "m.keras"),
        unlabelled=("x",),
        objective="skipgram",
        pooling="sif",
        embedding_dim=8,
        sequence_length=6,
    )
    model = train_text.build_text_model(config, vocabulary, vectors, weights)
    kernel = np.eye(8, dtype=np.float32) - np.outer(vectors[3], vectors[3]) / (vectors[3] @ vectors[3])
    model.get_layer("text_embedding").kernel.assign(kernel)

    text = keras.Input(shape=(1,), dtype="string")
    tokens = model.get_layer("vectorize")(text)
    old_vectors = keras.layers.Embedding(
        len(vocabulary), 8, mask_zero=True, embeddings_initializer=keras.initializers.Constant(vectors)
    )
    old_weights = keras.layers.Embedding(
        len(vocabulary), 1, mask_zero=True, embeddings_initializer=keras.initializers.Constant(weights[:, None])
    )
    weighted = keras.layers.Multiply()([old_vectors(tokens), old_weights(tokens)])
    pooled = keras.layers.GlobalAveragePooling1D()(weighted)
    old = keras.Model(text, keras.layers.Dense(8, use_bias=False, kernel_initializer=keras.initializers.Constant(kernel))(pooled))

    texts = ["the cat purred", "truck", "the truck engine, the cat!", "unknown words and the cat", "the " * 9, "", "?!"]
    batch = tf.constant(texts)[:, None]
    got, expected = np.asarray(model(batch)), np.asarray(old(batch))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # long text cut at 6 tokens, [UNK] weighted too
    assert np.isnan(got[5:]).all() and np.isfinite(got[:5]).all()  # no word: NaN, as 0 / 0 gave (the job's EmptyText)


def test_skipgram_then_classify_fine_tunes_the_pretrained_vectors(corpus, tmp_path):
    rows = [{"text": row["text"], "label": row["label"]} for row in _topic_rows(240)]
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    report = train_text.train_text_model(
        _config(
            "--objective",
            "skipgram+classify",
            "--unlabelled",
            str(corpus),
            "--input",
            str(path),
            "--output",
            str(tmp_path / "m.keras"),
            "--epochs",
            "15",
            "--learning-rate",
            "0.02",
            *_SKIPGRAM,
        )  # fmt: skip
    )
    assert report["skipgram"]["loss"][-1] < report["skipgram"]["loss"][0]
    assert report["history"]["loss"][-1] < report["history"]["loss"][0]
    assert report["val_accuracy"] > 0.9 and report["label_kind"] == "multiclass"
    # Fine-tuning starts from the skip-gram vectors scaled to the size of classify's own start (RMS of U(-0.05, 0.05)).
    scale = report["fine_tune"]
    assert scale["vector_scale"] * scale["skipgram_rms"] == pytest.approx(0.05 / 3**0.5, rel=1e-4)
    # The vocabulary holds the unlabelled corpus's words too (pre-trained), not only the labelled texts'.
    assert report["words"] > len(set(" ".join(_TOPICS.values()).split()) | set(_SHARED))
