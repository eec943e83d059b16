"""Tests of `train-text`: reading labelled records, the saved model's contract, the report, the flags."""

from __future__ import annotations

import csv
import gzip
import json
import pathlib
import random
import re
import time

import numpy as np
import pytest

from pipeline.cli import exit_status
from pipeline.train import text as train_text
from pipeline.train.text import (
    TextTrainingConfig,
    TrainingConfigError,
    TrainingDataError,
    load_training_records,
    train_text_model,
)
from tests_support import train_text_args, train_text_config

REPORT_KEYS = {
    "train_accuracy",
    "train_loss",
    "val_accuracy",
    "val_loss",
    "train_records",
    "val_records",
    "bad_records",
    "words",
    "settings",
    "elapsed_seconds",
    "keras_version",
    "tensorflow_version",
}
_POSITIVE = ("good", "great")
_NEGATIVE = ("bad", "awful")
_FILLER = "the a film movie plot actors story was is really quite very and it this one".split()


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(_FILLER, 5) + [rng.choice(_POSITIVE if label else _NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words).capitalize() + rng.choice([".", "!", ""])


def _synthetic(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """Easy labelled sentences: positives say good/great, negatives bad/awful, among shared filler."""
    rng = random.Random(seed)
    return [(_sentence(rng, i % 2), i % 2) for i in range(count)]


def _write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


_args, _config = train_text_args, train_text_config


def _embedder(model):
    import keras

    return keras.Model(model.inputs, model.get_layer("text_embedding").output)


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("corpus") / "reviews.jsonl"
    return _write_jsonl(path, ({"id": i, "text": t, "label": y} for i, (t, y) in enumerate(_synthetic(200))))


@pytest.fixture(scope="module")
def trained(jsonl_corpus, tmp_path_factory):
    """One small model trained on the synthetic JSONL corpus: (config, returned report)."""
    out = tmp_path_factory.mktemp("model") / "nested" / "sentiment.keras"
    config = _config(
        "--input",
        str(jsonl_corpus),
        "--output",
        str(out),
        "--epochs",
        "8",
        "--embedding-dim",
        "16",
        "--batch-size",
        "16",
        "--learning-rate",
        "0.01",
    )
    return config, train_text_model(config)


# --- the saved model ----------------------------------------------------------------------------


def test_saved_model_loads_in_safe_mode_with_the_contract_layers(trained):
    import keras

    config, _ = trained
    model = keras.saving.load_model(config.output, safe_mode=True)
    assert [layer.name for layer in model.layers] == [
        "text",
        "vectorize",
        "embedding",
        "text_embedding",
        "dropout",
        "sentiment",
    ]
    # One row per vocabulary entry (padding and [UNK] included), no unused rows up to --vocab-size.
    assert model.get_layer("embedding").input_dim == model.get_layer("vectorize").vocabulary_size() <= config.effective_vocab_size
    assert model.get_layer("embedding").output_dim == 16
    assert model.get_layer("embedding").mask_zero is True
    assert model.inputs[0].dtype == "string" and tuple(model.inputs[0].shape) == (None, 1)
    assert getattr(model, "optimizer", None) is None  # saved uncompiled: no optimizer state


def test_text_embedding_is_batch_by_dim_float32(trained):
    import keras
    import tensorflow as tf

    config, _ = trained
    embeddings = _embedder(keras.saving.load_model(config.output, safe_mode=True))(tf.constant([["some text"], ["other"]]))
    assert embeddings.shape == (2, 16)
    assert embeddings.dtype == tf.float32
    assert np.isfinite(np.asarray(embeddings)).all()


def test_text_embedding_is_the_mean_of_the_real_tokens_only(trained):
    """Padding is masked: the embedding equals the plain mean of the text's token vectors."""
    import keras
    import tensorflow as tf

    config, _ = trained
    model = keras.saving.load_model(config.output, safe_mode=True)
    vocabulary = model.get_layer("vectorize").get_vocabulary()
    table = model.get_layer("embedding").get_weights()[0]
    text = "A GREAT film, really!"
    ids = [vocabulary.index(word) for word in ("a", "great", "film", "really")]
    expected = table[ids].mean(axis=0)
    got = np.asarray(_embedder(model)(tf.constant([[text]])))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # An unknown word is a real token ([UNK], id 1), not padding.
    unknown = np.asarray(_embedder(model)(tf.constant([["zyxwv"]])))[0]
    np.testing.assert_allclose(unknown, table[1], rtol=1e-5, atol=1e-6)


def test_text_without_tokens_embeds_as_nan(trained):
    """Documented behaviour: nothing to average gives 0/0; the embedding job dead-letters such texts."""
    import keras
    import tensorflow as tf

    config, _ = trained
    embeddings = np.asarray(_embedder(keras.saving.load_model(config.output, safe_mode=True))(tf.constant([[""], ["  ?!... "]])))
    assert np.isnan(embeddings).all()


def test_easy_synthetic_data_is_learnt(trained):
    import keras
    import tensorflow as tf

    config, report = trained
    assert report["val_accuracy"] >= 0.95
    assert report["train_accuracy"] >= 0.95
    scores = keras.saving.load_model(config.output, safe_mode=True).predict(
        tf.constant([["a great movie"], ["an awful movie"]]), verbose=0
    )
    assert scores[0, 0] > 0.5 > scores[1, 0]


# --- the report ---------------------------------------------------------------------------------


def test_report_is_saved_beside_the_model(trained, jsonl_corpus):
    config, report = trained
    path = pathlib.Path(config.output).with_name("sentiment.training.json")
    assert config.report_path == str(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    assert REPORT_KEYS <= set(saved)
    assert (saved["train_records"], saved["val_records"], saved["bad_records"]) == (160, 40, 0)
    assert saved["train_positive"] + saved["val_positive"] == 100
    assert saved["files"] == [str(jsonl_corpus)]
    # Vocabulary adapted on the train part: the words, plus padding and [UNK].
    assert saved["words"] == len(set(_FILLER) | set(_POSITIVE) | set(_NEGATIVE))
    assert saved["settings"]["embedding_dim"] == 16 and saved["settings"]["seed"] == 0
    assert 1 <= saved["best_epoch"] <= saved["epochs_run"] <= 8
    assert saved["keras_version"].startswith("3.")
    assert saved["elapsed_seconds"] > 0


def test_vocabulary_comes_from_the_train_part_only(tmp_path):
    """The split is the seeded permutation's head; a word seen only there is [UNK] to the model."""
    import keras

    rows = [{"text": t, "label": y} for t, y in _synthetic(100)]
    order = np.random.default_rng(0).permutation(100)  # validation = the first 20 of this order
    rows[order[0]]["text"] += " zebra"
    rows[order[-1]]["text"] += " yak"
    config = _config(
        "--input",
        str(_write_jsonl(tmp_path / "r.jsonl", rows)),
        "--output",
        str(tmp_path / "m.keras"),
        "--epochs",
        "1",
        "--embedding-dim",
        "4",
    )
    assert train_text_model(config)["val_records"] == 20
    vocabulary = keras.saving.load_model(config.output, safe_mode=True).get_layer("vectorize").get_vocabulary()
    assert "yak" in vocabulary
    assert "zebra" not in vocabulary


def test_min_count_leaves_rare_words_out_of_a_classifier(tmp_path):
    """--min-count applies to classify too (it used to be read by the skip-gram objectives only)."""
    import keras

    rows = [{"text": t, "label": y} for t, y in _synthetic(100)]
    order = np.random.default_rng(0).permutation(100)  # the train part is order[20:]
    rows[order[-1]]["text"] += " yak"  # once in the train part
    rows[order[-2]]["text"] += " okapi okapi"  # twice
    made = tmp_path / "r.jsonl"
    _write_jsonl(made, rows)

    def vocabulary(*flags: str) -> list[str]:
        config = _config("--input", str(made), "--output", str(tmp_path / "m.keras"), "--epochs", "1", *flags)
        train_text_model(config)
        return keras.saving.load_model(config.output, safe_mode=True).get_layer("vectorize").get_vocabulary()

    every = vocabulary()
    assert "yak" in every and "okapi" in every
    twice = vocabulary("--min-count", "2")
    assert "yak" not in twice and "okapi" in twice
    assert twice == [w for w in every if w != "yak"]  # the synthetic words all occur often: only "yak" goes
    with pytest.raises(TrainingDataError, match="--min-count 1000"):
        vocabulary("--min-count", "1000")


# --- other formats ------------------------------------------------------------------------------


def test_csv_and_tsv_with_custom_fields_and_label_spellings(tmp_path):
    rows = _synthetic(200, seed=1)
    spellings = {1: ["1", "true", "True"], 0: ["0", "false", "FALSE"]}
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for i, (text, label) in enumerate(rows[:100]):
            writer.writerow([text.replace(" film", ", film"), spellings[label][i % 3]])  # quoted commas
    with open(tmp_path / "b.tsv", "w", encoding="utf-8") as handle:
        handle.write("review\tsentiment\n")
        for text, label in rows[100:]:
            handle.write(f"{text}\t{label}\n")
    config = _config(
        "--input",
        str(tmp_path / "*.csv"),
        "--input",
        str(tmp_path / "*.tsv"),
        "--text-field",
        "review",
        "--label-field",
        "sentiment",
        "--output",
        str(tmp_path / "m.keras"),
        "--epochs",
        "8",
        "--embedding-dim",
        "8",
        "--batch-size",
        "16",
        "--learning-rate",
        "0.01",
    )
    records = load_training_records(config)
    assert len(records.texts) == 200 and records.bad_records == 0
    assert list(records.labels) == [label for _, label in rows]
    report = train_text_model(config)
    assert (report["train_records"], report["val_records"]) == (160, 40)
    assert report["val_accuracy"] >= 0.95


def test_jsonl_labels_may_be_ints_bools_or_strings(tmp_path):
    rows = [
        {"text": "x a", "label": 1},
        {"text": "x b", "label": True},
        {"text": "x c", "label": "1"},
        {"text": "x d", "label": 0},
        {"text": "x e", "label": False},
        {"text": "x f", "label": " 0 "},
    ]
    config = _config("--input", str(_write_jsonl(tmp_path / "r.jsonl", rows)), "--output", str(tmp_path / "m.keras"))
    records = load_training_records(config)
    assert records.labels == (1, 1, 1, 0, 0, 0) and records.bad_records == 0


def test_labelled_lines_and_gzip_inputs(tmp_path):
    (tmp_path / "pos.txt").write_bytes("a caf\xe9 so good\n\ngreat fun\n".encode("cp1252"))
    (tmp_path / "neg.txt").write_bytes("awful \u201cplot\u201d\r\nbad\r\n".encode("cp1252"))  # bytes 0x93/0x94
    with gzip.open(tmp_path / "more.jsonl.gz", "wt", encoding="cp1252") as handle:
        handle.write(json.dumps({"text": "fine", "label": 1}, ensure_ascii=False) + "\n")
    config = _config(
        "--labelled-lines",
        f"{tmp_path}/pos.txt=1",
        "--labelled-lines",
        f"{tmp_path}/neg.txt=0",
        "--input",
        str(tmp_path / "*.jsonl.gz"),
        "--encoding",
        "cp1252",
        "--output",
        str(tmp_path / "m.keras"),
    )
    records = load_training_records(config)
    assert records.texts == ("fine", "a caf\xe9 so good", "great fun", "awful \u201cplot\u201d", "bad")
    assert records.labels == (1, 1, 1, 0, 0)
    assert records.bad_records == 0  # the blank line is not a record


# --- bad records --------------------------------------------------------------------------------


def _with_bad_records(tmp_path: pathlib.Path, bad_lines: list[str]) -> pathlib.Path:
    good = [json.dumps({"text": t, "label": y}) for t, y in _synthetic(90)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(good[:45] + bad_lines + good[45:]) + "\n", encoding="utf-8")
    return path


BAD_LINES = [
    json.dumps({"text": "fine film", "label": 2}),
    json.dumps({"text": "fine film", "label": "yes"}),
    json.dumps({"text": "fine film", "label": None}),
    json.dumps({"text": "fine film", "label": 0.5}),
    json.dumps({"text": "fine film"}),
    json.dumps({"label": 1}),
    json.dumps({"text": 42, "label": 1}),
    json.dumps({"text": "?!...", "label": 1}),
    '{"text": "unterminated',
    "[1, 2]",
]


def test_bad_records_are_counted_with_their_reasons(tmp_path):
    config = _config(
        "--input", str(_with_bad_records(tmp_path, BAD_LINES)), "--output", str(tmp_path / "m.keras"), "--epochs", "1"
    )
    records = load_training_records(config)
    assert len(records.texts) == 90
    assert records.bad_records == 10  # exactly 10%: allowed
    joined = "\n".join(records.bad_examples)
    for reason in (
        "label 2 is not",
        "label 'yes'",
        "label None",
        "label 0.5",
        "label field 'label' is missing",
        "text field 'text' is missing",
        "text field 'text' is int, not a string",
        "has no word",
        "malformed JSON",
        "JSON line is a list",
    ):
        assert reason in joined
    assert f"{tmp_path / 'mixed.jsonl'}:46: label 2" in joined  # file:line of the first bad line
    assert train_text_model(config)["bad_records"] == 10


def test_too_many_bad_records_fail_clearly(tmp_path, capsys):
    path = _with_bad_records(tmp_path, BAD_LINES + [json.dumps({"text": "meh", "label": "maybe"})])
    args = _args("--input", str(path), "--output", str(tmp_path / "m.keras"))
    assert exit_status("train-text", lambda: train_text.main_from_args(args)) == 1  # TrainingDataError
    err = capsys.readouterr().err
    assert "11 of 101 records are bad" in err and "--max-bad-fraction" in err and "label 'maybe'" in err
    assert not (tmp_path / "m.keras").exists()
    # A looser threshold accepts them.
    records = load_training_records(
        _config("--input", str(path), "--output", str(tmp_path / "m.keras"), "--max-bad-fraction", "0.2")
    )
    assert records.bad_records == 11


def test_one_class_only_fails_clearly(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [{"text": "good", "label": 1}] * 10)
    with pytest.raises(TrainingDataError, match=r"both labels 0 and 1.*only \[1\]"):
        train_text_model(_config("--input", str(path), "--output", str(tmp_path / "m.keras")))


# --- flags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--validation-split", "1.5"], "--validation-split must be in (0, 1), got 1.5"),
        (["--validation-split", "0"], "--validation-split must be in (0, 1), got 0.0"),
        (["--vocab-size", "2"], "--vocab-size must be an integer >= 3, got 2"),
        (["--sequence-length", "0"], "--sequence-length must be an integer >= 1, got 0"),
        (["--embedding-dim", "-4"], "--embedding-dim must be an integer >= 1, got -4"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--learning-rate", "0"], "--learning-rate must be positive, got 0.0"),
        (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
        (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
        (["--max-bad-fraction", "2"], "--max-bad-fraction must be in [0, 1], got 2.0"),
        (["--encoding", "klingon"], "--text-encoding 'klingon' is not an encoding"),
        (["--text-field", ""], "--text-field must not be empty"),
        (["--labelled-lines", "pos.txt"], "--labelled-lines must be FILE=LABEL, got 'pos.txt'"),
        (["--labelled-lines", "pos.txt="], "--labelled-lines label must not be empty, got 'pos.txt='"),
        (["--objective", "skipgram", "--freeze-vectors"], "--freeze-vectors needs --init-vectors FILE"),
        (["--window", "0"], "--window must be an integer >= 1, got 0"),
        (["--negatives", "0"], "--negatives must be an integer >= 1, got 0"),
        (["--subsample", "1"], "--subsample must be in [0, 1), got 1.0"),
        (["--min-count", "0"], "--min-count must be an integer >= 1, got 0"),
        (["--unlabelled", "x.txt"], "--unlabelled text is for --objective skipgram or skipgram+classify, not classify"),
    ],
)
def test_bad_flag_values_name_the_flag(flags, message, jsonl_corpus, tmp_path):
    args = _args("--input", str(jsonl_corpus), "--output", str(tmp_path / "m.keras"), *flags)
    with pytest.raises(TrainingConfigError) as raised:
        train_text.config_from_args(args)
    assert message in str(raised.value)


def test_output_must_be_a_keras_file(jsonl_corpus, tmp_path, capsys):
    args = _args("--input", str(jsonl_corpus), "--output", str(tmp_path / "model.h5"))
    assert exit_status("train-text", lambda: train_text.main_from_args(args)) == 2  # TrainingConfigError
    assert f"--output must end in .keras (the Keras 3 format), got '{tmp_path / 'model.h5'}'" in capsys.readouterr().err


def test_globs_must_match_files(tmp_path, jsonl_corpus):
    pattern = str(tmp_path / "nothing-*.jsonl")
    with pytest.raises(TrainingConfigError, match=re.escape(f"--text-input '{pattern}' matches no file")):
        train_text.config_from_args(
            _args("--input", str(jsonl_corpus), "--input", pattern, "--output", str(tmp_path / "m.keras"))
        )
    with pytest.raises(TrainingConfigError, match="--labelled-lines '.*missing.txt' matches no file"):
        train_text.config_from_args(_args("--labelled-lines", f"{tmp_path}/missing.txt=1", "--output", str(tmp_path / "m.keras")))


def test_plain_text_input_points_to_labelled_lines(tmp_path):
    (tmp_path / "pos.txt").write_text("good\n", encoding="utf-8")
    with pytest.raises(TrainingConfigError, match="no label field; .* use --labelled-lines FILE=LABEL"):
        train_text.config_from_args(_args("--input", str(tmp_path / "pos.txt"), "--output", str(tmp_path / "m.keras")))


def test_some_training_data_is_required(tmp_path):
    with pytest.raises(TrainingConfigError, match="--text-input GLOB or --labelled-lines FILE=LABEL"):
        train_text.config_from_args(_args("--output", str(tmp_path / "m.keras")))


def test_defaults():
    args = _args("--output", "m.keras")
    assert (args.ngrams, args.vocab_size, args.sequence_length) == (1, None, 64)  # --vocab-size None: set by --ngrams
    config = TextTrainingConfig(output="m.keras", inputs=("x.jsonl",))
    assert (config.effective_vocab_size, config.sequence_length) == (20000, 64)
    pairs = TextTrainingConfig(output="m.keras", inputs=("x.jsonl",), ngrams=2)
    assert (pairs.effective_vocab_size, pairs.sequence_length) == (train_text.PAIRS_VOCAB_SIZE, 64)
    given = TextTrainingConfig(output="m.keras", inputs=("x.jsonl",), ngrams=2, vocab_size=500, sequence_length=9)
    assert (given.effective_vocab_size, given.sequence_length) == (500, 9)
    assert (args.embedding_dim, args.epochs, args.batch_size) == (64, 10, 64)
    assert (args.validation_split, args.seed, args.encoding, args.text_field, args.label_field) == (
        0.2,
        0,
        "utf-8",
        "text",
        "label",
    )


# --- reproducibility ----------------------------------------------------------------------------


def test_same_seed_gives_the_same_model(jsonl_corpus, tmp_path):
    import keras

    def run(name: str, seed: int):
        config = _config(
            "--input",
            str(jsonl_corpus),
            "--output",
            str(tmp_path / f"{name}.keras"),
            "--epochs",
            "3",
            "--embedding-dim",
            "8",
            "--seed",
            str(seed),
        )
        report = train_text_model(config)
        return report, keras.saving.load_model(config.output, safe_mode=True).get_weights()

    first, first_weights = run("first", 0)
    second, second_weights = run("second", 0)
    assert second["val_accuracy"] == first["val_accuracy"] and second["val_loss"] == first["val_loss"]
    assert second["history"] == first["history"]
    assert len(first_weights) == len(second_weights) == 3
    for a, b in zip(first_weights, second_weights):
        np.testing.assert_array_equal(a, b)
    _, other_weights = run("other", 1)
    assert not np.array_equal(other_weights[0], first_weights[0])


# --- real data ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared_data
def test_rt_polarity_reaches_reference_accuracy(shared_data, tmp_path, capsys):
    sentiment = shared_data / "sentiment"
    args = _args(
        "--labelled-lines",
        f"{sentiment / 'rt-polarity.pos'}=1",
        "--labelled-lines",
        f"{sentiment / 'rt-polarity.neg'}=0",
        "--encoding",
        "cp1252",
        "--validation-split",
        "0.2",
        "--output",
        str(tmp_path / "rt.keras"),
    )
    started = time.monotonic()
    assert train_text.main_from_args(args) == 0
    elapsed = time.monotonic() - started
    report = json.loads((tmp_path / "rt.training.json").read_text(encoding="utf-8"))
    captured = capsys.readouterr()
    assert json.loads(captured.out) == report  # stdout: the report alone
    assert "Epoch 1/" in captured.err  # Keras's epoch lines are progress, on stderr
    assert (report["train_records"], report["val_records"], report["bad_records"]) == (8530, 2132, 0)
    assert report["val_accuracy"] >= 0.74, report
    assert elapsed < 60, f"training took {elapsed:.0f} s"
