"""Listing image records: from a glob (id = the file's path relative to the glob's fixed folder) or
from a manifest file (read in splittable ranges, like text files)."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import apache_beam as beam

from transforms.io import fileio
from transforms.io.splits import DEFAULT_SPLIT_BYTES, FilePlan, FileRestrictions, MatchFiles, PlanFiles, iter_range_records
from transforms.io.text_formats import detect_format
from transforms.io.text_read import passthrough_value
from transforms.records import ERRORS, IMAGE, ErrorRecord, ImageRef

__all__ = [
    "MANIFEST_FORMATS",
    "is_manifest",
    "ReadImageManifestFn",
    "image_ref_from_path",
    "ListImageFiles",
    "ReadImageManifests",
]

MANIFEST_FORMATS = ("csv", "tsv", "jsonl", "parquet")


def is_manifest(path: str) -> bool:
    """Whether `--image-input` names a manifest (.csv, .jsonl, .parquet) rather than image files."""
    return not fileio.has_glob(path) and detect_format(path) in MANIFEST_FORMATS


def image_ref_from_path(path: str, pattern: Optional[str] = None) -> ImageRef:
    """An image found by a glob: its id is its path relative to the glob's fixed folder
    (`fileio.path_id`: the same for every spelling of the glob, and after the folder moves)."""
    return ImageRef(id=fileio.path_id(path, pattern or path), uri=path)


class ListImageFiles(beam.PTransform):
    """Image globs in (as the pipeline's root); an ImageRef per matched file, each file once."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (
            pbegin
            | "Match" >> MatchFiles(self._patterns)
            | "ImageRefs" >> beam.MapTuple(lambda pattern, path, _size: image_ref_from_path(path, pattern))
        )


class ReadImageManifestFn(beam.DoFn):
    """A splittable DoFn: a manifest's `FilePlan` in, read range by range; an ImageRef per row out
    (bad rows go to the errors output). Relative uris resolve against the manifest's folder; the id
    is the id column, or the uri as written in the manifest."""

    def __init__(self, uri_field: str = "uri", id_field: str | None = None, passthrough: Sequence[str] = ()):
        self._uri_field = uri_field
        self._id_field = id_field
        self._passthrough = tuple(passthrough)
        self._read = beam.metrics.Metrics.counter("embeddings", "image_read")

    def _refs(self, plan: FilePlan, tracker) -> Iterator:
        manifest = plan.path
        if plan.error:
            if tracker.try_claim(tracker.current_restriction().start):
                kind, _, message = plan.error.partition(": ")
                self._read.inc()
                yield beam.pvalue.TaggedOutput(
                    ERRORS, ErrorRecord(f"{manifest}:*", IMAGE, manifest, "read", kind, message or kind)
                )
            return
        with fileio.open_input(manifest) as handle:
            for parsed in iter_range_records(plan, tracker, handle, "utf-8", self._uri_field):
                self._read.inc()
                row_id = f"{manifest}:{parsed.line}"
                if parsed.error is not None:
                    yield beam.pvalue.TaggedOutput(
                        ERRORS, ErrorRecord.from_exception(row_id, IMAGE, row_id, "read", parsed.error)
                    )
                    continue
                record = parsed.record
                uri = record.get(self._uri_field)
                if not isinstance(uri, str) or not uri.strip():
                    yield beam.pvalue.TaggedOutput(
                        ERRORS,
                        ErrorRecord(
                            row_id,
                            IMAGE,
                            row_id,
                            "read",
                            "InvalidManifestRow",
                            f"manifest row has no {self._uri_field!r} value (set --image-uri-field)",
                        ),
                    )
                    continue
                raw_id = record.get(self._id_field) if self._id_field else None
                image_id = uri if raw_id in (None, "") else passthrough_value(raw_id)
                yield ImageRef(
                    id=image_id,
                    uri=fileio.resolve_relative(uri.strip(), manifest),
                    passthrough={name: passthrough_value(record.get(name)) for name in self._passthrough},
                    line=parsed.line,
                )

    def process(self, plan: FilePlan, tracker=beam.DoFn.RestrictionParam(FileRestrictions())) -> Iterator:  # noqa: B008 - Beam's restriction idiom
        try:
            yield from self._refs(plan, tracker)
        except Exception as exc:  # noqa: BLE001 - the rest of the manifest is unreadable (truncated gzip)
            if fileio.is_transient_storage_error(exc):
                raise  # storage is down, not this manifest: the run fails instead of dead-lettering it
            try:
                tracker.try_claim(tracker.current_restriction().stop)
            except ValueError:
                pass
            self._read.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, ErrorRecord.from_exception(f"{plan.path}:*", IMAGE, plan.path, "read", exc))


class ReadImageManifests(beam.PTransform):
    """Manifest paths in (as the pipeline's root); ImageRefs (tagged `refs`) and `errors` out. A large
    manifest is split into ranges of about `split_bytes`, like a text file."""

    def __init__(
        self,
        manifests: Sequence[str],
        uri_field: str = "uri",
        id_field: str | None = None,
        passthrough: Sequence[str] = (),
        split_bytes: int = DEFAULT_SPLIT_BYTES,
    ):
        super().__init__()
        self._manifests = list(manifests)
        self._split_bytes = split_bytes
        self._fn = ReadImageManifestFn(uri_field, id_field, passthrough)

    def expand(self, pbegin):
        return (
            pbegin
            | "MatchManifests" >> MatchFiles(self._manifests)
            | "PlanManifests" >> PlanFiles(self._split_bytes)
            | "ReadManifestRanges" >> beam.ParDo(self._fn).with_outputs(ERRORS, main="refs")
        )
