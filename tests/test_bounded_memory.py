"""Issue 19 (6): memory bounded whatever the flags and however many duplicates.

Batch sizes have documented maxima (exit 2 / ValueError above them, naming the flag or argument);
a short batch runs at about its own size, not the flag's; duplicates cost a worker a few bytes
each and one (path, line) per distinct id, and every one of them is still a dead letter. Dead
letters cross stages as compressed `ErrorBatch`es (a few bytes each, not a ~300-byte pickled
record that the local runner holds whole); peak memory itself is measured by
`benchmarks.memory_cases`, not here.
"""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.coders import coders
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

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
from transforms.records import TEXT, ErrorBatch, ErrorRecord, failed_counts
from transforms.results import read_embeddings, read_errors
from transforms.sinks.manifest import TopErrorReasons
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


def _duplicate_letters(n: int, path: str = "/data/in/same.jsonl") -> list:
    reason = f"id 'same' was already used at {path}:1; the first occurrence is embedded"
    return [ErrorRecord("same", TEXT, f"{path}:{line}", "read", "DuplicateId", reason) for line in range(2, n + 2)]


def test_dead_letters_cross_stages_as_batches_of_a_few_bytes_each_and_come_back_whole():
    letters = _duplicate_letters(8192)
    coder = coders.FastPrimitivesCoder()  # what a runner encodes an untyped PCollection's elements with
    one_by_one = sum(len(coder.encode(e)) for e in letters)
    batch = ErrorBatch.from_records(letters)
    encoded = coder.encode(batch)
    assert len(encoded) <= 32 * len(letters) < one_by_one // 8  # was ~300 bytes a dead letter
    back = coder.decode(encoded)
    assert back.num_rows == len(letters) and back.table.to_pylist() == batch.table.to_pylist()
    assert [r["source"] for r in back.table.to_pylist()] == [e.source for e in letters]  # order and every field kept
    assert failed_counts(back) == [("text_failed", len(letters))] and failed_counts(letters[0]) == [("text_failed", 1)]


def test_top_error_reasons_are_the_same_from_batches_as_from_records():
    letters = _duplicate_letters(50) + [
        ErrorRecord(f"e{i}", TEXT, f"b.jsonl:{i}", "embed", "EmptyText", "empty") for i in range(7)
    ]
    letters.append(ErrorRecord("a-first", TEXT, "c.jsonl:1", "read", "DuplicateId", "the smallest id's message"))
    batches = [ErrorBatch.from_records(letters[:20]), ErrorBatch.from_records(letters[20:]), letters[-1]]  # mixed too
    expected = {
        "text": [
            {
                "error_type": "DuplicateId",
                "stage": "read",
                "count": 51,
                "example_id": "a-first",
                "example_message": "the smallest id's message",
            },
            {"error_type": "EmptyText", "stage": "embed", "count": 7, "example_id": "e0", "example_message": "empty"},
        ]
    }
    with BeamTestPipeline() as p:
        from_records = p | "Records" >> beam.Create(letters) | "FromRecords" >> TopErrorReasons()
        from_batches = p | "Batches" >> beam.Create(batches) | "FromBatches" >> TopErrorReasons()
        assert_that(from_records, equal_to([expected]), label="SameFromRecords")
        assert_that(
            from_batches,
            equal_to([{"text": [dict(expected["text"][0], count=52), expected["text"][1]]}]),
            label="SameFromBatches",
        )


def test_the_job_batches_every_dead_letter_where_it_is_made_before_any_stage_holds_it(tmp_path):
    from pipeline.checks import config_from_options
    from pipeline.graph import ModelInfo, build_pipeline

    argv = ["--output", str(tmp_path / "out"), "--text-input", "x.jsonl", "--text-model", "m.keras", "--image-input", "i/*.png"]
    argv += ["--image-model", "m2.keras"]
    p = beam.Pipeline(options=PipelineOptions(argv))
    config = config_from_options(PipelineOptions(argv), check_paths=False)
    models = {"text": ModelInfo("m.keras", "0" * 64, 4), "image": ModelInfo("m2.keras", "1" * 64, 4)}
    built = build_pipeline(p, config, models, "2026-12-04T00:00:00+00:00")
    assert len(built["text"].errors) == 3 and built["image"].errors  # read, the duplicate check, embedding
    proto = p.to_runner_api()
    transforms = proto.components.transforms
    producer = {pcoll: t.unique_name for t in transforms.values() if not t.subtransforms for pcoll in t.outputs.values()}
    flatten = next(t for t in transforms.values() if t.unique_name == "AllErrors")
    inputs = [producer[pcoll] for pcoll in flatten.inputs.values()]
    assert len(inputs) == len(built["text"].errors) + len(built["image"].errors)
    assert all(name.startswith(("BatchTextErrors", "BatchImageErrors")) and name.endswith("/GatherErrors") for name in inputs), (
        inputs
    )


def test_duplicates_over_many_batches_and_files_are_each_one_dead_letter_and_the_reasons_count_them(tmp_path, tiny_text_model):
    n = 20_000  # more than one ErrorBatch (8,192 rows) and one text batch (4,096 rows)
    _jsonl(tmp_path / "a.jsonl", [("same" if i % 2 else f"u{i}", f"good movie {i}") for i in range(n)])
    _jsonl(tmp_path / "b.jsonl", [("same", "bad film"), ("u0", "late"), ("alone", "")])  # u0 first in a.jsonl; an empty text
    out = tmp_path / "out"
    flags = ["--output", str(out), "--text-input", str(tmp_path / "*.jsonl"), "--text-model", str(tiny_text_model)]
    manifest = run([*flags, "--max-failed-fraction", "1"])
    embedded = read_embeddings(str(out), "text").to_pylist()
    first_same = f"{tmp_path / 'a.jsonl'}:2"
    assert {(r["id"], r["source"], r["line"]) for r in embedded if r["id"] == "same"} == {("same", str(tmp_path / "a.jsonl"), 2)}
    assert len(embedded) == n // 2 + 1  # the unique ids and the first "same"
    errors = read_errors(str(out)).to_pylist()
    duplicates = [e for e in errors if e["error_type"] == "DuplicateId"]
    later_same = {f"{tmp_path / 'a.jsonl'}:{line}" for line in range(4, n + 1, 2)} | {f"{tmp_path / 'b.jsonl'}:1"}
    assert sorted(e["source"] for e in duplicates if e["id"] == "same") == sorted(later_same)  # each once
    assert all(first_same in e["message"] for e in duplicates if e["id"] == "same")  # each names the kept one
    assert [(e["source"], e["id"]) for e in duplicates if e["id"] != "same"] == [(f"{tmp_path / 'b.jsonl'}:2", "u0")]
    assert [(e["id"], e["error_type"]) for e in errors if e["error_type"] != "DuplicateId"] == [("alone", "EmptyText")]
    failed = len(later_same) + 2
    assert len(errors) == failed
    assert manifest["counts"]["text"] == {"read": n + 3, "embedded": n // 2 + 1, "failed": failed, "skipped": 0, "balanced": True}
    reasons = {(r["error_type"], r["stage"]): r["count"] for r in manifest["top_errors"]["text"]}
    assert reasons == {("DuplicateId", "read"): failed - 1, ("EmptyText", "preprocess"): 1}
