"""Tests of the text-model tools on a tiny trained model: word vectors, similar words, and text queries of a real run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_tools_support import NEGATIVE, POSITIVE, build_text_model, run_cli, sentiment_sentences, train_text_model

from pipeline.tools import neighbors, similar_words, word_vectors
from pipeline.tools.similar_words import UnknownWordError
from pipeline.tools.word_vectors import load_word_vectors


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A tiny sentiment model of train-text's contract, trained on sentences with one sentiment word each."""
    return train_text_model(tmp_path_factory.mktemp("model") / "tiny.keras", sentiment_sentences(200), epochs=25)


@pytest.fixture(scope="module")
def text_run(text_model, tmp_path_factory):
    """A real run of the job over labelled sentences, embedded with the tiny model."""
    from pipeline.run import run

    folder = tmp_path_factory.mktemp("text-run")
    records = folder / "reviews.jsonl"
    rows = sentiment_sentences(40, seed=1)
    records.write_text("".join(json.dumps({"id": f"r{i}", "text": t, "label": str(y)}) + "\n" for i, (t, y) in enumerate(rows)))
    output = folder / "out"
    run(["--output", str(output), "--text-input", str(records), "--text-model", str(text_model), "--passthrough", "label"])
    return output


def test_exported_word_vectors_are_the_embedding_layer_weights(text_model, tmp_path, capsys):
    import keras

    out = tmp_path / "words.parquet"
    assert run_cli(word_vectors, ["--text-model", str(text_model), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["words"] == 18 and summary["rows"] == 19  # 18 words and [UNK]; padding is left out

    table = pq.read_table(out)
    assert table.schema.field("token").type == pa.string()
    assert table.schema.field("index").type == pa.int32()
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 8)
    model = keras.saving.load_model(text_model)
    vocabulary = model.get_layer("vectorize").get_vocabulary()
    weights = model.get_layer("embedding").get_weights()[0]
    indices = table.column("index").to_numpy()
    assert indices.tolist() == list(range(1, len(vocabulary)))
    assert table.column("token").to_pylist() == vocabulary[1:]
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, weights[indices])
    assert set(POSITIVE) | set(NEGATIVE) <= set(table.column("token").to_pylist())


def test_similar_words_of_a_trained_model(text_model, capsys):
    words = load_word_vectors(str(text_model))
    assert {r["word"] for r in similar_words.similar_words(words, "great", k=2)} == {"good", "excellent"}
    everything = similar_words.similar_words(words, "Great!", k=100)  # standardised as the model does
    assert {r["word"] for r in everything[-3:]} == set(NEGATIVE)  # the opposite sentiment is least similar
    assert "great" not in {r["word"] for r in everything} and "[UNK]" not in {r["word"] for r in everything}
    scores = [r["score"] for r in everything]
    assert scores == sorted(scores, reverse=True)

    assert run_cli(similar_words, ["--text-model", str(text_model), "--word", "awful", "-k", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["word"] for r in rows} == {"bad", "terrible"}


def test_unknown_and_several_words_are_clear_errors(text_model, capsys):
    words = load_word_vectors(str(text_model))
    with pytest.raises(UnknownWordError, match="not in the model's vocabulary.*close words in the vocabulary: great"):
        similar_words.similar_words(words, "greatt")
    assert run_cli(similar_words, ["--text-model", str(text_model), "--word", "splendid"]) == 2
    assert "'splendid' is not in the model's vocabulary" in capsys.readouterr().err
    assert run_cli(similar_words, ["--text-model", str(text_model), "--word", "very good"]) == 2
    assert "give one word" in capsys.readouterr().err
    assert run_cli(word_vectors, ["--text-model", str(text_model), "--out", "words.csv"]) == 2
    assert "--output must end in .parquet" in capsys.readouterr().err


def test_text_query_uses_the_runs_own_model(text_run, capsys):
    assert run_cli(neighbors, ["--embeddings", str(text_run), "--text", "An excellent film!", "-k", "5", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5
    assert all(r["label"] == "1" for r in rows)  # positive sentences are closest to a positive one
    assert rows[0]["score"] > 0.9


def test_a_text_query_with_another_model_is_refused(text_run, tmp_path, capsys):
    other = tmp_path / "other.keras"
    build_text_model([t for t, _ in sentiment_sentences(50)], seed=3).save(other)
    argv = ["--embeddings", str(text_run), "--text", "great", "--text-model", str(other)]
    assert run_cli(neighbors, argv) == 2
    assert "is not the one the run used" in capsys.readouterr().err
    assert run_cli(neighbors, argv + ["--allow-model-mismatch"]) == 0
    same = tmp_path / "copy.keras"
    shutil.copy(json.loads((text_run / "_MANIFEST.json").read_text())["options"]["text_model"]["path"], same)
    assert run_cli(neighbors, ["--embeddings", str(text_run), "--text", "great", "--text-model", str(same)]) == 0
