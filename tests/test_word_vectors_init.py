"""Tests of `train-text --init-vectors FILE` (and --freeze-vectors): word2vec/GloVe text files, gzipped,
the Parquet of `export-word-vectors`; the coverage report; bad files as errors naming the file and line."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import pathlib
import random

import numpy as np
import pytest
from test_tools_support import run_cli

from pipeline.cli import exit_status
from pipeline.tools import word_vectors
from pipeline.train import text as train_text
from pipeline.train.vectors import VectorFileError, read_word_vectors
from tests_support import train_text_config

_WORDS = "good great bad awful film movie plot the a was".split()


def _vectors(dim: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {word: rng.normal(size=dim).round(4).astype(np.float32) for word in _WORDS}


def _write_text(path: pathlib.Path, vectors: dict, header: bool = True, extra_lines=()) -> pathlib.Path:
    dim = len(next(iter(vectors.values())))
    lines = [f"{len(vectors)} {dim}"] if header else []
    # A capitalised spelling first, as in cased files: it wins over the later lower-case one.
    lines += [
        f"{word.capitalize() if word == 'good' else word} " + " ".join(f"{v:.4f}" for v in vector)
        for word, vector in vectors.items()
    ]
    lines += ["good " + " ".join("9" for _ in range(dim))]
    lines += list(extra_lines)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _corpus(path: pathlib.Path, count: int = 120) -> pathlib.Path:
    rng = random.Random(0)
    rows = []
    for i in range(count):
        label = i % 2
        words = rng.sample(["the", "a", "film", "movie", "plot", "was", "zorblax"], 4) + [
            rng.choice(["good", "great"] if label else ["bad", "awful"])
        ]
        rows.append({"text": " ".join(words), "label": label})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


_config = train_text_config


@pytest.mark.parametrize("name, header", [("vectors.vec", True), ("glove.txt", False), ("vectors.vec.gz", True)])
def test_formats_read_with_the_first_spelling_winning(tmp_path, name, header):
    vectors = _vectors()
    loaded = read_word_vectors(str(_write_text(tmp_path / name, vectors, header=header)))
    assert loaded.dimension == 4 and loaded.lines == len(_WORDS) + 1
    np.testing.assert_array_equal(loaded.matrix[loaded.words["good"]], vectors["good"])  # "Good", first
    np.testing.assert_array_equal(loaded.matrix[loaded.words["plot"]], vectors["plot"])


def test_frozen_vectors_start_the_model_and_coverage_is_reported(tmp_path):
    import keras

    vectors = _vectors()
    source = _write_text(tmp_path / "v.vec", vectors)
    out = tmp_path / "m.keras"
    config = _config("--input", str(_corpus(tmp_path / "r.jsonl")), "--output", str(out), "--embedding-dim", "4")
    config = dataclasses.replace(config, init_vectors=str(source), freeze_vectors=True, epochs=3)
    report = train_text.train_text_model(config)
    coverage = report["init_vectors"]
    assert coverage["file"] == str(source) and coverage["frozen"] is True
    assert coverage["vocabulary_words"] == 11  # the 10 file words, all seen in the texts, and "zorblax"
    assert coverage["covered_words"] == 10 and coverage["missing_examples"] == ["zorblax"]
    assert coverage["covered_fraction"] == round(10 / 11, 4)
    model = keras.saving.load_model(out, safe_mode=True)
    vocabulary = model.get_layer("vectorize").get_vocabulary()
    weights = model.get_layer("embedding").get_weights()[0]
    for word in ("good", "awful", "the"):
        np.testing.assert_array_equal(weights[vocabulary.index(word)], vectors[word])  # frozen: unchanged


def test_trainable_vectors_move_and_our_own_export_is_accepted(tmp_path, capsys):
    import keras

    vectors = _vectors()
    corpus = _corpus(tmp_path / "r.jsonl")
    first = tmp_path / "first.keras"
    train_text.train_text_model(
        dataclasses.replace(
            _config("--input", str(corpus), "--output", str(first), "--embedding-dim", "4"),
            init_vectors=str(_write_text(tmp_path / "v.txt", vectors, header=False)),
            epochs=3,
            learning_rate=0.05,
        )
    )
    weights = keras.saving.load_model(first).get_layer("embedding").get_weights()[0]
    vocabulary = keras.saving.load_model(first).get_layer("vectorize").get_vocabulary()
    assert not np.allclose(weights[vocabulary.index("good")], vectors["good"])  # trainable: learnt from there

    exported = tmp_path / "words.parquet"
    assert run_cli(word_vectors, ["--text-model", str(first), "--out", str(exported)]) == 0
    capsys.readouterr()
    second = tmp_path / "second.keras"
    config = dataclasses.replace(
        _config("--input", str(corpus), "--output", str(second), "--embedding-dim", "4"),
        init_vectors=str(exported),
        freeze_vectors=True,
        epochs=1,
    )
    report = train_text.train_text_model(config)
    assert report["init_vectors"]["covered_words"] == 11  # every word, zorblax included
    again = keras.saving.load_model(second).get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(again[2:], weights[2:])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["film 0.1 0.2 zero 0.4"], r"v\.vec:13: 'film' has a value that is not a number: 'zero'"),
        (["film 0.1 0.2 0.3"], r"v\.vec:13: 'film' has 3 values, expected 4"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, extra, message):
    with pytest.raises(VectorFileError, match=message):
        read_word_vectors(str(_write_text(tmp_path / "v.vec", _vectors(), extra_lines=extra)))


def test_wrong_dimension_and_no_overlap_are_clear_errors(tmp_path, capsys):
    corpus = _corpus(tmp_path / "r.jsonl")
    source = _write_text(tmp_path / "v.vec", _vectors(dim=4))
    parser = argparse.ArgumentParser()
    train_text.add_arguments(parser)
    args = parser.parse_args(["--input", str(corpus), "--output", str(tmp_path / "m.keras"), "--init-vectors", str(source)])
    assert exit_status("train-text", lambda: train_text.main_from_args(args)) == 2  # a UserError: one line
    err = capsys.readouterr().err
    assert f"{source}:1: the vectors have 4 dimensions but --embedding-dim is 64; pass --embedding-dim 4" in err

    other = tmp_path / "other.txt"
    other.write_text("zebra 1 2 3 4\nquokka 4 3 2 1\n", encoding="utf-8")
    config = dataclasses.replace(
        _config("--input", str(corpus), "--output", str(tmp_path / "m.keras"), "--embedding-dim", "4"), init_vectors=str(other)
    )
    with pytest.raises(VectorFileError, match=r"other\.txt: none of its 2 words is in the model's vocabulary of 11"):
        train_text.train_text_model(config)
    with pytest.raises(VectorFileError, match=r"missing\.vec: cannot read the file"):
        read_word_vectors(str(tmp_path / "missing.vec"))
