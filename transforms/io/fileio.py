"""File access for local paths and `gs://` alike, through Beam's `FileSystems`."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import shutil
import stat
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, Iterable, Iterator, Sequence

from apache_beam.io.filesystems import FileSystems

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = [
    "storage_outage",
    "has_glob",
    "is_remote",
    "is_folder",
    "folder_glob",
    "join",
    "match_paths",
    "match_files",
    "literal_match",
    "glob_also_matches",
    "InputListing",
    "NotARegularFile",
    "check_regular_file",
    "read_bytes",
    "read_parquet_table",
    "parquet_batches",
    "write_bytes",
    "upload",
    "sha256_of_file",
    "local_copy",
    "resolve_relative",
    "glob_root",
    "path_id",
    "open_input",
    "TruncatedInput",
    "StorageUnavailable",
    "DEFAULT_STORAGE_TIMEOUT",
    "bound_storage_retries",
    "storage_timeout",
    "is_transient_storage_error",
    "check_scheme",
]

_GLOB_CHARS = set("*?[")
_CHUNK = 1 << 20

# ---- storage outages ------------------------------------------------------------------------
# google-cloud-storage retries transient errors (connection refused/reset, 429, 5xx, timeouts) with
# exponential backoff (1 s, 2 s, 4 s, ... at most 60 s apart) for 120 s per call, and Beam hands the
# same policy to every gs:// call it makes. A run whose storage is gone then hangs call after call.
# `bound_storage_retries` shortens that window for every call in the process (ours and Beam's); a
# call that still fails after it raises StorageUnavailable here (RetryError in Beam's own steps),
# which fails the run instead of turning records into dead letters.

DEFAULT_STORAGE_TIMEOUT = 45.0
STORAGE_TIMEOUT_ENV = "EMBEDDINGS_STORAGE_TIMEOUT"  # how the launcher passes --storage-timeout to local workers
_storage_timeout = DEFAULT_STORAGE_TIMEOUT
_down_until = 0.0  # after one call gave up, others fail at once for a while instead of waiting again
_down_lock = threading.Lock()


class StorageUnavailable(OSError):
    """Storage kept failing with transient errors for longer than the storage timeout. Not a record's
    fault: callers must let it fail the run (never turn it into a dead letter)."""


def bound_storage_retries(seconds: float | None = None) -> float:
    """Make every gs:// call in this process give up after `seconds` of retrying transient errors
    (default: $EMBEDDINGS_STORAGE_TIMEOUT, else DEFAULT_STORAGE_TIMEOUT); returns the bound.

    The retry policies of google-cloud-storage and Beam's gcsio are module-level objects, also bound
    as default arguments, so their timeout is changed in place. Each request also has its own
    60 s timeout, so a call that hangs rather than being refused can take up to 60 s longer. Once one
    call has given up (StorageUnavailable), the others stop retrying for the next `seconds` as well,
    so that calls made one after another do not each wait the whole bound again."""
    global _storage_timeout
    if seconds is None:
        seconds = _configured_storage_timeout()
    _storage_timeout = float(seconds)
    policies = []
    try:
        from google.cloud.storage import retry as storage_retry

        policies.append(storage_retry.DEFAULT_RETRY)
        from apache_beam.io.gcp import gcsio_retry

        policies += [gcsio_retry.DEFAULT_RETRY, gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER]
    except ImportError:  # pragma: no cover - without the gcp extras there is no gs:// to bound
        pass
    for policy in policies:
        policy._timeout = policy._deadline = _storage_timeout
        if not hasattr(policy, "_embeddings_predicate"):  # once: stop retrying while storage is known down
            policy._embeddings_predicate = policy._predicate
            policy._predicate = lambda exc, original=policy._predicate: original(exc) and time.monotonic() >= _down_until
    return _storage_timeout


def _configured_storage_timeout() -> float:
    """--storage-timeout as this process knows it: the launcher's env var (local workers inherit it),
    else the job's options that Beam's SDK harness hands to FileSystems (Dataflow workers), else 45 s."""
    value = os.environ.get(STORAGE_TIMEOUT_ENV)
    if value is None:
        options = getattr(FileSystems, "_pipeline_options", None)
        try:
            value = options.get_all_options(retain_unknown_options=True).get("storage_timeout") if options else None
        except Exception:  # noqa: BLE001 - unexpected options object: keep the default
            value = None
    try:
        return float(value) if value is not None else DEFAULT_STORAGE_TIMEOUT
    except (TypeError, ValueError):
        return DEFAULT_STORAGE_TIMEOUT


def storage_timeout() -> float:
    """The current bound on retrying one gs:// call, in seconds."""
    return _storage_timeout


def is_transient_storage_error(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is a storage outage rather than a problem of
    the file itself: retries exhausted, connection refused/reset, timeouts, 429 and 5xx answers."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (StorageUnavailable, ConnectionError, TimeoutError)):
            return True
        details = getattr(exc, "exception_details", None)  # Beam's BeamIOError: {path: exception}, not chained
        if isinstance(details, dict) and any(
            isinstance(e, BaseException) and is_transient_storage_error(e) for e in details.values()
        ):
            return True
        try:
            from google.api_core.exceptions import RetryError
            from google.cloud.storage.retry import _should_retry

            if isinstance(exc, RetryError) or _should_retry(exc):
                return True
        except ImportError:  # pragma: no cover
            pass
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def storage_outage(path: str, exc: BaseException) -> StorageUnavailable:
    """The StorageUnavailable to raise for `exc` on `path`; storage counts as down for a while."""
    global _down_until
    with _down_lock:
        _down_until = time.monotonic() + _storage_timeout
    if isinstance(exc, StorageUnavailable):
        return exc
    text = " ".join(str(e) for e in _exception_chain(exc))
    if "Connection refused" in text:
        reason = "connection refused"
    elif "Name or service not known" in text or "NameResolution" in text:
        reason = "host not found"
    elif "timed out" in text.lower():
        reason = "requests timed out"
    else:
        last = _exception_chain(exc)[-1]
        reason = f"{type(last).__name__}: {str(last).strip()[:150]}"
    return StorageUnavailable(
        f"storage unreachable: {path}: {reason}, still failing after {_storage_timeout:g} s of retries (--storage-timeout)"
    )


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 20 and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _fail_fast_if_down(path: str) -> None:
    if is_remote(path) and time.monotonic() < _down_until:
        raise StorageUnavailable(
            f"storage unreachable: {path} not tried, another call just gave up after "
            f"{_storage_timeout:g} s of retries (--storage-timeout)"
        )


def check_scheme(path: str, flag: str = "") -> None:
    """ValueError naming `flag` for a path whose scheme the job cannot read (only local paths and gs://)."""
    if is_remote(path) and not path.startswith("gs://"):
        scheme = path.split("://", 1)[0]
        where = f"{flag} {path!r}" if flag else repr(path)
        raise ValueError(f"{where}: {scheme}:// is not supported; give a local path or a gs:// uri (copy the file there first)")


bound_storage_retries()


def has_glob(path: str) -> bool:
    """Whether a path is a glob pattern rather than one file."""
    return any(c in _GLOB_CHARS for c in path)


def is_remote(path: str) -> bool:
    """Whether a path has a scheme (gs://, s3://, ...) rather than being a local path."""
    return "://" in path


def is_folder(path: str) -> bool:
    """Whether an input path names a folder rather than files: a local folder (no glob characters),
    or a gs:// path without glob characters that ends with `/` (`gs://bucket/photos/`: object stores
    have no folders, so the `/` says it; `gs://bucket/photos` is an object name)."""
    if has_glob(path):
        return False
    if is_remote(path):
        return path.endswith("/")
    return os.path.isdir(path)


def folder_glob(folder: str) -> str:
    """The glob of every file below `folder`, at any depth (`photos/` -> `photos/**`): ids of the files
    a folder input reads are their paths relative to the folder, as for this glob (`path_id`)."""
    return folder.rstrip("/") + "/**"


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
        relative = path[len(prefix) :] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
        return posixpath.normpath(relative)
    relative = os.path.relpath(_canonical_local(path), _canonical_local(root or "."))
    if relative.startswith(".."):  # not under the root (should not happen for a match): keep it whole
        return _canonical_local(path).replace(os.sep, "/")
    return relative.replace(os.sep, "/")


def _names_a_local_file(pattern: str) -> bool:
    """Whether `pattern` has glob characters and yet names a local file that exists as written
    (`meta/[x].jpg`: a file whose name holds `[`, `*` or `?`)."""
    return not is_remote(pattern) and has_glob(pattern) and os.path.exists(pattern) and not os.path.isdir(pattern)


def match_files(pattern: str) -> list:
    """Beam `FileMetadata` (path, size_in_bytes) of every file a glob/path matches.

    A local pattern that names an existing file as written is that file, even when it holds glob
    characters: `meta/[x].jpg` reads the file `meta/[x].jpg`, never `meta/x.jpg` (which the glob
    `[x]` would match instead). The launcher refuses a pattern that also matches other files as a
    glob (`glob_also_matches`). gs:// patterns are always globs (checking would cost a call)."""
    literal = literal_match(pattern)
    if literal is not None:
        return literal
    return [metadata for result in FileSystems.match([pattern]) for metadata in result.metadata_list]


def literal_match(pattern: str) -> list | None:
    """[the file's `FileMetadata`] when `pattern` has glob characters yet names an existing local
    file as written (see `match_files`), else None (list it as a glob)."""
    if _names_a_local_file(pattern):
        return [FileSystems.get_filesystem(pattern).metadata(pattern)]
    return None


def glob_also_matches(pattern: str) -> list[str]:
    """For a local pattern that names an existing file as written (see `match_files`): the other
    files it matches read as a glob, sorted (empty otherwise: the pattern means one thing)."""
    if not _names_a_local_file(pattern):
        return []
    literal = _canonical_local(pattern)
    found = {m.path for result in FileSystems.match([pattern]) for m in result.metadata_list}
    return sorted(path for path in found if _canonical_local(path) != literal)


def match_paths(patterns: Iterable[str]) -> list[str]:
    """Every file that a list of globs/paths matches, sorted; a pattern that matches nothing is skipped."""
    return sorted({metadata.path for pattern in patterns for metadata in match_files(pattern)})


class InputListing:
    """The files that input globs/paths match, each pattern listed once and kept: the launcher checks
    the inputs, counts the images and sizes the job from one listing (`clear` it once the job is
    built). The pipeline's own `MatchFiles` lists again where it runs, on the workers. A folder
    (`is_folder`) lists every file below it (`folder_glob`); which of them a reader takes is the
    reader's business (`image_read.image_folder_files`)."""

    def __init__(self) -> None:
        self._files: dict[str, list[tuple[str, int]]] = {}

    def files(self, pattern: str) -> list[tuple[str, int]]:
        """(path, size in bytes) of every file `pattern` matches (listed on first use; a listing
        error is raised, and the pattern is listed again next time)."""
        if pattern not in self._files:
            listed = folder_glob(pattern) if is_folder(pattern) else pattern
            self._files[pattern] = [(metadata.path, int(metadata.size_in_bytes or 0)) for metadata in match_files(listed)]
        return self._files[pattern]

    def paths(self, patterns: Iterable[str]) -> list[str]:
        """Every file the patterns match, sorted, each once (as `match_paths`)."""
        return sorted({path for pattern in patterns for path, _ in self.files(pattern)})

    def clear(self) -> None:
        """Forget the listing (it holds a path per matched file)."""
        self._files.clear()


def _is_not_found(exc: BaseException) -> bool:
    try:
        from google.api_core.exceptions import NotFound
    except ImportError:  # pragma: no cover - the gcp extras are always installed
        return False
    return isinstance(exc, NotFound)


def _raise_storage_error(path: str, exc: Exception) -> None:
    """Raise what `exc` (from opening or reading `path`) means to a caller: FileNotFoundError for a
    missing gs:// object (GCS raises google.api_core's NotFound, whose message does not say so),
    StorageUnavailable for an outage; otherwise return, and the caller re-raises `exc` as it is."""
    if _is_not_found(exc):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from exc
    if is_remote(path) and is_transient_storage_error(exc):
        raise storage_outage(path, exc) from exc


class NotARegularFile(OSError):
    """A local input that is a FIFO, socket, device or folder: never opened (opening a FIFO waits for
    a writer, forever; a device can be endless), so one dead letter instead of a hung run."""


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def check_regular_file(path: str) -> None:
    """NotARegularFile when the local `path` (symlinks followed) is not a regular file; checked with
    `os.stat`, without opening it. gs:// objects and paths that cannot be stat-ed (gone, no
    permission) pass: opening them reports that."""
    if is_remote(path):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise NotARegularFile(f"{path} is {kind}, not a regular file: not read (only regular files are inputs)")


@contextlib.contextmanager
def _open_raw(path: str) -> Iterator[IO[bytes]]:
    """A file's raw bytes; a missing gs:// object raises FileNotFoundError as a missing local file
    does (GCS raises google.api_core's NotFound, whose message does not say so); a local FIFO,
    socket, device or folder raises NotARegularFile without being opened."""
    check_scheme(path)
    check_regular_file(path)
    _fail_fast_if_down(path)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            yield handle
    except Exception as exc:
        _raise_storage_error(path, exc)
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
                f"{self._path} is truncated: the compressed stream ends before its end marker (records up to the cut were read)"
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
    other files open as they are. A missing gs:// object raises FileNotFoundError; a local FIFO,
    socket, device or folder NotARegularFile (not opened)."""
    import bz2
    import gzip

    lower = path.lower()
    opener = gzip.GzipFile if lower.endswith(".gz") else bz2.BZ2File if lower.endswith(".bz2") else None
    check_scheme(path)
    check_regular_file(path)
    _fail_fast_if_down(path)
    try:
        raw = FileSystems.open(path, compression_type="uncompressed")
    except Exception as exc:
        _raise_storage_error(path, exc)
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


# ---- Parquet reads, single-threaded -----------------------------------------------------------
# Every Parquet read of whole tables or batches (the readers of a finished run, the tools, the
# earlier run's keys of an incremental run, Parquet text input read whole) goes through these two.


def parquet_batches(
    parquet: pq.ParquetFile, batch_rows: int, columns: Sequence[str] | None = None, row_groups: Sequence[int] | None = None
) -> Iterator[pa.RecordBatch]:
    """The record batches (at most `batch_rows` rows each) of an open `pyarrow.parquet.ParquetFile`,
    `columns` only (all when None), of `row_groups` only (all when None), read single-threaded.

    Why single-threaded: pyarrow 25's threaded reads (its default, `use_threads=True`) of several
    files in one process aborted the process at exit about one run in three ("terminate called
    without an active exception"), after correct output. Threads bought nothing here (a file is
    read a row group or a batch at a time), so every such read passes `use_threads=False`."""
    return parquet.iter_batches(
        batch_size=batch_rows,
        row_groups=None if row_groups is None else list(row_groups),
        columns=None if columns is None else list(columns),
        use_threads=False,
    )


def read_parquet_table(data: bytes) -> pa.Table:
    """A whole Parquet file held in memory (`data`, its bytes) as a `pyarrow.Table`, read
    single-threaded: see `parquet_batches` for why (pyarrow's threaded reads aborted the process at exit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data), use_threads=False)


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """Write a whole file, local (missing folders are created) or gs://; StorageUnavailable when
    gs:// stays unreachable past the storage timeout."""
    check_scheme(path)
    _fail_fast_if_down(path)
    try:
        with FileSystems.create(path, mime_type=mime_type) as handle:
            handle.write(data)
    except Exception as exc:
        if is_remote(path) and is_transient_storage_error(exc):
            raise storage_outage(path, exc) from exc
        raise


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
