"""Tests of `train-text --ngrams 2`: words and pairs of adjacent words as tokens (fastText-style bigrams).

A pairs model learns what a bag of words cannot (word order), keeps the job's contract (the job
embeds it as it is), and the word-vector tools see its words only."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_tools_support import run_cli, sentiment_sentences

from pipeline.cli import exit_status
from pipeline.tools import similar_words, word_vectors
from pipeline.tools.word_vectors import load_word_vectors
from pipeline.train import text as train_text
from pipeline.train.skipgram import tokenize_corpus
from pipeline.train.text import TextTrainingConfig, TrainingConfigError, train_text_model
from pipeline.train.vectors import sif_weights
from tests_support import train_text_args, train_text_config

_ANIMALS = ("dog", "cat", "wolf", "fox", "bear", "lion")
_PEOPLE = ("man", "woman", "boy", "girl", "child", "king")
_VERBS = ("bites", "chases", "sees", "follows", "scares")


_args, _config = train_text_args, train_text_config


def _write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _tokens(path) -> list[str]:
    import keras

    return [str(t) for t in keras.saving.load_model(path, safe_mode=True).get_layer("vectorize").get_vocabulary()]


@pytest.fixture(scope="module")
def pairs_model(tmp_path_factory):
    """A small sentiment model trained with --ngrams 2 (defaults for --vocab-size and --sequence-length)."""
    folder = tmp_path_factory.mktemp("pairs")
    data = _write_jsonl(folder / "train.jsonl", [{"text": t, "label": y} for t, y in sentiment_sentences(200)])
    config = _config("--input", str(data), "--output", str(folder / "pairs.keras"), "--ngrams", "2")
    config = dataclasses.replace(config, embedding_dim=8, epochs=3, batch_size=16)
    return pathlib.Path(config.output), train_text_model(config)


# --- 6: pairs learn word order, words cannot -----------------------------------------------------


def _word_order_rows() -> list[dict]:
    """Label 1: an animal does something to a person ("dog bites man"); 0: the same words the other way
    round ("man bites dog"). Every text's bag of words is also the bag of a text of the other label."""
    rows = []
    for animal, verb, person in itertools.product(_ANIMALS, _VERBS, _PEOPLE):
        rows += [{"text": f"{animal} {verb} {person}", "label": 1}, {"text": f"{person} {verb} {animal}", "label": 0}]
    return rows  # 360 texts


def _word_order_and_unique_pair_rows() -> list[dict]:
    """`_word_order_rows` and 40 texts of a pair seen once each ("zulu3 yankee3"): some land in the
    validation part only."""
    return _word_order_rows() + [{"text": f"zulu{i} yankee{i}", "label": i % 2} for i in range(40)]


def test_pairs_learn_word_order_that_words_cannot(tmp_path):
    data = _write_jsonl(tmp_path / "order.jsonl", _word_order_rows())

    def accuracy(ngrams: str) -> float:
        config = _config(
            "--input", str(data), "--output", str(tmp_path / f"n{ngrams}.keras"), "--ngrams", ngrams, "--embedding-dim", "8"
        )
        config = dataclasses.replace(config, epochs=30, patience=30, batch_size=16, learning_rate=0.01, dropout=0.0)
        return train_text_model(config)["val_accuracy"]

    words, pairs = accuracy("1"), accuracy("2")
    assert words <= 0.7, words
    assert pairs >= 0.9, pairs


# --- 1, 2: the flag, the defaults, the vectorize layers -----------------------------------------


def test_a_pairs_model_has_pairs_in_its_vocabulary_and_the_report_says_so(pairs_model):
    import keras

    path, report = pairs_model
    model = keras.saving.load_model(path, safe_mode=True)
    vectorize = model.get_layer("vectorize")
    assert vectorize.get_config()["ngrams"] == 2
    assert vectorize.get_config()["output_sequence_length"] == 64  # words, then pairs, share the 64 tokens
    tokens = _tokens(path)
    pairs = [t for t in tokens if " " in t]
    assert pairs and "the" in tokens
    assert report["pairs"] == len(pairs) and report["words"] == len(tokens) - 2 - len(pairs)
    settings = report["settings"]
    assert (settings["ngrams"], settings["sequence_length"], settings["vocab_size"]) == (2, 64, train_text.PAIRS_VOCAB_SIZE)
    # The words of a text, then its pairs: "good film" is 3 tokens
    ids = np.asarray(vectorize(np.array(["good film"])))[0]
    assert [tokens[i] for i in ids[:3]] == ["good", "film", "good film"] and not ids[3:].any()


def test_the_default_is_words_as_before(tmp_path):
    config = TextTrainingConfig(output=str(tmp_path / "m.keras"), inputs=("x.jsonl",))
    assert config.ngrams == 1 and config.describe()["ngrams"] == 1
    assert (config.effective_vocab_size, config.sequence_length) == (20000, 64)
    # the words' layer is configured as before --ngrams existed (ngrams=None), so its models are the same
    model = train_text.build_text_model(config, ["", "[UNK]", "good", "bad"])
    assert model.get_layer("vectorize").get_config()["ngrams"] is None


def test_ngrams_is_refused_with_skipgram_alone():
    with pytest.raises(TrainingConfigError) as caught:
        TextTrainingConfig(output="m.keras", inputs=("x.jsonl",), objective="skipgram", ngrams=2)
    message = str(caught.value)
    assert "--ngrams" in message and "--objective skipgram" in message and "\n" not in message
    assert (
        exit_status("train-text", lambda: TextTrainingConfig(output="m.keras", inputs=("x",), objective="skipgram", ngrams=2))
        == 2
    )
    # skipgram+classify takes pairs; its words keep the words' default cap
    config = TextTrainingConfig(output="m.keras", inputs=("x.jsonl",), objective="skipgram+classify", ngrams=2)
    assert config.effective_vocab_size == train_text.WORDS_VOCAB_SIZE
    with pytest.raises(SystemExit):
        _args("--output", "m.keras", "--ngrams", "3")  # argparse: invalid choice


def test_frozen_vectors_are_refused_with_pairs():
    """--freeze-vectors freezes the whole Embedding layer: the pairs (no file has them) would stay random."""
    with pytest.raises(TrainingConfigError, match="--freeze-vectors cannot go with --ngrams 2"):
        TextTrainingConfig(output="m.keras", inputs=("x.jsonl",), ngrams=2, init_vectors="v.txt", freeze_vectors=True)
    TextTrainingConfig(output="m.keras", inputs=("x.jsonl",), ngrams=2, init_vectors="v.txt")  # trainable: fine


def test_min_count_applies_to_pairs(tmp_path):
    corpus = tokenize_corpus(["good film", "good film", "good plot"], vocab_size=100, min_count=2, ngrams=2)
    assert corpus.vocabulary == ["", "[UNK]", "good", "good film", "film"]  # "plot" and "good plot" once: out
    assert set(tokenize_corpus(["good film"], vocab_size=100).vocabulary) == {"", "[UNK]", "good", "film"}  # default: words

    rows = [{"text": t, "label": y} for t, y in sentiment_sentences(100)]
    rows[0]["text"] += " zebra yak"  # the pair "zebra yak" once, and each word once
    rows[1]["text"] += " okapi okapi"  # "okapi" twice, "okapi okapi" once
    data = _write_jsonl(tmp_path / "r.jsonl", rows)
    config = _config(
        "--input", str(data), "--output", str(tmp_path / "m.keras"), "--ngrams", "2", "--min-count", "2", "--epochs", "1",
        validation_split=0.01,
    )  # fmt: skip
    train_text_model(config)
    tokens = _tokens(config.output)
    assert "okapi" in tokens and "okapi okapi" not in tokens and "zebra yak" not in tokens and "yak" not in tokens
    pairs = [t for t in tokens if " " in t]
    counts = tokenize_corpus([r["text"] for r in rows], vocab_size=10**6, ngrams=2)
    seen = dict(zip(counts.vocabulary, counts.counts))
    assert pairs and all(seen[p] >= 2 for p in pairs)


def test_sif_pooling_counts_pairs(tmp_path):
    vocabulary = ["", "[UNK]", "good", "film", "good film"]
    counts = train_text._token_counts(vocabulary, ["good film", "good film now"], ngrams=2)
    assert counts.tolist() == [0, 2, 2, 2, 2]  # [UNK]: "now" and "film now"
    data = _write_jsonl(tmp_path / "r.jsonl", [{"text": t, "label": y} for t, y in sentiment_sentences(100)])
    config = _config("--input", str(data), "--output", str(tmp_path / "sif.keras"), "--ngrams", "2", "--pooling", "sif")
    report = train_text_model(dataclasses.replace(config, epochs=1, embedding_dim=8))
    assert report["pairs"] > 0 and np.isfinite(report["val_loss"])


def test_init_vectors_cover_words_and_pairs_start_random(tmp_path):
    rng = np.random.default_rng(0)
    file_words = ["good", "great", "bad", "film", "the"]
    vectors = tmp_path / "v.txt"
    vectors.write_text("".join(f"{w} " + " ".join(f"{x:.4f}" for x in rng.normal(size=8)) + "\n" for w in file_words))
    data = _write_jsonl(tmp_path / "r.jsonl", [{"text": t, "label": y} for t, y in sentiment_sentences(100)])
    config = _config(
        "--input", str(data), "--output", str(tmp_path / "m.keras"), "--ngrams", "2", "--init-vectors", str(vectors),
        "--embedding-dim", "8", "--epochs", "1",
    )  # fmt: skip
    report = train_text_model(config)
    coverage = report["init_vectors"]
    tokens = _tokens(config.output)
    words = [t for t in tokens[2:] if " " not in t]
    assert coverage["vocabulary_words"] == len(words) == report["words"]  # words only: the pairs are not counted
    assert coverage["pairs"] == report["pairs"] == len(tokens) - 2 - len(words) > 0
    assert coverage["covered_words"] == len(file_words)
    assert coverage["covered_fraction"] == round(len(file_words) / len(words), 4)
    assert not any(" " in w for w in coverage["missing_examples"])


# --- 4: the word-vector tools see words only -----------------------------------------------------


def test_export_of_a_pairs_model_leaves_the_pairs_out_and_says_how_many(pairs_model, tmp_path, capsys):
    import keras

    path, report = pairs_model
    out = tmp_path / "words.parquet"
    assert run_cli(word_vectors, ["--text-model", str(path), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = pq.read_table(out)
    tokens = table.column("token").to_pylist()
    assert not any(" " in t for t in tokens)
    assert summary["pairs_left_out"] == report["pairs"] > 0
    assert summary["words"] == report["words"] and table.num_rows == summary["rows"] == summary["words"] + 1
    model = keras.saving.load_model(path, safe_mode=True)
    vocabulary = model.get_layer("vectorize").get_vocabulary()
    indices = table.column("index").to_numpy()
    assert [vocabulary[i] for i in indices] == tokens  # the index is the model's own token id
    weights = model.get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(np.stack(table.column("vector").to_numpy(zero_copy_only=False)), weights[indices])
    assert run_cli(word_vectors, ["--text-model", str(path), "--out", str(tmp_path / "w2.parquet")]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pairs left out")]
    assert f"{report['pairs']:,}" in line


def test_similar_words_of_a_pairs_model_are_words(pairs_model, capsys):
    path, report = pairs_model
    words = load_word_vectors(str(path))
    assert words.pairs == report["pairs"] and words.words == report["words"]
    every = similar_words.similar_words(words, "good", k=10**6)
    assert len(every) == words.words - 1  # every other word, and no pair
    assert not any(" " in row["word"] for row in every)
    assert run_cli(similar_words, ["--text-model", str(path), "--word", "great", "-k", "5", "--json"]) == 0
    assert not any(" " in json.loads(line)["word"] for line in capsys.readouterr().out.splitlines())
    assert words.token_ids("Good film!") == [words.vocabulary.index("good"), words.vocabulary.index("film")]  # not the pair
    assert run_cli(similar_words, ["--text-model", str(path), "--word", "good film"]) == 2
    assert "is 2 words to this model; give one word" in capsys.readouterr().err


# --- 5: the job embeds a pairs model as it is ----------------------------------------------------


def test_the_job_embeds_a_pairs_model_as_the_model_does(pairs_model, tmp_path):
    import keras
    import tensorflow as tf

    from pipeline.run import run
    from pipeline.tools.store import open_embeddings
    from transforms.embed.models import TextModelSpec, load_text_embedder

    path, _ = pairs_model
    texts = [t for t, _ in sentiment_sentences(30, seed=5)] + ["a great film, not a bad one", "good"]
    embedder = load_text_embedder(TextModelSpec(str(path), batch_size=8))
    model = keras.saving.load_model(path, safe_mode=True)
    direct = keras.Model(model.inputs, model.get_layer("text_embedding").output)
    expected = np.concatenate([np.asarray(direct(tf.constant(texts[i : i + 8])[:, None])) for i in range(0, len(texts), 8)])
    np.testing.assert_array_equal(embedder.embed(texts), expected)
    assert embedder.sequence_length == 64

    records = _write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)])
    output = tmp_path / "out"
    run(["--output", str(output), "--text-input", str(records), "--text-model", str(path), "--text-batch-size", "8"])
    embeddings = open_embeddings(str(output), "text")
    assert embeddings.num_rows() == len(texts)
    rows = {}
    for batch in embeddings.record_batches(["id", "embedding"]):
        rows.update(zip(batch.column("id").to_pylist(), batch.column("embedding").to_pylist()))
    written = np.asarray([rows[f"r{i}"] for i in range(len(texts))], np.float32)
    np.testing.assert_array_equal(written, expected)  # the job's rows are the model's own embeddings


# --- skipgram+classify --ngrams 2: the skip-gram words, the training texts' pairs ----------------

_UNLABELLED_ONLY = "quartz lizard"  # a pair (and words) of the unlabelled text only


def _unlabelled_file(folder: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(3)
    words = _ANIMALS + _PEOPLE + _VERBS + ("the", "a", "near", "often")
    lines = [" ".join(rng.choice(words, 8)) for _ in range(300)] + [f"the {_UNLABELLED_ONLY} sleeps"] * 3
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _adjacent_pairs(texts) -> list[str]:
    return [f"{a} {b}" for text in texts for a, b in zip(text.split(), text.split()[1:])]


def _train_seeing_skipgram(config: TextTrainingConfig) -> tuple[dict, dict]:
    """Train, keeping what the skip-gram stage returned (its texts, vocabulary and vectors)."""
    seen: dict = {}
    real = train_text._pretrain

    def pretrain(config, texts):
        out = real(config, texts)
        seen.update(texts=list(texts), vocabulary=list(out[0]), vectors=np.array(out[2]))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_text, "_pretrain", pretrain)
        report = train_text_model(config)
    return report, seen


@pytest.fixture(scope="module")
def sg_pairs_model(tmp_path_factory):
    """skipgram+classify --ngrams 2 with fine-tuning a no-op (1 epoch at a learning rate of 1e-9); labelled
    texts of unique pairs ("zulu3 yankee3") land in both parts."""
    folder = tmp_path_factory.mktemp("sgpairs")
    rows = _word_order_and_unique_pair_rows()
    data = _write_jsonl(folder / "order.jsonl", rows)
    config = _config(
        "--objective", "skipgram+classify", "--unlabelled", str(_unlabelled_file(folder)), "--input", str(data),
        "--output", str(folder / "sgpairs.keras"), "--ngrams", "2", "--embedding-dim", "8", "--skipgram-epochs", "1",
        "--epochs", "1", "--learning-rate", "1e-9",
    )  # fmt: skip
    report, seen = _train_seeing_skipgram(config)
    return pathlib.Path(config.output), report, seen, [r["text"] for r in rows]


def test_skipgram_classify_with_pairs_learns_word_order_that_words_cannot(tmp_path):
    data = _write_jsonl(tmp_path / "order.jsonl", _word_order_rows())
    corpus = _unlabelled_file(tmp_path)

    def accuracy(ngrams: str) -> float:
        config = _config(
            "--objective", "skipgram+classify", "--unlabelled", str(corpus), "--input", str(data),
            "--output", str(tmp_path / f"n{ngrams}.keras"), "--ngrams", ngrams, "--embedding-dim", "8", "--skipgram-epochs", "2",
        )  # fmt: skip
        config = dataclasses.replace(config, epochs=30, patience=30, batch_size=16, learning_rate=0.01, dropout=0.0)
        report = train_text_model(config)
        assert "vector_scale" in report["fine_tune"]
        return report["val_accuracy"]

    words, pairs = accuracy("1"), accuracy("2")
    assert words <= 0.7, words
    assert pairs >= 0.9, pairs


def test_skipgram_classify_words_are_the_scaled_skipgram_vectors_and_pairs_the_train_parts(sg_pairs_model):
    import keras

    path, report, seen, labelled = sg_pairs_model
    model = keras.saving.load_model(path, safe_mode=True)
    tokens = [str(t) for t in model.get_layer("vectorize").get_vocabulary()]
    words = seen["vocabulary"]
    n = len(words)
    assert tokens[:n] == words and len(set(tokens)) == len(tokens)  # the skip-gram's words, then pairs: no collision
    pairs = tokens[n:]
    assert pairs and all(" " in p for p in pairs) and not any(" " in w for w in words)
    assert (report["words"], report["pairs"]) == (n - 2, len(pairs))
    assert report["settings"]["vocab_size"] == train_text.WORDS_VOCAB_SIZE

    # The words' rows: the skip-gram vectors scaled as the report says (fine-tuning was a no-op)
    weights = model.get_layer("embedding").get_weights()[0]
    scaled, scale = train_text._fine_tune_scale(seen["vectors"])
    assert report["fine_tune"] == scale and scale["vector_scale"] != 1
    np.testing.assert_allclose(weights[:n], scaled, atol=1e-6)
    # The pairs' rows: the Embedding layer's own random start, uniform in [-0.05, 0.05]
    assert np.abs(weights[n:]).max() <= 0.05 + 1e-6 and abs(weights[n:].std() - 0.05 / 3**0.5) < 0.004

    # The pairs: every pair of the labelled training texts (--min-count 1), most frequent first, and no other
    train_texts = seen["texts"][-(len(labelled) - report["val_records"]) :]
    assert len(train_texts) == report["train_records"] and not collections.Counter(train_texts) - collections.Counter(labelled)
    val_texts = list((collections.Counter(labelled) - collections.Counter(train_texts)).elements())
    assert len(val_texts) == report["val_records"]
    counts = collections.Counter(_adjacent_pairs(train_texts))
    assert set(pairs) == set(counts)
    assert [counts[p] for p in pairs] == sorted((counts[p] for p in pairs), reverse=True)
    val_only = set(_adjacent_pairs(val_texts)) - set(counts)
    assert val_only and not val_only & set(tokens)  # a pair seen in a validation text only is absent
    assert "quartz" in words and _UNLABELLED_ONLY not in tokens  # a word of the unlabelled text, not its pair

    # The vectorize layer maps a text's words, then its pairs, to their rows
    text = train_texts[0]
    ids = np.asarray(model.get_layer("vectorize")(np.array([text])))[0]
    expected = text.split() + _adjacent_pairs([text])
    assert [tokens[i] for i in ids[: len(expected)]] == expected and not ids[len(expected) :].any()


def test_skipgram_classify_pairs_cap_and_sif_counts(tmp_path, monkeypatch):
    rows = _word_order_and_unique_pair_rows()
    data = _write_jsonl(tmp_path / "order.jsonl", rows)
    monkeypatch.setattr(train_text, "PAIRS_VOCAB_SIZE", 7)
    config = _config(
        "--objective", "skipgram+classify", "--unlabelled", str(_unlabelled_file(tmp_path)), "--input", str(data),
        "--output", str(tmp_path / "sif.keras"), "--ngrams", "2", "--pooling", "sif", "--embedding-dim", "8",
        "--skipgram-epochs", "1", "--epochs", "1",
    )  # fmt: skip
    report, seen = _train_seeing_skipgram(config)
    tokens = _tokens(config.output)
    n = len(seen["vocabulary"])
    assert report["pairs"] == 7 == len(tokens) - n  # at most PAIRS_VOCAB_SIZE pairs
    train_texts = seen["texts"][-report["train_records"] :]
    counts = collections.Counter(_adjacent_pairs(train_texts))
    kept = tokens[n:]
    assert min(counts[p] for p in kept) >= max(c for p, c in counts.items() if p not in kept)  # the most frequent
    # SIF weights cover the pairs: counted in the same texts as the words (the unlabelled and training texts)
    import keras

    model = keras.saving.load_model(config.output, safe_mode=True)
    weights = model.get_layer("sif_weights").get_weights()[0].reshape(-1)
    expected = sif_weights(train_text._token_counts(tokens, seen["texts"], ngrams=2), config.sif_a)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert (weights[n:] < 1).all()  # every pair was seen: a/(a + p) < 1
    assert np.isfinite(report["val_loss"]) and report["sif"]["texts"] > 0


def test_the_job_embedder_embeds_a_skipgram_classify_pairs_model_as_the_model_does(sg_pairs_model):
    import keras
    import tensorflow as tf

    from transforms.embed.models import TextModelSpec, load_text_embedder

    path, _, _, labelled = sg_pairs_model
    texts = labelled[:20] + ["zulu1 yankee1 and a dog bites man", "quartz lizard", "king"]
    embedder = load_text_embedder(TextModelSpec(str(path), batch_size=8))
    model = keras.saving.load_model(path, safe_mode=True)
    direct = keras.Model(model.inputs, model.get_layer("text_embedding").output)
    expected = np.concatenate([np.asarray(direct(tf.constant(texts[i : i + 8])[:, None])) for i in range(0, len(texts), 8)])
    np.testing.assert_array_equal(embedder.embed(texts), expected)
