"""The pipeline graph: read -> embed -> write for each modality, dead letters, then the manifest.

`build_pipeline` only wires transforms together; it is called by `pipeline.run` and by the tests
with a `TestPipeline`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam
from transforms import fileio
from transforms.dedup import FindDuplicateIdHashes, FindDuplicateIds, id_hashes, occurrences
from transforms.embed import SKIPPED, EmbedImageBatchesFn, EmbedTextBatchesFn
from transforms.incremental import ReadPriorKeys
from transforms.image_read import ListImageFiles, ReadImageManifests, is_manifest
from transforms.records import ERRORS, IMAGE, TEXT, embedding_schema
from transforms.text_read import ReadTextFiles
from transforms.write import WriteErrors, WriteManifestFn, WriteTables

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


def build_pipeline(
    p: beam.Pipeline,
    config: JobConfig,
    models: dict[str, ModelInfo],
    started_at: str,
    text_batch_rows: int = 4096,
    prior_files: Optional[dict[str, list[str]]] = None,
) -> dict:
    """Wire the job into `p`; returns the main PCollections (for tests) by name.

    `prior_files` ({modality: Parquet paths of earlier runs}) turns on incremental skipping.
    """
    counts, files, errors = [], [], []
    prior_files = prior_files or {}
    out: dict = {}

    if config.has_text:
        info = models[TEXT]
        schema = embedding_schema(
            TEXT, info.dimension, config.passthrough,
            metadata={"dimension": str(info.dimension), "model": info.name, "normalized": str(config.normalize).lower()},
        )
        text_files = fileio.match_paths(config.text_inputs)  # sorted: file order for "first occurrence"
        read_options = dict(
            text_field=config.text_field, id_field=config.text_id_field, encoding=config.text_encoding,
            batch_rows=text_batch_rows, max_text_bytes=config.max_text_bytes, split_bytes=config.read_split_bytes,
        )
        # Each file is matched once, planned (large files in ranges of --read-split-bytes) and read
        # range by range by a splittable DoFn: one big file is spread over every worker.
        read = p | "ReadTextRecords" >> ReadTextFiles(config.text_inputs, passthrough=config.passthrough, **read_options)
        side = {}
        if not config.allow_duplicate_ids:
            # A separate, lighter read of the ids: embedding then streams instead of waiting, with
            # every record held in memory, for the duplicate check over the whole input.
            # Only 16 bytes a record (an id hash and where it was read) reach the check.
            file_index = {path: i for i, path in enumerate(text_files)}
            # Its own source, not a sibling of ReadTextRecords: the runner would otherwise fuse the two
            # reads and hold every record in memory until the check is done.
            duplicates = (
                p
                | "ReadTextIds" >> ReadTextFiles(config.text_inputs, ids_only=True, **read_options)
                | "HashTextIds" >> beam.Map(
                    lambda b: (id_hashes(b[0]), occurrences(file_index.get(b[1][0], len(file_index)), b[2]))
                )
                | "FindDuplicateTextIds" >> FindDuplicateIdHashes()
            )
            side["duplicates"] = beam.pvalue.AsSingleton(duplicates)
        if prior_files.get(TEXT):
            side["prior"] = beam.pvalue.AsSingleton(p | "PriorTextEmbeddings" >> ReadPriorKeys(prior_files[TEXT]))
        embedded = read.records | "EmbedText" >> beam.ParDo(
            EmbedTextBatchesFn(config.text_model, schema, config.normalize, text_files), **side
        ).with_outputs(ERRORS, SKIPPED, main="tables")
        written = embedded.tables | "WriteTextEmbeddings" >> WriteTables(fileio.join(config.output, "text"), schema)
        files.append(written | "TextFileNames" >> beam.Map(lambda path: ("text", path)))
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
            metadata={"dimension": str(info.dimension), "model": info.name, "normalized": str(config.normalize).lower()},
        )
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
        if not config.allow_duplicate_ids:
            duplicates = (
                refs
                | "BatchImageIds" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
                | "ImageIdOccurrences" >> beam.Map(lambda rs: ([r.id for r in rs], [r.uri for r in rs], [r.line for r in rs]))
                | "FindDuplicateImageIds" >> FindDuplicateIds()
            )
            side["duplicates"] = beam.pvalue.AsDict(duplicates)
        if prior_files.get(IMAGE):
            side["prior"] = beam.pvalue.AsSingleton(p | "PriorImageEmbeddings" >> ReadPriorKeys(prior_files[IMAGE]))
        embedded = (
            refs
            | "SpreadImages" >> beam.Reshuffle()
            | "BatchImageRefs" >> beam.BatchElements(min_batch_size=batch * 8, max_batch_size=batch * 8)
            | "EmbedImages" >> beam.ParDo(
                EmbedImageBatchesFn(
                    config.image_model, schema, config.normalize, config.max_image_pixels, config.decode_threads,
                    config.max_image_bytes,
                ),
                **side,
            ).with_outputs(ERRORS, SKIPPED, main="tables")
        )
        written = embedded.tables | "WriteImageEmbeddings" >> WriteTables(fileio.join(config.output, "image"), schema)
        files.append(written | "ImageFileNames" >> beam.Map(lambda path: ("image", path)))
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
    manifest = (
        p
        | "ManifestTrigger" >> beam.Create([None])
        | "WriteManifest" >> beam.ParDo(
            WriteManifestFn(config.output, static),
            counts=beam.pvalue.AsDict(totals),
            files=beam.pvalue.AsList(files | "AllOutputFiles" >> beam.Flatten()),
        )
    )
    out.update(errors=all_errors, counts=totals, manifest=manifest)
    return out
