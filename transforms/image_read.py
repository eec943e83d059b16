"""Listing image records: from a glob (id = the file's path/uri) or from a manifest file."""

from __future__ import annotations

from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import fileio
from transforms.records import ERRORS, IMAGE, ErrorRecord, ImageRef
from transforms.text_formats import detect_format, iter_records
from transforms.text_read import passthrough_value

__all__ = ["MANIFEST_FORMATS", "is_manifest", "ReadImageManifestFn", "image_ref_from_path"]

MANIFEST_FORMATS = ("csv", "tsv", "jsonl", "parquet")


def is_manifest(path: str) -> bool:
    """Whether `--image-input` names a manifest (.csv, .jsonl, .parquet) rather than image files."""
    return not fileio.has_glob(path) and detect_format(path) in MANIFEST_FORMATS


def image_ref_from_path(path: str) -> ImageRef:
    """An image found by a glob: its path is its id."""
    return ImageRef(id=path, uri=path)


class ReadImageManifestFn(beam.DoFn):
    """A manifest path in; an ImageRef per row out (bad rows go to the errors output)."""

    def __init__(self, uri_field: str = "uri", id_field: str | None = None, passthrough: Sequence[str] = ()):
        self._uri_field = uri_field
        self._id_field = id_field
        self._passthrough = tuple(passthrough)
        self._read = beam.metrics.Metrics.counter("embeddings", "image_read")

    def process(self, manifest: str) -> Iterator:
        with FileSystems.open(manifest) as handle:
            for parsed in iter_records(handle, detect_format(manifest), "utf-8", self._uri_field):
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
                        ErrorRecord(row_id, IMAGE, row_id, "read", "InvalidManifestRow",
                                    f"manifest row has no {self._uri_field!r} value (set --image-uri-field)"),
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
