"""`WriteEmbeddingRun`: write `EmbedText` / `EmbedImages` results as a run folder of the job.

    texts = records | EmbedText(model="models/text.keras", passthrough=["label"])
    images = photos | EmbedImages(model="MobileNet", alpha=0.25)
    {"text": texts, "image": images} | WriteEmbeddingRun("out/2026-12-04")  # or texts | WriteEmbeddingRun(...)

The folder is the one `python -m pipeline run` writes, with the job's own sinks and manifest writer
(`transforms.sinks.parquet`, `transforms.sinks.manifest`, `transforms.sinks.folder`): `text/` and `image/` Parquet in the job's output schema (the model's
identity in the schema metadata, an `embedded_run_id` column naming this run), dead letters in
`errors/`, and `_MANIFEST.json` last, with the keys the tools read: `models` (name, sha256,
dimension, details), `options` (the model spec, `passthrough`, `normalize`), `files`, `counts`
and `status`. So `neighbors`, `evaluate`, `build-index`, `report`, `read_embeddings` and a later
`run --incremental-from` take it like any run of the job.

Counts come from the PCollections: `embedded` is the rows written, `failed` the dead letters,
`read` their sum (every record given to the transform ends up in one of the two), `skipped` 0.
The failure budget is the job's (`max_failed_fraction`, `max_failed`): a run over it is written
with `"status": "failed"`, which the tools refuse unless told otherwise.

The rows written are the transforms' own columnar tables (what `EmbedResult.embeddings` is made
from, with `source` and, for text, `line`: None for records given as dicts; an image's uri),
so apply it to the result as `EmbedText` / `EmbedImages` returned it. The folder is checked and
cleared when the transform is applied, as the job's launcher does: it refuses a folder holding
files no run of the job wrote (or one another run is writing: `_RUNNING.json`), and deletes an
earlier run's files there (its manifest first). Windowed results are written as one run (they
are re-windowed into the global window first).
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from typing import Any, Mapping, Optional

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from transforms.embed.api import RunBranch, run_branch
from transforms.io import fileio
from transforms.records import MODALITIES, TEXT, failed_counts
from transforms.sinks.folder import RUNNING_NAME, OutputInUseError, clear_previous_output
from transforms.sinks.manifest import DEFAULT_MAX_FAILED_FRACTION, TopErrorReasons, WriteManifestFn
from transforms.sinks.parquet import BatchErrors, WriteErrors, WriteTables
from transforms.state.carry import PROVENANCE_COLUMN, with_run_id

__all__ = ["WriteEmbeddingRun"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fractions(value: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(MODALITIES)
        if unknown:
            raise ValueError(f"WriteEmbeddingRun: max_failed_fraction names unknown modalities {sorted(unknown)} (text, image)")
        fractions = {m: float(value.get(m, DEFAULT_MAX_FAILED_FRACTION)) for m in MODALITIES}
    else:
        fractions = {m: float(value) for m in MODALITIES}
    for modality, fraction in fractions.items():
        if not 0 <= fraction <= 1:
            raise ValueError(f"WriteEmbeddingRun: max_failed_fraction for {modality} must be from 0 to 1, got {fraction!r}")
    return fractions


def _branches(results: Any) -> dict[str, RunBranch]:
    """{modality: RunBranch} of an EmbedResult, a list/tuple of them, or a dict of them."""
    if hasattr(results, "embeddings"):  # one EmbedResult (a tuple too: checked first)
        items = [results]
    elif isinstance(results, Mapping):
        items = list(results.values())
    elif isinstance(results, (list, tuple)):
        items = list(results)
    else:
        items = [results]
    branches: dict[str, RunBranch] = {}
    for item in items:
        branch = run_branch(item)
        if branch.modality in branches:
            raise ValueError(f"WriteEmbeddingRun: two {branch.modality} results; a run holds one per modality")
        branches[branch.modality] = branch
    if not branches:
        raise ValueError("WriteEmbeddingRun: nothing to write (give the result of EmbedText and/or EmbedImages)")
    return branches


def _prepare_folder(output: str) -> None:
    """As the job's launcher: refuse a folder another run is writing or holding foreign files; delete
    an earlier run's files (its manifest first). Raises the job's OutputInUseError / ForeignFilesError /
    UnreadableManifestError (user errors: the message names the folder)."""
    try:
        marker = json.loads(fileio.read_bytes(fileio.join(output, RUNNING_NAME)))
    except FileNotFoundError:
        marker = None
    except ValueError:  # a half-written marker: still a claim, of an unknown run
        marker = {}
    if marker is not None:
        marker = marker if isinstance(marker, dict) else {}
        raise OutputInUseError(
            f"WriteEmbeddingRun({output!r}): run {marker.get('run_id', '?')} (pid {marker.get('pid', '?')} on "
            f"{marker.get('host', '?')}) is writing there ({RUNNING_NAME}); wait for it or choose another folder"
        )
    clear_previous_output(output)


class WriteEmbeddingRun(beam.PTransform):
    """`EmbedText` / `EmbedImages` results in (one, a list, or `{"text": ..., "image": ...}`); a run
    folder of the job out at `output` (local or gs://). Returns the PCollection of the manifest's path.

    `run_id`: recorded in the manifest and each row's `embedded_run_id` (default: random);
    `max_failed_fraction` (one number or {modality: fraction}) and `max_failed`: the job's failure
    budget (`--max-failed-fraction`, `--max-failed`).
    """

    def __init__(
        self,
        output: str,
        run_id: Optional[str] = None,
        max_failed_fraction: float | Mapping[str, float] = DEFAULT_MAX_FAILED_FRACTION,
        max_failed: Optional[int] = None,
        label: Optional[str] = None,
    ):
        super().__init__(label)
        if not isinstance(output, str) or not output.strip():
            raise ValueError(f"WriteEmbeddingRun: output must be a folder path, got {output!r}")
        output = output.rstrip("/") if len(output) > 1 else output
        self._output = output if fileio.is_remote(output) else os.path.abspath(os.path.expanduser(output))
        self._run_id = run_id or uuid.uuid4().hex[:12]
        self._fractions = _fractions(max_failed_fraction)
        if max_failed is not None and (isinstance(max_failed, bool) or not isinstance(max_failed, int) or max_failed < 0):
            raise ValueError(f"WriteEmbeddingRun: max_failed must be a non-negative integer, got {max_failed!r}")
        self._max_failed = max_failed

    def expand(self, results: Any) -> beam.PCollection:
        branches = _branches(results)
        p = next(iter(branches.values())).tables.pipeline
        started_at = _now()
        _prepare_folder(self._output)
        files, counts, errors = [], [], []
        for modality in (m for m in MODALITIES if m in branches):
            branch = branches[modality]
            name = "Text" if modality == TEXT else "Images"
            schema = _with_provenance(branch.schema)
            tables = (
                branch.tables
                | f"{name}InOneWindow" >> beam.WindowInto(GlobalWindows())
                | f"Mark{name}Run" >> beam.Map(with_run_id, self._run_id, schema)
            )
            written = tables | f"Write{name}Embeddings" >> WriteTables(fileio.join(self._output, modality), schema)
            files.append(written | f"{name}FileNames" >> beam.Map(lambda path, m=modality: (m, path)))
            counts.append(tables | f"Count{name}Rows" >> beam.FlatMap(_table_counts, modality))
            errors.append(
                branch.errors
                | f"{name}ErrorsInOneWindow" >> beam.WindowInto(GlobalWindows())
                | f"Batch{name}Errors" >> BatchErrors()  # compressed batches before the Flatten (issue 19 (6))
            )
        all_errors = errors | "AllErrors" >> beam.Flatten()
        error_files = all_errors | "WriteErrors" >> WriteErrors(fileio.join(self._output, "errors"))
        files.append(error_files | "ErrorFileNames" >> beam.Map(lambda path: ("errors", path)))
        counts.append(all_errors | "CountFailed" >> beam.FlatMap(failed_counts, ("failed", "read")))
        totals = counts | "AllCounts" >> beam.Flatten() | "SumCounts" >> beam.CombinePerKey(sum)
        options: dict = {"passthrough": [], "writer": "WriteEmbeddingRun"}
        for branch in branches.values():
            for key, value in branch.options.items():
                if key == "passthrough":
                    options["passthrough"] += [n for n in value if n not in options["passthrough"]]
                elif key != "normalize":
                    options[key] = value
        normalized = all(b.options.get("normalize") for b in branches.values())
        options["normalize"] = normalized
        static = {
            "run_id": self._run_id,
            "started_at": started_at,
            "output": self._output,
            "models": {m: dict(b.model) for m, b in branches.items()},
            "options": json.loads(json.dumps(options)),  # plain JSON values, as the manifest stores them
            "normalized": normalized,
            "incremental_from": [],
            "written_by": "WriteEmbeddingRun",
        }
        no_lines = p | "NoLineAccounting" >> beam.Create([])
        return (
            p
            | "ManifestTrigger" >> beam.Create([None])
            | "WriteManifest"
            >> beam.ParDo(
                WriteManifestFn(self._output, static, self._fractions, self._max_failed),
                counts=beam.pvalue.AsDict(totals),
                files=beam.pvalue.AsList(files | "AllOutputFiles" >> beam.Flatten()),
                reasons=beam.pvalue.AsList(all_errors | "TopErrorReasons" >> TopErrorReasons()),
                unaccounted=beam.pvalue.AsList(no_lines),
            )
        )


def _with_provenance(schema: pa.Schema) -> pa.Schema:
    """The job's output schema: `embedded_run_id` right after `model_sha256` (`records.embedding_schema`)."""
    at = schema.get_field_index("model_sha256") + 1
    return schema.insert(at, pa.field(PROVENANCE_COLUMN, pa.string())).with_metadata(schema.metadata)


def _table_counts(table, modality: str) -> list:
    return [(f"{modality}_embedded", table.num_rows), (f"{modality}_read", table.num_rows)]
