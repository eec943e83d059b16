"""The optional BigQuery sink (`--bigquery-table`): the same rows as the Parquet output, by file loads.

Each modality gets its own table, `TABLE_text` and `TABLE_image` (their columns differ), with
`embedding` as `REPEATED FLOAT64` (`ARRAY<FLOAT64>`, what `VECTOR_SEARCH` takes), `line` as
`INT64`, every other column as `STRING`, and a `run_id` column so that scheduled runs can append to
one table. Beam's `WriteToBigQuery` writes Avro files to the temp location and runs BigQuery load
jobs (no streaming inserts): tables are created if needed and appended to.

Dead letters are not sent to BigQuery: they stay in the run's `errors/` Parquet, which is always
written. `WriteEmbeddingsToBigQuery` returns one `("<modality>_bigquery_jobs", 1)` pair per
finished load or copy job, which the graph adds to the manifest's inputs, so `_MANIFEST.json` is
written only after the loads have finished.

Not run against real BigQuery here: the tests check the job's configuration offline.
"""

from __future__ import annotations

import re
from typing import Iterator, Optional

import apache_beam as beam
import pyarrow as pa

from transforms.errors import UserError

__all__ = [
    "BigQueryTableError",
    "parse_table",
    "check_sink",
    "table_for",
    "bigquery_schema",
    "table_rows",
    "TableToRowsFn",
    "WriteEmbeddingsToBigQuery",
]

RUN_ID_COLUMN = "run_id"
# PROJECT:DATASET.TABLE; the project may be domain-scoped (example.com:project).
_TABLE = re.compile(
    r"^(?P<project>(?:[a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,61}[a-z0-9]):(?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[A-Za-z0-9_-]{1,1000})$"
)


class BigQueryTableError(UserError, ValueError):
    """A `--bigquery-table` value that is not PROJECT:DATASET.TABLE."""


def parse_table(spec: str) -> tuple[str, str, str]:
    """(project, dataset, table) of `PROJECT:DATASET.TABLE`; BigQueryTableError otherwise."""
    match = _TABLE.match(spec or "")
    if not match:
        raise BigQueryTableError(
            f"{spec!r} is not PROJECT:DATASET.TABLE (e.g. my-project:embeddings.reviews; dataset: letters, "
            "digits and _; table: letters, digits, _ and -)"
        )
    return match.group("project"), match.group("dataset"), match.group("table")


def check_sink(table: str, temp_location: Optional[str]) -> None:
    """Fail before the job starts, naming the flag: a table spelt PROJECT:DATASET.TABLE, and a gs://
    --temp_location, where BigQuery's load jobs read their files from."""
    try:
        parse_table(table)
    except BigQueryTableError as exc:
        raise BigQueryTableError(f"--bigquery-table {exc}") from None
    if not (temp_location or "").startswith("gs://"):
        raise BigQueryTableError(
            f"--bigquery-table {table!r}: needs --temp_location gs://BUCKET/PATH for BigQuery's load files (got {temp_location!r})"
        )


def table_for(spec: str, modality: str) -> str:
    """The table one modality's rows go to: `PROJECT:DATASET.TABLE_<modality>`."""
    project, dataset, table = parse_table(spec)
    return f"{project}:{dataset}.{table}_{modality}"


def _field_type(field: pa.Field) -> tuple[str, str]:
    if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type) or pa.types.is_large_list(field.type):
        if not pa.types.is_floating(field.type.value_type):
            raise TypeError(f"column {field.name!r}: only float lists are supported, got {field.type}")
        return "FLOAT64", "REPEATED"
    mode = "NULLABLE" if field.nullable else "REQUIRED"
    if pa.types.is_integer(field.type):
        return "INT64", mode
    if pa.types.is_floating(field.type):
        return "FLOAT64", mode
    if pa.types.is_boolean(field.type):
        return "BOOL", mode
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        return "STRING", mode
    raise TypeError(f"column {field.name!r}: no BigQuery type for {field.type}")


def bigquery_schema(schema: pa.Schema) -> dict:
    """The BigQuery table schema (Beam's dict form) of an embedding Parquet schema, plus `run_id`
    (this run's id) unless the output already has such a column."""
    fields = []
    for field in schema:
        kind, mode = _field_type(field)
        fields.append({"name": field.name, "type": kind, "mode": mode})
    if RUN_ID_COLUMN not in schema.names:  # an output that has its own run_id column keeps it
        fields.append({"name": RUN_ID_COLUMN, "type": "STRING", "mode": "NULLABLE"})
    return {"fields": fields}


def table_rows(table: pa.Table, run_id: str) -> list[dict]:
    """A batch of embeddings as BigQuery rows: JSON-like dicts, the vector as a list of floats.

    float32 values become Python floats (float64) exactly; null passthrough values stay None.
    """
    rows = table.to_pylist()
    if RUN_ID_COLUMN not in table.column_names:
        for row in rows:
            row[RUN_ID_COLUMN] = run_id
    return rows


class TableToRowsFn(beam.DoFn):
    """pyarrow tables in, one BigQuery row (dict) per record out."""

    def __init__(self, run_id: str):
        self._run_id = run_id

    def process(self, table: pa.Table) -> Iterator[dict]:
        yield from table_rows(table, self._run_id)


class WriteEmbeddingsToBigQuery(beam.PTransform):
    """Embedding tables of one modality to `PROJECT:DATASET.TABLE_<modality>` by BigQuery load jobs.

    Emits `("<modality>_bigquery_jobs", 1)` for every finished load/copy job (Beam waits for each
    job before emitting it), for the manifest to wait on.
    """

    def __init__(self, table: str, modality: str, schema: pa.Schema, run_id: str, temp_location: Optional[str] = None):
        super().__init__()
        self._table = table_for(table, modality)
        self._modality = modality
        self._schema = bigquery_schema(schema)
        self._run_id = run_id
        self._temp_location = temp_location

    def expand(self, tables):
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
        from apache_beam.io.gcp.bigquery_tools import FileFormat

        result = (
            tables
            | "ToBigQueryRows" >> beam.ParDo(TableToRowsFn(self._run_id))
            | "LoadIntoBigQuery"
            >> WriteToBigQuery(
                self._table,
                schema=self._schema,
                method=WriteToBigQuery.Method.FILE_LOADS,
                temp_file_format=FileFormat.AVRO,
                create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
                write_disposition=BigQueryDisposition.WRITE_APPEND,
                custom_gcs_temp_location=self._temp_location,
            )
        )
        jobs = (result.destination_load_jobid_pairs, result.destination_copy_jobid_pairs) | "FinishedJobs" >> beam.Flatten()
        return jobs | "CountJobs" >> beam.Map(lambda _, name=f"{self._modality}_bigquery_jobs": (name, 1))
