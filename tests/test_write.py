"""The write stage on its own: Parquet schema and metadata, row groups, dictionary encoding, dead
letters, the manifest written last, reading a run back, and clearing an earlier run."""

import json
import pathlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from transforms import read_embeddings, read_errors, read_manifest
from transforms.records import ERROR_SCHEMA, TEXT, ErrorRecord, embedding_schema
from transforms.results import MANIFEST_NAME, IncompleteOutputError
from transforms.sinks.folder import (
    RUNNING_NAME,
    ForeignFilesError,
    UnreadableManifestError,
    clear_previous_output,
    discard_unfinished,
    output_leftovers,
)
from transforms.sinks.manifest import WriteManifestFn
from transforms.sinks.parquet import WriteErrors, WriteTables

pytestmark = pytest.mark.slow  # each test runs a Beam pipeline

DIMENSION = 4
SCHEMA = embedding_schema(TEXT, DIMENSION, ["label"], metadata={"dimension": "4", "model": "m.keras", "normalized": "false"})


def _table(start: int, rows: int) -> pa.Table:
    ids = [f"r{i:04d}" for i in range(start, start + rows)]
    vectors = np.arange(start * DIMENSION, (start + rows) * DIMENSION, dtype=np.float32) / 7
    return pa.Table.from_pydict(
        {
            "id": ids,
            "source": ["in.jsonl"] * rows,
            "line": list(range(start + 1, start + rows + 1)),
            "content_sha256": [f"{i:064x}" for i in range(start, start + rows)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors, pa.float32()), DIMENSION),
            "model": ["m.keras"] * rows,
            "model_sha256": ["ab" * 32] * rows,
            "label": [str(i % 2) if i % 5 else None for i in range(start, start + rows)],
        },
        schema=SCHEMA,
    )


def _write_run(out: pathlib.Path, tables: list[pa.Table], errors: list[ErrorRecord], row_group_rows: int = 100) -> None:
    """A miniature run: tables and dead letters written, then the manifest from their counts and files."""
    static = {"run_id": "test-run", "output": str(out), "models": {TEXT: {"name": "m.keras"}}}
    with BeamTestPipeline(runner="FnApiRunner") as p:
        written = (
            p
            | "Tables" >> beam.Create(tables)
            | "WriteText" >> WriteTables(str(out / "text"), SCHEMA, row_group_rows=row_group_rows)
        )
        error_files = p | "Errors" >> beam.Create(errors, reshuffle=False) | "WriteErrors" >> WriteErrors(str(out / "errors"))
        files = (
            written | "TextNames" >> beam.Map(lambda f: ("text", f)),
            error_files | "ErrorNames" >> beam.Map(lambda f: ("errors", f)),
        ) | "AllFiles" >> beam.Flatten()
        embedded = sum(t.num_rows for t in tables)
        counts = {"text_read": embedded + len(errors), "text_embedded": embedded, "text_failed": len(errors)}
        _ = (
            p
            | "Trigger" >> beam.Create([None])
            | "Manifest" >> beam.ParDo(WriteManifestFn(str(out), static), counts=counts, files=beam.pvalue.AsList(files))
        )


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("write") / "out"
    tables = [_table(i * 30, 30) for i in range(12)]  # 360 rows in batches of 30
    errors = [ErrorRecord(f"bad{i}", TEXT, "in.jsonl", "read", "RecordError", f"line {i} is broken") for i in range(3)]
    _write_run(out, tables, errors)
    return {"out": out, "tables": tables, "errors": errors}


def test_files_have_the_schema_metadata_and_row_groups(written):
    files = sorted((written["out"] / "text").glob("part-*.parquet"))
    assert files and all(".parquet" == f.suffix for f in files)
    total = 0
    for path in files:
        parquet = pq.ParquetFile(path)
        assert parquet.schema_arrow.equals(SCHEMA, check_metadata=False)
        assert parquet.schema_arrow.field("embedding").type == pa.list_(pa.float32(), DIMENSION)
        meta = parquet.schema_arrow.metadata
        assert (meta[b"dimension"], meta[b"model"], meta[b"normalized"]) == (b"4", b"m.keras", b"false")
        groups = [parquet.metadata.row_group(i) for i in range(parquet.num_row_groups)]
        sizes = [g.num_rows for g in groups]
        assert all(100 <= s < 130 for s in sizes[:-1]), sizes  # batches gathered into ~100-row groups
        total += sum(sizes)
        names = parquet.schema_arrow.names
        for group in groups:
            encodings = {names[i]: group.column(i).encodings for i in range(len(names))}
            assert "RLE_DICTIONARY" in encodings["model"] and "RLE_DICTIONARY" in encodings["source"]
            assert "RLE_DICTIONARY" not in encodings["content_sha256"]  # unique hashes: no dictionary
    assert total == 360


def test_read_back_equals_what_was_written(written):
    table = read_embeddings(str(written["out"]), "text")
    expected = pa.concat_tables(written["tables"])
    assert table.num_rows == 360
    got = table.sort_by("id")
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    assert got.column("label").to_pylist() == expected.column("label").to_pylist()  # nulls stay null
    matrix = got.column("embedding").combine_chunks().flatten().to_numpy().reshape(360, DIMENSION)
    want = expected.column("embedding").combine_chunks().flatten().to_numpy().reshape(360, DIMENSION)
    assert matrix.dtype == np.float32 and matrix.tobytes() == want.tobytes()
    errors = read_errors(str(written["out"]))
    assert errors.schema.equals(ERROR_SCHEMA)
    assert sorted(errors.column("id").to_pylist()) == ["bad0", "bad1", "bad2"]


def test_manifest_is_complete_with_relative_files_and_balanced_counts(written):
    out = written["out"]
    manifest = read_manifest(str(out))
    assert manifest["status"] == "complete" and manifest["run_id"] == "test-run"
    assert manifest["counts"] == {TEXT: {"read": 363, "embedded": 360, "failed": 3, "skipped": 0, "balanced": True}}
    assert set(manifest["files"]) == {"text", "errors"}
    for folder, paths in manifest["files"].items():
        for path in paths:
            assert path.startswith(f"{folder}/") and (out / path).exists()  # relative: the folder can move
    assert {"python", "apache_beam", "pyarrow"} <= set(manifest["versions"])
    json.loads((out / MANIFEST_NAME).read_text())  # plain JSON on disk
    with pytest.raises(ValueError, match="no image"):
        read_embeddings(str(out), "image")


def test_no_dead_letters_still_writes_an_empty_errors_file(tmp_path):
    out = tmp_path / "out"
    _write_run(out, [_table(0, 5)], [])
    files = list((out / "errors").glob("part-*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == 0
    assert read_errors(str(out)).num_rows == 0 and read_errors(str(out)).schema.equals(ERROR_SCHEMA)


def _tree(folder: pathlib.Path) -> dict:
    """Every file under `folder` (relative path -> bytes): what "nothing touched" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_unfinished_run_is_refused_and_a_rerun_clears_the_earlier_one(tmp_path):
    out = tmp_path / "out"
    _write_run(out, [_table(0, 10)], [ErrorRecord("e", TEXT, "s", "read", "RecordError", "m")])
    (out / "text" / "beam-temp-part-0123").mkdir()  # a killed run's temp file: the job's own
    (out / "text" / "beam-temp-part-0123" / "0123").write_bytes(b"half")
    deleted = clear_previous_output(str(out))
    assert deleted[0].endswith(MANIFEST_NAME)  # the manifest goes first: the folder reads as unfinished
    assert _tree(out) == {} and not (out / "text").exists() and not (out / "errors").exists()
    with pytest.raises(IncompleteOutputError, match="did not finish"):
        read_embeddings(str(out), "text")
    with pytest.raises(IncompleteOutputError):
        read_errors(str(out))


def test_clearing_refuses_a_folder_with_files_the_job_did_not_write_and_touches_nothing(tmp_path):
    out = tmp_path / "out"
    _write_run(out, [_table(0, 10)], [])
    (out / "notes.txt").write_text("not the job's")
    for i in range(7):
        (out / "text" / f"mine-{i}.parquet").write_bytes(b"the user's")
    before = _tree(out)
    with pytest.raises(ForeignFilesError, match=r"holds 8 file\(s\).*notes.txt, text/mine-0.parquet.* and 3 more") as caught:
        clear_previous_output(str(out))
    assert caught.value.exit_code == 2
    assert _tree(out) == before  # not even the earlier run's own files: the run stops before anything


def test_clearing_refuses_an_unreadable_manifest(tmp_path):
    out = tmp_path / "out"
    _write_run(out, [_table(0, 10)], [])
    (out / MANIFEST_NAME).write_text('{"run_id": "cut short", "files": {"text": ["text/pa')
    before = _tree(out)
    with pytest.raises(UnreadableManifestError, match="cannot be read"):
        clear_previous_output(str(out))
    assert _tree(out) == before


def test_clearing_never_deletes_a_manifest_named_file_outside_the_folder(tmp_path):
    out = tmp_path / "out"
    _write_run(out, [_table(0, 10)], [])
    outside = tmp_path / "keep.parquet"
    outside.write_bytes(b"outside")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"]["text"] += ["../keep.parquet", str(outside)]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    clear_previous_output(str(out))
    assert _tree(out) == {} and outside.read_bytes() == b"outside"


def test_a_run_that_stopped_before_its_manifest_leaves_only_what_a_rerun_may_delete(tmp_path):
    out = tmp_path / "out"
    _write_run(out, [_table(0, 10)], [])
    (out / MANIFEST_NAME).unlink()  # as a run that stopped before its last step: shards, no manifest
    assert output_leftovers(str(out))[1] == ["errors/part-00000-of-00001.parquet", "text/part-00000-of-00001.parquet"]
    (out / RUNNING_NAME).write_text("{}")  # while its claim is there, they are that run's: a rerun may delete them
    assert output_leftovers(str(out))[1] == []
    (out / RUNNING_NAME).unlink()
    (out / "text" / "mine.txt").write_text("the user's")
    deleted = discard_unfinished(str(out))  # the stopped run's own cleanup: its shard files, never another file
    assert sorted(pathlib.Path(p).name for p in deleted) == ["part-00000-of-00001.parquet"] * 2
    assert _tree(out) == {"text/mine.txt": b"the user's"}
