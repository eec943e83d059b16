"""Issue 19 (6): memory bounded whatever the flags and however many duplicates.

Batch sizes have documented maxima (exit 2 / ValueError above them, naming the flag or argument);
a short batch runs at about its own size, not the flag's; duplicates cost a worker a few bytes
each and one (path, line) per distinct id, and every one of them is still a dead letter.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.run import run
from tests.tests_support import run_pipeline
from transforms.embed.dofns import MAX_DECODE_THREADS
from transforms.embed.models import (
    MAX_IMAGE_BATCH_SIZE,
    MAX_TEXT_BATCH_SIZE,
    ImageModelSpec,
    TextModelSpec,
    batch_buckets,
    load_image_embedder,
    load_text_embedder,
)
from transforms.results import read_embeddings, read_errors
from transforms.state.dedup import CHUNK_LINES, LineFlags, check_bucket
from transforms.state.keys import id_hashes, text_key_batch


def _jsonl(path, rows) -> None:
    with open(path, "w") as handle:
        for record_id, text in rows:
            handle.write(json.dumps({"id": record_id, "text": text}) + "\n")


# --- batch sizes bounded ------------------------------------------------------------------------


def test_a_text_batch_size_above_the_maximum_exits_2_naming_the_flag(tmp_path, tiny_text_model):
    _jsonl(tmp_path / "a.jsonl", [("a", "good movie")])
    out = tmp_path / "out"
    done = run_pipeline(
        "run",
        "--output",
        out,
        "--text-input",
        tmp_path / "a.jsonl",
        "--text-model",
        tiny_text_model,
        "--text-batch-size",
        MAX_TEXT_BATCH_SIZE + 1,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--text-batch-size" in done.stderr and f"{MAX_TEXT_BATCH_SIZE:,}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists()  # refused before anything is touched


@pytest.mark.parametrize(
    "flag, value, maximum",
    [
        ("--image-batch-size", MAX_IMAGE_BATCH_SIZE + 1, MAX_IMAGE_BATCH_SIZE),
        ("--decode-threads", MAX_DECODE_THREADS + 1, MAX_DECODE_THREADS),
        ("--text-batch-size", 10**6, MAX_TEXT_BATCH_SIZE),
    ],
)
def test_batch_like_flags_above_their_maximum_are_config_errors(tmp_path, flag, value, maximum):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import config_from_options
    from pipeline.options import ConfigError

    flags = ["--output", str(tmp_path / "out"), "--image-input", str(tmp_path / "*.jpg"), "--image-model", "MobileNetV2"]
    config_from_options(PipelineOptions(flags + [flag, str(maximum)]), check_paths=False)  # the maximum itself is fine
    with pytest.raises(ConfigError) as raised:
        config_from_options(PipelineOptions(flags + [flag, str(value)]), check_paths=False)
    assert flag in str(raised.value) and f"{maximum:,}" in str(raised.value)


def test_the_api_refuses_batch_sizes_above_the_maximum(tiny_text_model):
    from transforms.embed.api import EmbedImages, EmbedText

    with pytest.raises(ValueError, match=f"EmbedText: batch_size {MAX_TEXT_BATCH_SIZE + 1:,} is larger than the maximum"):
        EmbedText(str(tiny_text_model), batch_size=MAX_TEXT_BATCH_SIZE + 1)
    with pytest.raises(ValueError, match=f"EmbedImages: batch_size {MAX_IMAGE_BATCH_SIZE + 1:,} is larger than the maximum"):
        EmbedImages("MobileNetV2", batch_size=MAX_IMAGE_BATCH_SIZE + 1)
    with pytest.raises(ValueError, match="EmbedImages: decode_threads must be an integer from 1 to"):
        EmbedImages("MobileNetV2", decode_threads=MAX_DECODE_THREADS + 1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        EmbedText(str(tiny_text_model), batch_size=True)


# --- a short batch costs its own size -----------------------------------------------------------


def test_a_short_text_batch_runs_at_its_own_size(tiny_text_model):
    embedder = load_text_embedder(TextModelSpec(str(tiny_text_model), batch_size=MAX_TEXT_BATCH_SIZE))
    forward, shapes = embedder._forward, []

    def recording(batch):
        shapes.append(tuple(batch.shape))
        return forward(batch)

    embedder._forward = recording
    texts = ["good movie", "bad film", "awful plot twist"]
    vectors = embedder.embed(texts)
    assert shapes == [(3, 1)]  # not 65,536 padded strings
    alone = np.concatenate([embedder.embed([t]) for t in texts])
    assert vectors.tobytes() == alone.tobytes()
    assert forward.experimental_get_tracing_count() == 1  # one trace for every batch size


def _backends():
    from transforms.embed.backends import openvino_version

    return ["tensorflow"] + (["openvino"] if openvino_version() else [])


@pytest.mark.parametrize("backend", _backends())
def test_a_short_image_batch_is_padded_only_to_its_bucket(tiny_image_model, backend):
    spec = ImageModelSpec(str(tiny_image_model), weights="none", layer="features", batch_size=64, backend=backend)
    embedder = load_image_embedder(spec)
    assert embedder.backend == backend
    runner, shapes = embedder._runner, []

    def recording_runner(bucket):  # the model function a batch is run with, and the batch it sees
        size, run = runner(bucket)

        def recording(batch):
            shapes.append(batch.shape[0])
            return run(batch)

        return size, recording

    embedder._runner = recording_runner
    pixels = np.random.RandomState(0).randint(0, 256, (64 + 20, 32, 32, 3)).astype(np.uint8)
    whole = embedder.embed(pixels)  # a full batch of 64, then 20 rows
    assert shapes == [64, 32]  # the 20 ride in the bucket of 32, not a batch of 64
    shapes.clear()
    three = embedder.embed(pixels[:3])
    assert shapes == [8]
    assert three.tobytes() == whole[:3].tobytes()  # a row's vector does not depend on its bucket
    for n in (1, 9, 17, 33):
        assert embedder.embed(pixels[:n]).tobytes() == whole[:n].tobytes(), n
    assert set(shapes) <= set(batch_buckets(64)) == {8, 16, 32, 64}


# --- duplicates: bounded per worker, every one a dead letter ------------------------------------


def _one_id_bucket(n: int, path: str = "same.jsonl"):
    ikeys = id_hashes(["same"] * n)
    parts = [part for _, part in text_key_batch(path, 0, np.arange(1, n + 1), ikeys, None, bits=0)]
    return list(check_bucket((0, parts)))


@pytest.mark.parametrize("n", [1_000, 200_000])
def test_the_duplicates_a_worker_holds_cost_a_few_bytes_each_and_one_first_occurrence(n):
    entries = _one_id_bucket(n)
    assert len(entries) == -(-(n + 1) // CHUNK_LINES)  # one entry per chunk of lines
    later = 0
    for (path, _chunk), (offsets, first_paths, first_lines, which) in entries:
        assert path == "same.jsonl"
        assert first_paths == ["same.jsonl"] and first_lines.tolist() == [1]  # one first occurrence, not one per duplicate
        assert offsets.dtype == np.uint16 and len(offsets) <= CHUNK_LINES
        assert offsets.nbytes + which.nbytes <= 3 * len(offsets)
        later += len(offsets)
    assert later == n - 1


def test_line_flags_name_the_first_occurrence_of_every_later_one():
    n = CHUNK_LINES + 10  # two chunks
    multimap: dict = {}
    for key, value in _one_id_bucket(n):
        multimap.setdefault(key, []).append(value)
    flags = LineFlags(duplicates=multimap)
    lines = [1, 2, 3, CHUNK_LINES - 1, CHUNK_LINES, CHUNK_LINES + 5, n]
    table = pa.table({"source": ["same.jsonl"] * len(lines), "line": pa.array(lines, pa.int64()), "id": ["same"] * len(lines)})
    assert flags.first_occurrences(table) == {row: ("same.jsonl", 1) for row in range(1, len(lines))}


def test_every_duplicate_of_one_id_is_a_dead_letter_and_the_counts_add_up(tmp_path, tiny_text_model):
    n = 3000
    _jsonl(tmp_path / "a.jsonl", [("same", f"good movie {i}") for i in range(n)] + [("other", "bad film")])
    out = tmp_path / "out"
    manifest = run(
        [
            "--output",
            str(out),
            "--text-input",
            str(tmp_path / "a.jsonl"),
            "--text-model",
            str(tiny_text_model),
            "--max-failed-fraction",
            "1",
        ]
    )
    embedded = read_embeddings(str(out), "text").to_pylist()
    assert sorted((r["id"], r["line"]) for r in embedded) == [("other", n + 1), ("same", 1)]
    errors = read_errors(str(out)).to_pylist()
    assert len(errors) == n - 1 and {e["error_type"] for e in errors} == {"DuplicateId"}
    assert sorted(int(e["source"].rsplit(":", 1)[1]) for e in errors) == list(range(2, n + 1))  # each line once
    assert all(f"{tmp_path / 'a.jsonl'}:1" in e["message"] for e in errors)  # each names the kept one
    assert manifest["counts"]["text"] == {"read": n + 1, "embedded": 2, "failed": n - 1, "skipped": 0, "balanced": True}
