"""The pipeline graph: per modality read -> embed -> write, then the dead letters and the manifest.

    Text    ReadTextRecords -> [CheckTextRecords] -> EmbedText -> WriteTextEmbeddings
            ReadTextRecords' line tallies -> LinesPerFile -> ReconcileLines (the manifest's `accounting`)
    Images  MatchImageFiles / ReadImageManifests -> [FindDuplicateImageIds] -> EmbedImages -> WriteImageEmbeddings
    BatchErrors (each step's dead letters, in compressed batches) -> WriteErrors, SumCounts -> WriteManifest

Each modality is one composite step (`Text`, `Images`), built from the public columnar transforms
(`transforms.embed.api.EmbedTextTables` / `EmbedImageRefs`) and the job's state steps: text tables
pass `transforms.state.screen.ScreenTextTables` (the duplicate-id check and incremental skipping,
as side inputs) first; images reach the embedding DoFn with their duplicate check as a side input
and, in incremental runs, as `incremental.AttachedRef`s. `build_pipeline` only wires these together; it is called by
`pipeline.run` and by the tests with a `TestPipeline`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import apache_beam as beam
import pyarrow as pa

from pipeline.options import JobConfig
from transforms.embed.api import EmbedImageRefs, EmbedTextTables
from transforms.embed.devices import requested_workers  # GPU workers: what the job asked for (issue 13)
from transforms.io import fileio
from transforms.io.image_read import ListImageFiles, ReadImageManifests, is_manifest
from transforms.io.text_read import LINES, ReadTextFiles, add_tallies, reconcile_file
from transforms.records import ERRORS, IMAGE, TEXT, embedding_schema, failed_counts
from transforms.results import read_manifest, run_files
from transforms.sinks.bigquery import WriteEmbeddingsToBigQuery  # optional BigQuery sink (issue 13)
from transforms.sinks.folder import release_output
from transforms.sinks.manifest import TopErrorReasons, WriteManifestFn
from transforms.sinks.parquet import BatchErrors, WriteErrors, WriteTables
from transforms.state.carry import CARRIED, CarryRows, with_run_id, without_provenance
from transforms.state.dedup import CheckTextRecords, FindDuplicateIds
from transforms.state.incremental import SKIPPED, AttachPriorKeys, ReadPriorKeys
from transforms.state.keys import bucket_bits_for, id_key_slices, table_key_slices
from transforms.state.screen import ScreenTextTables

__all__ = ["ModelInfo", "ModalityOutput", "EmbedTextFiles", "EmbedImageFiles", "output_schema", "build_pipeline"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the launcher learnt by loading a model once: its identity and output size."""

    name: str
    sha256: str
    dimension: int
    details: dict = dataclasses.field(default_factory=dict)


class ModalityOutput(NamedTuple):
    """What one modality's branch hands on to the dead letters, the manifest and optional sinks."""

    tables: beam.PCollection  # this run's embedded tables, as embedded (before --carry-over's run id)
    errors: tuple  # PCollections of dead letters (records.ErrorRecord; build_pipeline batches them: ErrorBatch)
    counts: tuple  # PCollections of (counter, n) for the manifest
    files: tuple  # PCollections of (output folder, written file)
    carried: Optional[beam.PCollection] = None  # --carry-over: the earlier rows copied
    unaccounted: Optional[beam.PCollection] = None  # text: why a file's lines do not reconcile (strings)


def output_schema(modality: str, info: ModelInfo, config: JobConfig) -> pa.Schema:
    """The Parquet schema of a modality's embeddings, with the model's identity in its metadata.

    Always with `embedded_run_id` (this run's id, or an earlier run's on rows --carry-over copies):
    one schema whether or not --carry-over is on, so folders of both kinds read together as one."""
    metadata = {"dimension": str(info.dimension), "model": info.name, "normalized": str(config.normalize).lower()}
    if modality == IMAGE:
        metadata.update(
            backend=str(info.details.get("backend", "tensorflow")),
            precision=str(info.details.get("precision", "f32")),
            decoder=str(info.details.get("decoder", "pillow")),
        )
    return embedding_schema(modality, info.dimension, config.passthrough, metadata=metadata, provenance=True)


def _count(label: str, name: str, pcoll, per_element=lambda _: 1):
    return pcoll | label >> beam.Map(lambda element, n=name: (n, per_element(element)))


def _rows(table) -> int:
    return table.num_rows


def _line_counts(entry) -> list:
    """The manifest's line accounting counts of one text file (`path`, its summed `LineTally`)."""
    path, tally = entry
    if tally.unit == "rows":
        counts = [("text_rows", tally.total), ("text_record_rows", tally.records)]
    else:
        counts = [
            ("text_lines", tally.total),
            ("text_record_lines", tally.records),
            ("text_blank_lines", tally.blank),
            ("text_header_lines", tally.header),
            ("text_continuation_lines", tally.continuation),
        ]
    if reconcile_file(path, tally):
        counts.append(("text_unaccounted_files", 1))
    return counts


def _unaccounted(entry) -> list:
    problem = reconcile_file(*entry)
    return [problem] if problem else []


def _estimated_records(patterns, listing: fileio.InputListing, bytes_per_record: int = 64) -> int:
    """A generous guess of the record count from the inputs' sizes (sizes the hash buckets)."""
    total = 0
    for pattern in patterns:
        try:
            total += sum(size for _, size in listing.files(pattern))
        except Exception:  # noqa: BLE001 - a pattern that matches nothing is reported elsewhere
            continue
    return total // bytes_per_record


def _prior_run_ids(folders: Sequence[str], modality: str = TEXT) -> list[tuple[str, str]]:
    """[(Parquet file, run id)] of the earlier runs' files of one modality, in the order
    `pipeline.run.prior_embedding_files` lists them (folders in flag order, files as in the manifest)."""
    files = []
    for folder in folders:
        manifest = read_manifest(folder, allow_failed=True)  # checked at launch (`prior_embedding_files`)
        files += [(path, str(manifest.get("run_id"))) for path in run_files(folder, manifest, modality)]
    return files


# The labels of the write steps, per modality (docs/scaling.md and the Dataflow tests name them).
_WRITE_LABELS = {
    TEXT: {"write": "WriteTextEmbeddings", "carry": "CarryTextRows", "write_carried": "WriteCarriedText"},
    IMAGE: {"write": "WriteImageEmbeddings", "carry": "CarryImageRows", "write_carried": "WriteCarriedImages"},
}


def _write_embeddings(
    modality: str, tables, carry_rows, config: JobConfig, schema: pa.Schema, prior_files: Sequence[str]
) -> tuple[list, list, Optional[beam.PCollection]]:
    """Write a modality's embeddings to OUTPUT/<modality>/ (each row with this run's id: `embedded_run_id`)
    and, when `carry_rows` (earlier rows chosen to carry over) is given, copy those rows to their
    own files (OUTPUT/<modality>/carried-*). Returns (file name PCollections, counts, carried)."""
    labels = _WRITE_LABELS[modality]
    folder = fileio.join(config.output, modality)
    files, counts, carried = [], [], None
    tables = tables | "MarkEmbeddedRun" >> beam.Map(with_run_id, config.run_id, schema)  # every run: one schema
    if carry_rows is not None:
        run_ids = dict(_prior_run_ids(config.incremental_from, modality))
        carried = carry_rows | labels["carry"] >> CarryRows(
            [(path, run_ids.get(path, "unknown")) for path in prior_files], schema, modality
        )
        # Their own sink, not a Flatten with the new rows: a local runner would buffer both inputs
        # of a Flatten whole; this way each streams into its files.
        carried_files = carried | labels["write_carried"] >> WriteTables(folder, schema, prefix="carried")
        files.append(carried_files | "CarriedFileNames" >> beam.Map(lambda path, m=modality: (m, path)))
        counts.append(_count("CountCarried", f"{modality}_carried", carried, _rows))
    written = tables | labels["write"] >> WriteTables(folder, schema)
    files.append(written | "FileNames" >> beam.Map(lambda path, m=modality: (m, path)))
    return files, counts, carried


class EmbedTextFiles(beam.PTransform):
    """The job's text branch: read --text-input, check ids (and earlier runs), embed, write OUTPUT/text/.

    Applied to the pipeline's root; returns a `ModalityOutput`. `prior_files`: the Parquet files of
    earlier runs (--incremental-from), whose unchanged records are skipped (or carried over)."""

    def __init__(
        self,
        config: JobConfig,
        info: ModelInfo,
        schema: pa.Schema,
        prior_files: Sequence[str] = (),
        batch_rows: int = 4096,
        listing: Optional[fileio.InputListing] = None,
        label: Optional[str] = None,
    ):
        super().__init__(label)
        self._config = config
        self._listing = fileio.InputListing() if listing is None else listing  # the launcher's, to list inputs once
        self._info = info
        self._schema = schema
        self._prior_files = list(prior_files)
        self._read_options = dict(
            text_field=config.text_field,
            id_field=config.text_id_field,
            encoding=config.text_encoding,
            batch_rows=batch_rows,
            max_text_bytes=config.max_text_bytes,
            split_bytes=config.read_split_bytes,
        )

    def _check_records(self, p: beam.pvalue.PBegin, carry: bool):
        """Duplicates and unchanged records, found by a separate, lighter pass over the input.

        Keyed shuffles on id-hash buckets (`dedup.CheckTextRecords`); embedding then streams, and only
        duplicates and per-chunk bitmaps of lines to skip reach it as side inputs. Its own source,
        not a sibling of ReadTextRecords: the runner would otherwise fuse the two reads and hold
        every record in memory until the check is done."""
        config = self._config
        file_index = {path: i for i, path in enumerate(self._listing.paths(config.text_inputs))}  # file order: "first occurrence"
        bits = bucket_bits_for(_estimated_records(config.text_inputs, self._listing) * (2 if self._prior_files else 1))
        if self._prior_files:  # content hashes too: the reader's own records, uncounted
            keys = (
                p | "ReadTextKeys" >> ReadTextFiles(config.text_inputs, counted=False, **self._read_options)
            ).records | "TextRecordKeys" >> beam.FlatMap(table_key_slices, file_index, self._info.sha256, bits)
            keys = (
                keys,
                p | "PriorTextKeys" >> ReadPriorKeys(self._prior_files, bits, positions=carry),
            ) | "TextAndPriorKeys" >> beam.Flatten()
        else:
            keys = (
                p
                | "ReadTextIds" >> ReadTextFiles(config.text_inputs, ids_only=True, **self._read_options)
                | "TextIdKeys" >> beam.FlatMap(id_key_slices, file_index, bits)
            )
        return keys | "CheckTextRecords" >> CheckTextRecords(bits, carry=carry, first_only=not config.allow_duplicate_ids)

    def expand(self, p: beam.pvalue.PBegin) -> ModalityOutput:
        config = self._config
        carry = bool(config.carry_over and self._prior_files)
        # Each file is matched once, planned (large files in ranges of --read-split-bytes) and read
        # range by range by a splittable DoFn: one big file is spread over every worker.
        read = p | "ReadTextRecords" >> ReadTextFiles(
            config.text_inputs, passthrough=config.text_read_passthrough, **self._read_options
        )
        side, checked, tables, screened = {}, None, read.records, []
        if not config.allow_duplicate_ids or self._prior_files:
            checked = self._check_records(p, carry)
            if not config.allow_duplicate_ids:
                side["duplicates"] = beam.pvalue.AsMultiMap(checked["duplicates"])
            if self._prior_files:
                side["skips"] = beam.pvalue.AsMultiMap(checked["skips"])
            screened = [tables | "ScreenText" >> ScreenTextTables(**side)]
            tables = screened[0].tables
        embedded = tables | "EmbedText" >> EmbedTextTables(
            config.text_model, without_provenance(self._schema), config.normalize
        )  # embedded_run_id is added after embedding
        files, counts, carried = _write_embeddings(
            TEXT, embedded.tables, checked["carry"] if carry else None, config, self._schema, self._prior_files
        )
        # Every line of every file in a record, a dead letter, or a counted blank/header/continuation
        # line: the reader's tallies per range, summed per file (one small element per range).
        per_file = read[LINES] | "LinesPerFile" >> beam.CombinePerKey(add_tallies)
        unaccounted = per_file | "ReconcileLines" >> beam.FlatMap(_unaccounted)
        counts += [
            _count("CountRead", "text_read", read.records, _rows),
            _count("CountReadErrors", "text_read", read[ERRORS]),
            _count("CountEmbedded", "text_embedded", embedded.tables, _rows),
            per_file | "CountLines" >> beam.FlatMap(_line_counts),
        ]
        counts += [_count("CountSkipped", "text_skipped", s.skipped, lambda n: n) for s in screened]
        if self._prior_files:  # earlier ids no record has now: the records that left the input
            counts.append(_count("CountRemoved", "text_removed", checked["removed"], lambda n: n))
        errors = (read[ERRORS], *(s.errors for s in screened), embedded.errors)
        return ModalityOutput(embedded.tables, errors, tuple(counts), tuple(files), carried, unaccounted)


def _duplicate_image_ids(refs, bits: int):
    """{id: first occurrence} of the ids that occur more than once (hash-bucketed shuffles)."""
    return (
        refs
        | "BatchImageIds" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
        | "ImageIdOccurrences" >> beam.Map(lambda rs: ([r.id for r in rs], [r.uri for r in rs], [r.line for r in rs]))
        | "FindDuplicateImageIds" >> FindDuplicateIds(1 << bits)
    )


class _EmbedImageRefsWithChecks(beam.PTransform):
    """The public `EmbedImageRefs` with the job's knobs: the duplicate check's {id: first occurrence}
    as a side input (None: no check), every output of the embedding step (SKIPPED, CARRIED too)."""

    def __init__(self, embed: EmbedImageRefs, duplicates: Optional[beam.pvalue.AsSideInput]):
        super().__init__()
        self._embed = embed
        self._side = {} if duplicates is None else {"duplicates": duplicates}

    def expand(self, refs: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return self._embed.embed_batches(refs, **self._side)


class EmbedImageFiles(beam.PTransform):
    """The job's image branch: list --image-input (globs and manifests), check ids, skip images
    earlier runs embedded, read, decode and embed, write OUTPUT/image/. Returns a `ModalityOutput`."""

    def __init__(
        self,
        config: JobConfig,
        schema: pa.Schema,
        prior_files: Sequence[str] = (),
        listing: Optional[fileio.InputListing] = None,
        label: Optional[str] = None,
    ):
        super().__init__(label)
        self._config = config
        self._listing = fileio.InputListing() if listing is None else listing  # the launcher's, to list inputs once
        self._schema = schema
        self._prior_files = list(prior_files)

    def _list_refs(self, p: beam.pvalue.PBegin, manifests: list) -> tuple:
        """(ImageRefs of every input, the manifests' read errors)."""
        config = self._config
        globs = [i for i in config.image_inputs if not is_manifest(i)]
        parts, errors = [], []
        if globs:
            parts.append(p | "MatchImageFiles" >> ListImageFiles(globs))
        if manifests:
            listed = p | "ReadImageManifests" >> ReadImageManifests(
                manifests, config.image_uri_field, config.image_id_field, config.passthrough, config.read_split_bytes
            )
            parts.append(listed.refs)
            errors.append(listed[ERRORS])
        return (parts | "AllImageRefs" >> beam.Flatten() if len(parts) > 1 else parts[0]), errors

    def expand(self, p: beam.pvalue.PBegin) -> ModalityOutput:
        config = self._config
        carry = bool(config.carry_over and self._prior_files)
        manifests = [i for i in config.image_inputs if is_manifest(i)]
        refs, read_errors = self._list_refs(p, manifests)
        # Hash buckets sized from the manifests (a glob's files are not counted before the run).
        bits = bucket_bits_for(2 * _estimated_records(manifests, self._listing))
        duplicates = None if config.allow_duplicate_ids else beam.pvalue.AsDict(_duplicate_image_ids(refs, bits))
        to_embed, removed = refs, None
        if self._prior_files:  # each ref travels on with the keys earlier runs stored for its id (a keyed join)
            to_embed, removed = refs | "AttachPriorImageKeys" >> AttachPriorKeys(
                self._prior_files, bits, positions=carry, with_removed=True
            )
        embed = EmbedImageRefs(
            config.image_model,
            without_provenance(self._schema),  # embedded_run_id is added after embedding
            config.normalize,
            config.max_image_pixels,
            config.decode_threads,
            config.max_image_bytes,
        )
        embedded = to_embed | "EmbedImages" >> _EmbedImageRefsWithChecks(embed, duplicates)
        files, counts, carried = _write_embeddings(
            IMAGE, embedded.tables, embedded[CARRIED] if carry else None, config, self._schema, self._prior_files
        )
        counts.append(_count("CountListed", "image_read", refs))
        counts += [_count(f"CountReadErrors{i}", "image_read", e) for i, e in enumerate(read_errors)]
        counts += [
            _count("CountEmbedded", "image_embedded", embedded.tables, _rows),
            _count("CountSkipped", "image_skipped", embedded[SKIPPED], lambda n: n),
        ]
        if removed is not None:  # earlier ids no image has now: the images that left the input
            counts.append(_count("CountRemoved", "image_removed", removed, lambda n: n))
        errors = (*read_errors, embedded[ERRORS])
        return ModalityOutput(embedded.tables, errors, tuple(counts), tuple(files), carried)


_BIGQUERY_LABELS = {TEXT: "WriteTextToBigQuery", IMAGE: "WriteImagesToBigQuery"}
_ERROR_LABELS = {TEXT: "Text", IMAGE: "Image"}


def build_pipeline(
    p: beam.Pipeline,
    config: JobConfig,
    models: dict[str, ModelInfo],
    started_at: str,
    text_batch_rows: int = 4096,
    prior_files: Optional[dict[str, list[str]]] = None,
    listing: Optional[fileio.InputListing] = None,
) -> dict:
    """Wire the job into `p`: each modality's branch, every dead letter to OUTPUT/errors/, then
    the manifest. Returns the main PCollections by name (for tests): a `ModalityOutput` per
    modality (`text`, `image`), `errors` (`records.ErrorBatch`es), `counts` and `manifest`.

    `prior_files` ({modality: Parquet paths of earlier runs}) turns on incremental skipping;
    `listing`: the launcher's listing of the inputs, to list them only once (None: each branch lists
    its own inputs).
    """
    prior_files = prior_files or {}
    schemas, branches = {}, {}
    if config.has_text:
        schemas[TEXT] = output_schema(TEXT, models[TEXT], config)
        branches[TEXT] = p | "Text" >> EmbedTextFiles(
            config, models[TEXT], schemas[TEXT], prior_files.get(TEXT, ()), text_batch_rows, listing
        )
    if config.has_images:
        schemas[IMAGE] = output_schema(IMAGE, models[IMAGE], config)
        branches[IMAGE] = p | "Images" >> EmbedImageFiles(config, schemas[IMAGE], prior_files.get(IMAGE, ()), listing)

    counts = [c for branch in branches.values() for c in branch.counts]
    files = [f for branch in branches.values() for f in branch.files]
    if config.bigquery_table:  # BigQuery sink; its finished load jobs feed the manifest's counts
        for modality, branch in branches.items():
            counts.append(
                branch.tables
                | _BIGQUERY_LABELS[modality]
                >> WriteEmbeddingsToBigQuery(
                    config.bigquery_table, modality, without_provenance(schemas[modality]), config.run_id
                )
            )

    # Dead letters gathered into compressed batches where they are made (fused with those steps),
    # before anything holds them between stages: a few bytes each, not a pickled record (issue 19 (6)).
    errors = [
        pcoll | f"Batch{_ERROR_LABELS[modality]}Errors{i}" >> BatchErrors()
        for modality, branch in branches.items()
        for i, pcoll in enumerate(branch.errors)
    ] | "AllErrors" >> beam.Flatten()
    error_files = errors | "WriteErrors" >> WriteErrors(fileio.join(config.output, "errors"))
    files.append(error_files | "ErrorFileNames" >> beam.Map(lambda path: ("errors", path)))
    counts.append(errors | "CountFailed" >> beam.FlatMap(failed_counts))
    totals = counts | "AllCounts" >> beam.Flatten() | "SumCounts" >> beam.CombinePerKey(sum)
    unaccounted = [b.unaccounted for b in branches.values() if b.unaccounted is not None]
    manifest = _write_manifest(p, config, models, started_at, totals, files, errors, unaccounted)
    return {**branches, "errors": errors, "counts": totals, "manifest": manifest}


def _write_manifest(
    p: beam.Pipeline,
    config: JobConfig,
    models: dict[str, ModelInfo],
    started_at: str,
    totals,
    files: list,
    errors,
    unaccounted: Sequence = (),
) -> beam.PCollection:
    """OUTPUT/_MANIFEST.json, written once every count, output file and dead letter is known.
    `unaccounted`: PCollections of why a file's lines do not reconcile (the first few are named)."""
    if unaccounted:
        problems = list(unaccounted) | "AllUnaccounted" >> beam.Flatten()
    else:
        problems = p | "NoLineAccounting" >> beam.Create([])
    first_problems = problems | "FirstUnaccounted" >> beam.combiners.Top.Smallest(5) | "Unaccounted" >> beam.FlatMap(list)
    static = {
        "run_id": config.run_id,
        "started_at": started_at,
        "output": config.output,
        "models": {m: dataclasses.asdict(i) for m, i in models.items()},
        "options": config.describe(),
        "normalized": config.normalize,
        "incremental_from": list(config.incremental_from),
    }
    if config.carry_over:
        static["carry_over"] = True
    static["workers"] = requested_workers(p.options)  # accelerator, image, processes per VM, threads
    return (
        p
        | "ManifestTrigger" >> beam.Create([None])
        | "WriteManifest"
        >> beam.ParDo(
            WriteManifestFn(config.output, static, config.max_failed_fraction, config.max_failed, release=release_output),
            counts=beam.pvalue.AsDict(totals),
            files=beam.pvalue.AsList(files | "AllOutputFiles" >> beam.Flatten()),
            reasons=beam.pvalue.AsList(errors | "TopErrorReasons" >> TopErrorReasons()),
            unaccounted=beam.pvalue.AsList(first_problems),
        )
    )
