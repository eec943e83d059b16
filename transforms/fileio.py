"""File access for local paths and `gs://` alike, through Beam's `FileSystems`."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import shutil
import tempfile
from typing import IO, Iterable, Iterator

from apache_beam.io.filesystems import FileSystems

__all__ = [
    "has_glob",
    "is_remote",
    "join",
    "match_paths",
    "read_bytes",
    "write_bytes",
    "upload",
    "sha256_of_file",
    "local_copy",
    "resolve_relative",
    "glob_root",
    "path_id",
    "open_input",
    "TruncatedInput",
]

_GLOB_CHARS = set("*?[")
_CHUNK = 1 << 20


def has_glob(path: str) -> bool:
    """Whether a path is a glob pattern rather than one file."""
    return any(c in _GLOB_CHARS for c in path)


def is_remote(path: str) -> bool:
    """Whether a path has a scheme (gs://, s3://, ...) rather than being a local path."""
    return "://" in path


def join(base: str, *parts: str) -> str:
    """Join path components for local or remote paths."""
    return FileSystems.join(base, *parts)


def glob_root(pattern: str) -> str:
    """The fixed folder of a glob or file path: everything up to the last `/` before the first
    wildcard (`data/2026/*.jsonl` -> `data/2026`, `photos/**/x.jpg` -> `photos`, `a/b.csv` -> `a`)."""
    cut = min((pattern.index(c) for c in _GLOB_CHARS if c in pattern), default=len(pattern))
    head = pattern[:cut]
    slash = head.rfind("/")
    if slash < 0:
        return ""
    return head[:slash]


def _canonical_local(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def path_id(path: str, pattern: str) -> str:
    """The stable id part of a file that `pattern` matched: its path relative to the pattern's fixed
    folder (`glob_root`), with `/` separators. The same however the pattern is spelled (`data/*.jsonl`,
    `./data/*.jsonl`, an absolute path) and the same after the folder moves (to another disk, or to a
    gs:// bucket with the same layout). A file named without wildcards gets its file name."""
    root = glob_root(pattern)
    if is_remote(path):
        prefix = root.rstrip("/") + "/"
        relative = path[len(prefix):] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
        return posixpath.normpath(relative)
    relative = os.path.relpath(_canonical_local(path), _canonical_local(root or "."))
    if relative.startswith(".."):  # not under the root (should not happen for a match): keep it whole
        return _canonical_local(path).replace(os.sep, "/")
    return relative.replace(os.sep, "/")


def match_paths(patterns: Iterable[str]) -> list[str]:
    """Every file that a list of globs/paths matches, sorted; a pattern that matches nothing is skipped."""
    found: set[str] = set()
    for pattern in patterns:
        for result in FileSystems.match([pattern]):
            for metadata in result.metadata_list:
                found.add(metadata.path)
    return sorted(found)


def _is_not_found(exc: BaseException) -> bool:
    try:
        from google.api_core.exceptions import NotFound
    except ImportError:  # pragma: no cover - the gcp extras are always installed
        return False
    return isinstance(exc, NotFound)


@contextlib.contextmanager
def _open_raw(path: str) -> Iterator[IO[bytes]]:
    """A file's raw bytes; a missing gs:// object raises FileNotFoundError as a missing local file
    does (GCS raises google.api_core's NotFound, whose message does not say so)."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            yield handle
    except Exception as exc:
        if _is_not_found(exc):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from exc
        raise


class TruncatedInput(EOFError):
    """A compressed input that ends before its end-of-stream marker (a cut or partial upload)."""


class _StrictDecompressed:
    """A `.gz`/`.bz2` stream that raises TruncatedInput (naming the file) where Beam's own
    CompressedFile would end silently; it closes the underlying handle with itself."""

    def __init__(self, stream, raw, path: str):
        self._stream, self._raw, self._path = stream, raw, path

    def _guard(self, method, *args):
        try:
            return method(*args)
        except EOFError as exc:
            raise TruncatedInput(
                f"{self._path} is truncated: the compressed stream ends before its end marker "
                f"(records up to the cut were read)"
            ) from exc

    def read(self, size: int = -1) -> bytes:
        return self._guard(self._stream.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._guard(self._stream.readline, size)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_input(path: str):
    """An input file for reading, local or gs://, decompressed by its extension (`.gz`, `.bz2`) with
    Python's own decoders, which notice a truncated stream (TruncatedInput) instead of ending early;
    other files open as they are. A missing gs:// object raises FileNotFoundError."""
    import bz2
    import gzip

    lower = path.lower()
    opener = gzip.GzipFile if lower.endswith(".gz") else bz2.BZ2File if lower.endswith(".bz2") else None
    try:
        raw = FileSystems.open(path, compression_type="uncompressed")
    except Exception as exc:
        if _is_not_found(exc):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from exc
        raise
    if opener is None:
        return raw
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if opener is gzip.GzipFile else bz2.BZ2File(raw, mode="rb")
    return _StrictDecompressed(stream, raw, path)


class FileTooLarge(ValueError):
    """A file larger than the caller is willing to hold in memory."""


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """The whole content of a file; FileTooLarge past `limit` bytes (read no further than that)."""
    with _open_raw(path) as handle:
        if limit is None:
            return handle.read()
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"file is larger than {limit:,} bytes; not read (see --max-image-bytes)")
    return data


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """Write a whole file, local (missing folders are created) or gs://."""
    with FileSystems.create(path, mime_type=mime_type) as handle:
        handle.write(data)


def upload(local_path: str, destination: str) -> None:
    """Copy a local file to a local or gs:// destination (e.g. a model Keras saved to a temp dir)."""
    with open(local_path, "rb") as source, FileSystems.create(destination) as target:
        shutil.copyfileobj(source, target, _CHUNK)


def sha256_of_file(path: str) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with _open_raw(path) as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def local_copy(path: str, directory: str | None = None) -> str:
    """A local path for `path`: itself if local, else a copy in a temp dir (TensorFlow's gs:// reader
    ignores the storage emulator and needs credentials of its own; Beam's FileSystems does not)."""
    if not is_remote(path):
        return path
    directory = directory or tempfile.mkdtemp(prefix="embeddings-model-")
    target = os.path.join(directory, posixpath.basename(path.rstrip("/")) or "model")
    with _open_raw(path) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
    return target


def resolve_relative(uri: str, base_file: str) -> str:
    """A manifest's uri, resolved against the manifest's own folder when it is relative."""
    if is_remote(uri) or os.path.isabs(uri):
        return uri
    if is_remote(base_file):
        return posixpath.join(posixpath.dirname(base_file), uri)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base_file)), uri))
