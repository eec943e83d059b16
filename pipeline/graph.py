"""The pipeline graph: read -> embed -> write for each modality, dead letters, then the manifest.

`build_pipeline` only wires transforms together; it is called by `pipeline.run` and by the tests
with a `TestPipeline`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam
from transforms import fileio
from transforms.carry import CarryRows, prior_run_ids, with_run_id, without_provenance
from transforms.dedup import CheckTextRecords, FindDuplicateIds, bucket_bits_for, id_hashes, text_key_batch
from transforms.embed import CARRIED, SKIPPED, EmbedImageBatchesFn, EmbedTextBatchesFn
from transforms.incremental import AttachPriorKeys, ReadPriorKeys, content_keys
from transforms.image_read import ListImageFiles, ReadImageManifests, is_manifest
from transforms.records import ERRORS, IMAGE, TEXT, embedding_schema
from transforms.text_read import ReadTextFiles
from transforms.write import TopErrorReasons, WriteErrors, WriteManifestFn, WriteTables
from transforms.bigquery import WriteEmbeddingsToBigQuery  # optional BigQuery sink (issue 13)
from transforms.devices import requested_workers  # GPU workers: what the job asked for (issue 13)

from pipeline.options import JobConfig

__all__ = ["ModelInfo", "build_pipeline"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the launcher learnt by loading a model once: its identity and output size."""

    name: str
    sha256: str
    dimension: int
    details: dict = dataclasses.field(default_factory=dict)


def _count(label: str, name: str, pcoll, per_element=lambda _: 1):
    return pcoll | label >> beam.Map(lambda element, n=name: (n, per_element(element)))


def _estimated_records(patterns, listing: fileio.InputListing, bytes_per_record: int = 64) -> int:
    """A generous guess of the record count from the inputs' sizes (sizes the hash buckets)."""
    total = 0
    for pattern in patterns:
        try:
            total += sum(size for _, size in listing.files(pattern))
        except Exception:  # noqa: BLE001 - a pattern that matches nothing is reported elsewhere
            continue
    return total // bytes_per_record


def _split_by_source(sources) -> list:
    """[(path, row positions)] of a batch: one file per batch in practice, checked all the same."""
    import numpy as np

    if len(set(sources)) == 1:
        return [(sources[0], np.arange(len(sources)))]
    order: dict = {}
    for i, source in enumerate(sources):
        order.setdefault(source, []).append(i)
    return [(source, np.array(rows)) for source, rows in order.items()]


def _id_batch_keys(batch, file_index: dict, bits: int):
    """(bucket, KeyBatch) slices of an ids-only batch `(ids, sources, lines)` (duplicate check only)."""
    import numpy as np

    ids, sources, lines = batch
    ikeys = id_hashes(ids)
    lines = np.asarray(lines, dtype=np.int64)
    for path, rows in _split_by_source(sources):
        yield from text_key_batch(path, file_index.get(path, len(file_index)), lines[rows], ikeys[rows], None, bits)


def _table_keys(table, file_index: dict, model_sha256: str, bits: int):
    """(bucket, KeyBatch) slices of a table of records, with content keys (incremental runs)."""
    import numpy as np

    ikeys = id_hashes(table.column("id"))
    ckeys = content_keys(table.column("content_sha256"), model_sha256)
    lines = np.asarray(table.column("line").combine_chunks(), dtype=np.int64)
    for path, rows in _split_by_source(table.column("source").to_pylist()):
        yield from text_key_batch(path, file_index.get(path, len(file_index)), lines[rows], ikeys[rows], ckeys[rows], bits)


def build_pipeline(
    p: beam.Pipeline,
    config: JobConfig,
    models: dict[str, ModelInfo],
    started_at: str,
    text_batch_rows: int = 4096,
    prior_files: Optional[dict[str, list[str]]] = None,
    listing: Optional[fileio.InputListing] = None,
) -> dict:
    """Wire the job into `p`; returns the main PCollections (for tests) by name.

    `prior_files` ({modality: Parquet paths of earlier runs}) turns on incremental skipping;
    `listing`: the launcher's listing of the inputs, to list them only once.
    """
    listing = fileio.InputListing() if listing is None else listing
    counts, files, errors = [], [], []
    prior_files = prior_files or {}
    out: dict = {}

    if config.has_text:
        info = models[TEXT]
        schema = embedding_schema(
            TEXT, info.dimension, config.passthrough,
            metadata={"dimension": str(info.dimension), "model": info.name, "normalized": str(config.normalize).lower()},
            provenance=config.carry_over,
        )
        embed_schema = without_provenance(schema)  # embedded_run_id (carry-over) is added after embedding
        carry = bool(config.carry_over and prior_files.get(TEXT))
        text_files = listing.paths(config.text_inputs)  # sorted: file order for "first occurrence"
        read_options = dict(
            text_field=config.text_field, id_field=config.text_id_field, encoding=config.text_encoding,
            batch_rows=text_batch_rows, max_text_bytes=config.max_text_bytes, split_bytes=config.read_split_bytes,
        )
        # Each file is matched once, planned (large files in ranges of --read-split-bytes) and read
        # range by range by a splittable DoFn: one big file is spread over every worker.
        read = p | "ReadTextRecords" >> ReadTextFiles(config.text_inputs, passthrough=config.text_read_passthrough, **read_options)
        side = {}
        if not config.allow_duplicate_ids or prior_files.get(TEXT):
            # A separate, lighter pass over the input finds duplicates and unchanged records (keyed
            # shuffles on id-hash buckets, `dedup.CheckTextRecords`); embedding then streams, and
            # only duplicates and per-chunk bitmaps of lines to skip reach it as side inputs.
            # Its own source, not a sibling of ReadTextRecords: the runner would otherwise fuse the
            # two reads and hold every record in memory until the check is done.
            file_index = {path: i for i, path in enumerate(text_files)}  # file order: "first occurrence"
            bits = bucket_bits_for(_estimated_records(config.text_inputs, listing) * (2 if prior_files.get(TEXT) else 1))
            if prior_files.get(TEXT):  # content hashes too: the reader's own records, uncounted
                keys = (
                    p
                    | "ReadTextKeys" >> ReadTextFiles(config.text_inputs, counted=False, **read_options)
                ).records | "TextRecordKeys" >> beam.FlatMap(_table_keys, file_index, info.sha256, bits)
                keys = (
                    (keys, p | "PriorTextKeys" >> ReadPriorKeys(prior_files[TEXT], bits, positions=carry))
                    | "TextAndPriorKeys" >> beam.Flatten()
                )
            else:
                keys = (
                    p
                    | "ReadTextIds" >> ReadTextFiles(config.text_inputs, ids_only=True, **read_options)
                    | "TextIdKeys" >> beam.FlatMap(_id_batch_keys, file_index, bits)
                )
            checked = keys | "CheckTextRecords" >> CheckTextRecords(bits, carry=carry, first_only=not config.allow_duplicate_ids)
            if not config.allow_duplicate_ids:
                side["duplicates"] = beam.pvalue.AsMultiMap(checked["duplicates"])
            if prior_files.get(TEXT):
                side["skips"] = beam.pvalue.AsMultiMap(checked["skips"])
        embedded = read.records | "EmbedText" >> beam.ParDo(
            EmbedTextBatchesFn(config.text_model, embed_schema, config.normalize, text_files), **side
        ).with_outputs(ERRORS, SKIPPED, main="tables")
        to_write = embedded.tables
        if config.carry_over:  # a snapshot: new rows with this run's id, plus the unchanged earlier rows
            to_write = embedded.tables | "MarkEmbeddedRun" >> beam.Map(with_run_id, config.run_id, schema)
        if carry:
            carry_files = dict(prior_run_ids(config.incremental_from, TEXT))
            carried = checked["carry"] | "CarryTextRows" >> CarryRows(
                [(path, carry_files.get(path, "unknown")) for path in prior_files[TEXT]], schema
            )
            # Their own sink (text/carried-*.parquet), not a Flatten with the new rows: a local runner
            # would buffer both inputs of a Flatten whole; this way each streams into its files.
            carried_files = carried | "WriteCarriedText" >> WriteTables(fileio.join(config.output, "text"), schema, prefix="carried")
            files.append(carried_files | "CarriedTextFileNames" >> beam.Map(lambda path: ("text", path)))
            counts.append(_count("CountTextCarried", "text_carried", carried, lambda t: t.num_rows))
            out.update(text_carried=carried)
        written = to_write | "WriteTextEmbeddings" >> WriteTables(fileio.join(config.output, "text"), schema)
        files.append(written | "TextFileNames" >> beam.Map(lambda path: ("text", path)))
        if config.bigquery_table:  # BigQuery sink; its finished load jobs feed the manifest's counts
            counts.append(embedded.tables | "WriteTextToBigQuery" >> WriteEmbeddingsToBigQuery(config.bigquery_table, TEXT, embed_schema, config.run_id))
        counts += [
            _count("CountTextRead", "text_read", read.records, lambda t: t.num_rows),
            _count("CountTextReadErrors", "text_read", read[ERRORS]),
            _count("CountTextEmbedded", "text_embedded", embedded.tables, lambda t: t.num_rows),
            _count("CountTextSkipped", "text_skipped", embedded[SKIPPED], lambda n: n),
        ]
        errors += [read[ERRORS], embedded[ERRORS]]
        out.update(text_tables=embedded.tables, text_errors=(read[ERRORS], embedded[ERRORS]))

    if config.has_images:
        info = models[IMAGE]
        schema = embedding_schema(
            IMAGE, info.dimension, config.passthrough,
            metadata={"dimension": str(info.dimension), "model": info.name, "normalized": str(config.normalize).lower(),
                      "backend": str(info.details.get("backend", "tensorflow")), "precision": str(info.details.get("precision", "f32"))},
            provenance=config.carry_over,
        )
        embed_schema = without_provenance(schema)  # embedded_run_id (carry-over) is added after embedding
        carry = bool(config.carry_over and prior_files.get(IMAGE))
        manifests = [i for i in config.image_inputs if is_manifest(i)]
        globs = [i for i in config.image_inputs if not is_manifest(i)]
        ref_parts = []
        read_errors = []
        if globs:
            ref_parts.append(p | "MatchImageFiles" >> ListImageFiles(globs))
        if manifests:
            listed = p | "ReadImageManifests" >> ReadImageManifests(
                manifests, config.image_uri_field, config.image_id_field, config.passthrough, config.read_split_bytes
            )
            ref_parts.append(listed.refs)
            read_errors.append(listed[ERRORS])
        refs = ref_parts | "AllImageRefs" >> beam.Flatten() if len(ref_parts) > 1 else ref_parts[0]
        batch = config.image_model.batch_size
        side = {}
        # Hash buckets sized from the manifests (a glob's files are not counted before the run).
        image_bits = bucket_bits_for(2 * _estimated_records(manifests, listing))
        if not config.allow_duplicate_ids:
            duplicates = (
                refs
                | "BatchImageIds" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
                | "ImageIdOccurrences" >> beam.Map(lambda rs: ([r.id for r in rs], [r.uri for r in rs], [r.line for r in rs]))
                | "FindDuplicateImageIds" >> FindDuplicateIds(1 << image_bits)
            )
            side["duplicates"] = beam.pvalue.AsDict(duplicates)
        if prior_files.get(IMAGE):
            # Each ref travels on with the keys earlier runs stored for its id (a keyed join).
            refs_to_embed = refs | "AttachPriorImageKeys" >> AttachPriorKeys(prior_files[IMAGE], image_bits, positions=carry)
        else:
            refs_to_embed = refs
        embedded = (
            refs_to_embed
            | "SpreadImages" >> beam.Reshuffle()
            | "BatchImageRefs" >> beam.BatchElements(min_batch_size=batch * 8, max_batch_size=batch * 8)
            | "EmbedImages" >> beam.ParDo(
                EmbedImageBatchesFn(
                    config.image_model, embed_schema, config.normalize, config.max_image_pixels, config.decode_threads,
                    config.max_image_bytes,
                ),
                **side,
            ).with_outputs(ERRORS, SKIPPED, CARRIED, main="tables")
        )
        to_write = embedded.tables
        if config.carry_over:  # a snapshot: new rows with this run's id, plus the unchanged earlier rows
            to_write = embedded.tables | "MarkEmbeddedImageRun" >> beam.Map(with_run_id, config.run_id, schema)
        if carry:
            carry_files = dict(prior_run_ids(config.incremental_from, IMAGE))
            carried = embedded[CARRIED] | "CarryImageRows" >> CarryRows(
                [(path, carry_files.get(path, "unknown")) for path in prior_files[IMAGE]], schema, IMAGE
            )
            carried_files = carried | "WriteCarriedImages" >> WriteTables(fileio.join(config.output, "image"), schema, prefix="carried")
            files.append(carried_files | "CarriedImageFileNames" >> beam.Map(lambda path: ("image", path)))
            counts.append(_count("CountImagesCarried", "image_carried", carried, lambda t: t.num_rows))
            out.update(image_carried=carried)
        written = to_write | "WriteImageEmbeddings" >> WriteTables(fileio.join(config.output, "image"), schema)
        files.append(written | "ImageFileNames" >> beam.Map(lambda path: ("image", path)))
        if config.bigquery_table:  # BigQuery sink; its finished load jobs feed the manifest's counts
            counts.append(embedded.tables | "WriteImagesToBigQuery" >> WriteEmbeddingsToBigQuery(config.bigquery_table, IMAGE, embed_schema, config.run_id))
        counts += [_count("CountImagesListed", "image_read", refs)]
        counts += [_count(f"CountImageReadErrors{i}", "image_read", e) for i, e in enumerate(read_errors)]
        counts += [_count("CountImagesEmbedded", "image_embedded", embedded.tables, lambda t: t.num_rows)]
        counts += [_count("CountImagesSkipped", "image_skipped", embedded[SKIPPED], lambda n: n)]
        errors += read_errors + [embedded[ERRORS]]
        out.update(image_tables=embedded.tables, image_errors=tuple(read_errors) + (embedded[ERRORS],))

    all_errors = errors | "AllErrors" >> beam.Flatten()
    error_files = all_errors | "WriteErrors" >> WriteErrors(fileio.join(config.output, "errors"))
    files.append(error_files | "ErrorFileNames" >> beam.Map(lambda path: ("errors", path)))
    counts.append(all_errors | "CountFailed" >> beam.Map(lambda e: (f"{e.modality}_failed", 1)))
    totals = counts | "AllCounts" >> beam.Flatten() | "SumCounts" >> beam.CombinePerKey(sum)

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
    manifest = (
        p
        | "ManifestTrigger" >> beam.Create([None])
        | "WriteManifest" >> beam.ParDo(
            WriteManifestFn(config.output, static, config.max_failed_fraction, config.max_failed),
            counts=beam.pvalue.AsDict(totals),
            files=beam.pvalue.AsList(files | "AllOutputFiles" >> beam.Flatten()),
            reasons=beam.pvalue.AsList(all_errors | "TopErrorReasons" >> TopErrorReasons()),
        )
    )
    out.update(errors=all_errors, counts=totals, manifest=manifest)
    return out
