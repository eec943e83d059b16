"""Unit layer for `transforms.sinks`: Parquet shards, the failure budget, the output folder's rules.

`WriteTables` / `WriteErrors` under `TestPipeline` + `assert_that`, read back with pyarrow; direct calls
for `manifest` and `folder`. The end-to-end runs (tests/test_write.py, test_output_folder.py) stay.
"""

import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from transforms.errors import UserError
from transforms.records import ERROR_SCHEMA, TEXT, ErrorRecord, embedding_schema
from transforms.sinks import folder, manifest
from transforms.sinks.parquet import WriteErrors, WriteTables


def _table(schema: pa.Schema, ids) -> pa.Table:
    n = len(ids)
    columns = {
        "id": list(ids),
        "source": ["a.jsonl"] * n,
        "line": list(range(1, n + 1)),
        "content_sha256": ["0" * 64] * n,
        "embedding": [np.full(4, i, np.float32).tolist() for i in range(n)],
    }
    return pa.Table.from_pydict({name: columns.get(name, [None] * n) for name in schema.names}, schema=schema)


def _shard_names(actual):
    assert actual, "no file written"
    assert all(os.path.basename(p).startswith("part-") and p.endswith(".parquet") for p in actual)


def test_write_tables_gathers_small_batches_into_row_groups_and_reads_back_with_the_schema(tmp_path):
    schema = embedding_schema(TEXT, 4, (), metadata={"run": "unit"})
    ids = [f"r{i}" for i in range(25)]
    with BeamTestPipeline() as p:
        names = (
            p | beam.Create([_table(schema, [i]) for i in ids]) | WriteTables(str(tmp_path / "text"), schema, row_group_rows=8)
        )
        assert_that(names, _shard_names)
    files = sorted((tmp_path / "text").glob("part-*.parquet"))
    assert files
    tables = [pq.read_table(f) for f in files]
    for t in tables:  # the schema, and its metadata kept (Parquet may add keys of its own)
        assert t.schema.equals(schema, check_metadata=False)
        assert dict(schema.metadata).items() <= dict(t.schema.metadata).items()
    assert sorted(i for t in tables for i in t.column("id").to_pylist()) == sorted(ids)
    for f in files:
        meta = pq.ParquetFile(f).metadata  # one-row batches gathered into row groups of row_group_rows
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert all(size == 8 for size in sizes[:-1]) and 0 < sizes[-1] <= 8, sizes


def test_write_errors_keeps_every_dead_letter_with_its_reason(tmp_path):
    errors = [ErrorRecord(f"e{i}", TEXT, f"a.jsonl:{i}", "read", "BadJson", "not JSON") for i in range(3)]
    with BeamTestPipeline() as p:
        _ = p | beam.Create(errors) | WriteErrors(str(tmp_path / "errors"))
    table = pa.concat_tables([pq.read_table(f) for f in (tmp_path / "errors").glob("*.parquet")])
    assert table.schema.equals(ERROR_SCHEMA)
    assert sorted(table.select(["id", "error_type"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": f"e{i}", "error_type": "BadJson"} for i in range(3)
    ]


def _counts(read, failed, embedded=None, skipped=0, balanced=True):
    embedded = read - failed - skipped if embedded is None else embedded
    return {"read": read, "failed": failed, "embedded": embedded, "skipped": skipped, "balanced": balanced}


@pytest.mark.parametrize(
    "counts, fraction, max_failed, why",
    [
        (_counts(100, 10), 0.1, None, None),  # exactly at the budget passes
        (_counts(100, 11), 0.1, None, "11 of 100 records failed"),
        (_counts(100, 3), 0.5, 2, "more than --max-failed 2"),
        (_counts(0, 0), 0.1, None, "no record was read"),
        (_counts(10, 1, embedded=5, balanced=False), 0.5, None, "counts do not add up"),
    ],
)
def test_failure_verdict_cases(counts, fraction, max_failed, why):
    verdict = manifest.failure_verdict({TEXT: counts}, {TEXT: fraction}, max_failed)
    if why is None:
        assert verdict == {}
    else:
        assert why in verdict[TEXT]


def test_failure_verdict_fails_a_run_whose_lines_do_not_reconcile_and_names_the_file():
    accounting = manifest.line_accounting({"text_lines": 5, "text_record_lines": 4, "text_unaccounted_files": 1}, ["a.jsonl"])
    assert accounting["balanced"] is False
    verdict = manifest.failure_verdict({TEXT: _counts(4, 0), "image": _counts(3, 0)}, {}, accounting={TEXT: accounting})
    assert list(verdict) == [TEXT] and "a.jsonl" in verdict[TEXT]


def test_check_output_folder_refuses_foreign_files_and_touches_nothing(tmp_path):
    out = tmp_path / "out"
    assert folder.check_output_folder(str(out)) == []  # absent: nothing in the way
    (out / "text").mkdir(parents=True)
    (out / "text" / "part-00000-of-00001.parquet").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(folder.ForeignFilesError) as caught:
        folder.check_output_folder(str(out))
    assert isinstance(caught.value, UserError)
    assert "notes.txt" in str(caught.value) and "unfinished run" in str(caught.value)
    assert (out / "notes.txt").read_text() == "mine" and (out / "text" / "part-00000-of-00001.parquet").exists()


def test_check_output_folder_counts_only_what_a_manifest_or_a_claim_names_as_the_jobs(tmp_path):
    out = tmp_path / "out"
    (out / "text").mkdir(parents=True)
    (out / "text" / "part-00000-of-00001.parquet").write_bytes(b"x")
    (out / "_MANIFEST.json").write_text(json.dumps({"files": {"text": ["text/part-00000-of-00001.parquet", "../outside.txt"]}}))
    assert sorted(folder.check_output_folder(str(out))) == ["_MANIFEST.json", "text/part-00000-of-00001.parquet"]
    (out / "_MANIFEST.json").write_text("{not json")
    with pytest.raises(folder.UnreadableManifestError):
        folder.check_output_folder(str(out))
    (out / "_MANIFEST.json").unlink()
    (out / folder.RUNNING_NAME).write_text("{}")  # a claimed folder: the killed run's shards are the job's
    assert sorted(folder.check_output_folder(str(out))) == [folder.RUNNING_NAME, "text/part-00000-of-00001.parquet"]
