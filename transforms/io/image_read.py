"""Listing image records: from a glob (id = the file's path relative to the glob's fixed folder), from
a folder, or from a manifest file (read in splittable ranges, like text files).

A folder (`fileio.is_folder`: a local folder, or a gs:// path ending in `/`) is a folder of images:
every file below it at any depth whose name ends in a known image extension (`IMAGE_EXTENSIONS`,
any case: `.JPEG` too), with ids as for the glob `DIR/**` (the path relative to the folder). Other
files in it (a `MANIFEST.csv` or `labels.jsonl` beside the images, a `.DS_Store`) are not images
and are not read: the launcher says how many it left out, and refuses a folder with no images
before any model loads. A glob reads every file it matches, images or not (a non-image is a dead
letter): it says which files to read, a folder only where they are."""

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
    "IMAGE_EXTENSIONS",
    "is_manifest",
    "is_image_name",
    "image_folder_files",
    "image_input_paths",
    "ReadImageManifestFn",
    "image_ref_from_path",
    "ListImageFiles",
    "ReadImageManifests",
]

MANIFEST_FORMATS = ("csv", "tsv", "jsonl", "parquet")
# The extensions of the formats `transforms.embed.decode.SUPPORTED_FORMATS` decodes; compared lower-case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp")


def is_manifest(path: str) -> bool:
    """Whether `--image-input` names a manifest (.csv, .jsonl, .parquet) rather than image files."""
    return not fileio.has_glob(path) and detect_format(path) in MANIFEST_FORMATS and not fileio.is_folder(path)


def is_image_name(path: str) -> bool:
    """Whether a file's name ends in a known image extension (`IMAGE_EXTENSIONS`, any case)."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def image_folder_files(folder: str, listing: Optional[fileio.InputListing] = None) -> tuple[list[str], list[str]]:
    """(the images a folder input reads, the other files below it, left out), each sorted."""
    files = (listing or fileio.InputListing()).files(folder)
    images = sorted(path for path, _ in files if is_image_name(path))
    return images, sorted(path for path, _ in files if not is_image_name(path))


def image_input_paths(patterns: Sequence[str], listing: Optional[fileio.InputListing] = None) -> list[str]:
    """Every image file that globs and folders (not manifests) read, sorted, each once."""
    listing = listing or fileio.InputListing()
    paths = set()
    for pattern in patterns:
        if fileio.is_folder(pattern):
            paths.update(image_folder_files(pattern, listing)[0])
        else:
            paths.update(path for path, _ in listing.files(pattern))
    return sorted(paths)


def image_ref_from_path(path: str, pattern: Optional[str] = None) -> ImageRef:
    """An image found by a glob: its id is its path relative to the glob's fixed folder
    (`fileio.path_id`: the same for every spelling of the glob, and after the folder moves)."""
    return ImageRef(id=fileio.path_id(path, pattern or path), uri=path)


class ListImageFiles(beam.PTransform):
    """Image globs and folders in (as the pipeline's root); an ImageRef per matched file, each file
    once. A folder reads the images below it (`IMAGE_EXTENSIONS`) with ids as for `DIR/**`; a file
    that a glob also matches is the glob's (globs are listed first), so a glob's non-images are read."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        globs = [p for p in self._patterns if not fileio.is_folder(p)]
        folders = [fileio.folder_glob(p) for p in self._patterns if fileio.is_folder(p)]
        folders = [g for i, g in enumerate(folders) if g not in globs and g not in folders[:i]]
        folder_only = frozenset(folders)
        return (
            pbegin
            | "Match" >> MatchFiles(globs + folders)
            | "ImagesOfFolders" >> beam.Filter(lambda matched: matched[0] not in folder_only or is_image_name(matched[1]))
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
