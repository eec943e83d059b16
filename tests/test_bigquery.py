"""The optional BigQuery sink (`--bigquery-table`), checked offline.

Nothing here talks to BigQuery: the Dataflow job is built as a template on the GCS emulator and
the sink's configuration is read back from the job's pipeline (table, schema, file loads, Avro
files, create/write dispositions, and the manifest waiting for the load jobs). The row conversion
is run on real tables, and its rows are written with Beam's own Avro writer for load files.
"""

from __future__ import annotations

import io
import json
import re

import apache_beam as beam
import fastavro
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from gcs_emulator import gcs_emulator  # noqa: F401 - the fixture
from tests_support import DATAFLOW_PROJECT as PROJECT
from tests_support import build_dataflow_template, pipeline_do_fns
from transforms.records import IMAGE, TEXT, embedding_schema
from transforms.sinks.bigquery import (
    BigQueryTableError,
    TableToRowsFn,
    bigquery_schema,
    check_sink,
    parse_table,
    table_for,
    table_rows,
)

TABLE = f"{PROJECT}:embeddings.reviews"
SDK_IMAGE = "europe-docker.pkg.dev/embeddings-test-project/beam/embeddings:0.1.0"


def _text_table(n: int = 3, dim: int = 4) -> pa.Table:
    schema = embedding_schema(TEXT, dim, ["label"], metadata={"dimension": str(dim)})
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    return pa.Table.from_pydict(
        {
            "id": [f"r{i}" for i in range(n)],
            "source": ["gs://b/in/a.jsonl"] * n,
            "line": list(range(1, n + 1)),
            "content_sha256": [f"{i:064x}" for i in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            "model": ["text.keras"] * n,
            "model_sha256": ["ab" * 32] * n,
            "label": ["1", None, "0"][:n],
        },
        schema=schema,
    )


# ---- the flag ---------------------------------------------------------------------------------


def test_table_spec_is_project_dataset_table():
    assert parse_table(TABLE) == (PROJECT, "embeddings", "reviews")
    assert parse_table("example.com:my-project:ds.t_1") == ("example.com:my-project", "ds", "t_1")
    assert table_for(TABLE, TEXT) == f"{PROJECT}:embeddings.reviews_text"
    assert table_for(TABLE, IMAGE) == f"{PROJECT}:embeddings.reviews_image"
    for bad in ("embeddings.reviews", f"{PROJECT}:embeddings", f"{PROJECT}.embeddings.reviews", f"{PROJECT}:emb-eddings.t", ""):
        with pytest.raises(BigQueryTableError):
            parse_table(bad)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--bigquery-table", "embeddings.reviews", "--temp_location", "gs://b/tmp"],
            "--bigquery-table 'embeddings.reviews' is not PROJECT:DATASET.TABLE",
        ),
        (
            ["--bigquery-table", TABLE],
            "--bigquery-table 'embeddings-test-project:embeddings.reviews': needs --temp_location gs://",
        ),
        (
            ["--bigquery-table", TABLE, "--temp_location", "/tmp/local"],
            "--bigquery-table 'embeddings-test-project:embeddings.reviews': needs --temp_location gs://BUCKET/PATH for BigQuery's load files (got '/tmp/local')",
        ),
    ],
)
def test_bad_bigquery_flags_fail_before_the_job_naming_the_flag(extra, message, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import config_from_options
    from pipeline.options import ConfigError

    argv = ["--output", str(tmp_path / "out"), "--text-input", "x.jsonl", "--text-model", "m.keras"] + extra
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        config_from_options(PipelineOptions(argv), check_paths=False)


def test_the_flag_reaches_the_config_and_the_manifest_options(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import config_from_options

    argv = [
        "--output",
        str(tmp_path),
        "--text-input",
        "x.jsonl",
        "--text-model",
        "m.keras",
        "--bigquery_table",
        TABLE,
        "--temp_location",
        "gs://b/tmp",
    ]
    config = config_from_options(PipelineOptions(argv), check_paths=False)
    assert config.bigquery_table == TABLE and config.describe()["bigquery_table"] == TABLE
    assert config_from_options(PipelineOptions(argv[:6]), check_paths=False).bigquery_table is None
    check_sink(TABLE, "gs://b/tmp")  # no error


# ---- schema and rows ----------------------------------------------------------------------------


def test_schema_has_the_embedding_as_repeated_float64_and_a_run_id():
    schema = bigquery_schema(_text_table().schema)
    assert schema["fields"] == [
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "source", "type": "STRING", "mode": "NULLABLE"},
        {"name": "line", "type": "INT64", "mode": "NULLABLE"},
        {"name": "content_sha256", "type": "STRING", "mode": "NULLABLE"},
        {"name": "embedding", "type": "FLOAT64", "mode": "REPEATED"},
        {"name": "model", "type": "STRING", "mode": "NULLABLE"},
        {"name": "model_sha256", "type": "STRING", "mode": "NULLABLE"},
        {"name": "label", "type": "STRING", "mode": "NULLABLE"},
        {"name": "run_id", "type": "STRING", "mode": "NULLABLE"},
    ]
    image = bigquery_schema(embedding_schema(IMAGE, 8))
    assert "line" not in [f["name"] for f in image["fields"]]


def test_an_output_with_its_own_run_id_column_keeps_it():
    table = _text_table().append_column("run_id", pa.array(["earlier", "earlier", "now"]))
    names = [f["name"] for f in bigquery_schema(table.schema)["fields"]]
    assert names.count("run_id") == 1 and names[-1] == "run_id"
    assert [r["run_id"] for r in table_rows(table, "now")] == ["earlier", "earlier", "now"]


def test_rows_carry_every_column_and_the_exact_float32_values():
    table = _text_table()
    rows = table_rows(table, "run-7")
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    assert rows[1]["label"] is None and rows[0]["label"] == "1" and rows[2]["line"] == 3
    assert {r["run_id"] for r in rows} == {"run-7"}
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(3, -1)
    for row, vector in zip(rows, vectors):
        assert all(isinstance(v, float) for v in row["embedding"])
        assert np.array_equal(np.asarray(row["embedding"], dtype=np.float32), vector)  # float32 -> float64 exactly
    assert set(rows[0]) == {f["name"] for f in bigquery_schema(table.schema)["fields"]}


def test_rows_fit_beams_avro_load_files():
    """The rows are written with the writer Beam's file loads use for `temp_file_format=AVRO`."""
    from apache_beam.io.gcp.bigquery_tools import AvroRowWriter

    table = _text_table()
    rows = table_rows(table, "run-7")
    buffer = io.BytesIO()
    writer = AvroRowWriter(buffer, bigquery_schema(table.schema))
    for row in rows:
        writer.write(row)
    writer.flush()
    back = list(fastavro.reader(io.BytesIO(buffer.getvalue())))
    assert back == rows


def test_table_to_rows_in_a_pipeline():
    tables = [_text_table(3), _text_table(2)]
    expected = [(r["id"], r["run_id"], tuple(r["embedding"])) for t in tables for r in table_rows(t, "r")]
    with BeamTestPipeline() as p:
        rows = p | beam.Create(tables) | beam.ParDo(TableToRowsFn("r"))
        assert_that(rows | beam.Map(lambda r: (r["id"], r["run_id"], tuple(r["embedding"]))), equal_to(expected))


# ---- the Dataflow job, built offline -----------------------------------------------------------


@pytest.fixture(scope="module")
def bigquery_job(gcs_emulator, tiny_text_model, tiny_image_model, tmp_path_factory) -> dict:
    """A Dataflow template with `--bigquery-table`, built on the GCS emulator, and its pipeline proto."""
    job = "embed-bigquery"
    folder = tmp_path_factory.mktemp("bigquery") / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"id": "a", "text": "good movie", "label": "1"}) + "\n")
    (folder / "dog.png").write_bytes(b"not decoded at build time")
    gcs_emulator.upload_tree(folder, job, "in")
    return build_dataflow_template(
        gcs_emulator,
        job,
        SDK_IMAGE,
        [
            "--text-input",
            gcs_emulator.url(job, "in", "*.jsonl"),
            "--text-model",
            gcs_emulator.upload(tiny_text_model, job, "models", "text.keras"),
            "--image-input",
            gcs_emulator.url(job, "in", "*.png"),
            "--image-model",
            gcs_emulator.upload(tiny_image_model, job, "models", "image.keras"),
            "--passthrough",
            "label",
            "--run-id",
            "2026-11-26",
            "--bigquery-table",
            TABLE,
        ],
    )


@pytest.mark.gcs
@pytest.mark.parametrize("step, modality", [("WriteTextToBigQuery", TEXT), ("WriteImagesToBigQuery", IMAGE)])
def test_dataflow_job_loads_each_modality_into_its_table_by_file_loads(bigquery_job, step, modality):
    from apache_beam.io.gcp.bigquery_file_loads import TriggerCopyJobs, TriggerLoadJobs, WriteRecordsToFile
    from apache_beam.io.gcp.bigquery_tools import AppendDestinationsFn, FileFormat

    pipeline = bigquery_job["pipeline"]
    names = {t.unique_name for t in pipeline.components.transforms.values()}
    assert f"{step}/LoadIntoBigQuery/BigQueryBatchFileLoads" in names  # method=FILE_LOADS, not streaming inserts
    assert not any(n.startswith(f"{step}/") and "StreamingInserts" in n for n in names)
    fns = pipeline_do_fns(pipeline, f"{step}/")
    rows_fn = [f for f in fns.values() if isinstance(f, TableToRowsFn)]
    assert len(rows_fn) == 1 and rows_fn[0]._run_id == "2026-11-26"

    destinations = [f for f in fns.values() if isinstance(f, AppendDestinationsFn)]
    assert [f.destination(None).tableId for f in destinations] == [f"reviews_{modality}"]
    table = destinations[0].destination(None)
    assert (table.projectId, table.datasetId) == (PROJECT, "embeddings")

    # Direct loads into the table; a destination with too many files for one load job goes through
    # temporary tables and a copy job, which then carries the dispositions.
    loads = [f for f in fns.values() if isinstance(f, TriggerLoadJobs)]
    direct = [f for f in loads if not f.temporary_tables]
    copies = [f for f in fns.values() if isinstance(f, TriggerCopyJobs)]
    assert len(direct) == 1 and len(loads) == 2 and len(copies) == 1, sorted(fns)
    for job in direct + copies:
        assert job.create_disposition == "CREATE_IF_NEEDED" and job.write_disposition == "WRITE_APPEND"
    for load in loads:
        assert load.source_format == FileFormat.AVRO
        fields = {f["name"]: (f["type"], f["mode"]) for f in load.schema["fields"]}
        assert fields["embedding"] == ("FLOAT64", "REPEATED")
        assert fields["id"] == ("STRING", "REQUIRED") and fields["run_id"] == ("STRING", "NULLABLE")
        assert ("line" in fields) == (modality == TEXT) and fields.get("label") == ("STRING", "NULLABLE")
    writers = [f for f in fns.values() if isinstance(f, WriteRecordsToFile)]
    assert writers and all(w.file_format == FileFormat.AVRO for w in writers)


@pytest.mark.gcs
def test_manifest_waits_for_the_bigquery_load_jobs(bigquery_job):
    """The finished-job counts are an input of SumCounts, a side input of WriteManifest."""
    pipeline = bigquery_job["pipeline"]
    transforms = {t.unique_name: t for t in pipeline.components.transforms.values()}
    all_counts = set(transforms["AllCounts"].inputs.values())
    for step in ("WriteTextToBigQuery", "WriteImagesToBigQuery"):
        assert set(transforms[f"{step}/CountJobs"].outputs.values()) <= all_counts
        finished = set(transforms[f"{step}/FinishedJobs"].inputs.values())
        produced = {
            pc for name, t in transforms.items() if name.startswith(f"{step}/LoadIntoBigQuery/") for pc in t.outputs.values()
        }
        assert finished and finished <= produced


@pytest.mark.gcs
def test_parquet_output_and_dead_letters_stay_beside_the_sink(bigquery_job):
    assert bigquery_job["options"]["bigquery_table"] == TABLE
    names = {t.unique_name for t in bigquery_job["pipeline"].components.transforms.values()}
    assert {"Text/WriteTextEmbeddings", "Images/WriteImageEmbeddings", "WriteErrors", "WriteManifest"} <= names
    assert not any(n.startswith("WriteErrors/") and "BigQuery" in n for n in names)  # dead letters: Parquet only


def test_without_the_flag_the_graph_has_no_bigquery_step(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.checks import config_from_options
    from pipeline.graph import ModelInfo, build_pipeline

    argv = ["--output", str(tmp_path), "--text-input", "x.jsonl", "--text-model", "m.keras"]
    names = []
    for extra in ([], ["--bigquery-table", TABLE, "--temp_location", "gs://b/tmp"]):
        p = beam.Pipeline(options=PipelineOptions(argv + extra))
        config = config_from_options(PipelineOptions(argv + extra), check_paths=False)
        build_pipeline(p, config, {TEXT: ModelInfo("m.keras", "0" * 64, 4)}, "2026-11-26T00:00:00+00:00")
        names.append({t.unique_name for t in p.to_runner_api().components.transforms.values()})
    assert not any("BigQuery" in n for n in names[0])
    assert "WriteTextToBigQuery/LoadIntoBigQuery" in names[1]
