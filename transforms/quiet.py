"""Quiet start-up: hide the absl/TensorFlow lines that C++ writes to stderr while TensorFlow is imported,
and switch OpenVINO's usage telemetry off before OpenVINO is imported.

`import tensorflow` makes TensorFlow's C++ libraries write lines such as

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796153109.487435    7182 port.cc:153] oneDNN custom operations are on. ...

straight to file descriptor 2, before any Python logging exists; `TF_CPP_MIN_LOG_LEVEL` does not
hide them (they come from absl, not from TensorFlow's own logger). `quiet_stderr()` runs a block
with file descriptor 2 pointed at a temporary file; afterwards everything written meanwhile is
written back to stderr except those start-up lines (absl-format lines and the "WARNING: All log
messages before absl::InitializeLog()" notice), so another thread's output is not lost; if the
block fails, everything is written back.

`import openvino` imports its converter, whose package `__init__` starts `openvino_telemetry` with
consent assumed when no consent file exists, writes a client id to `~/intel/openvino_ga_cid`,
counts every run in `~/intel/stats` and sends an "import" event to Google Analytics. Where
`openvino_telemetry` cannot be imported the converter uses its own no-op stub, so
`block_telemetry()` makes it unimportable (`sys.modules[name] = None`): nothing is written under
the user's home and nothing is sent, with no consent file to write either.

Importing `transforms` does none of this (no side effects on import). Who does:

* the command line and the flex template's entry (`pipeline.cli.main`, `pipeline.run.main`) call
  `install()` first: a finder on `sys.meta_path` runs the process's first `import tensorflow`
  (direct, or through Keras) inside `quiet_stderr`, and telemetry is blocked;
* the job's DoFns call `quiet_start()` in `setup()` before their model loads (Beam's worker
  processes, and a library user's own pipeline): telemetry blocked, TensorFlow imported quietly;
* `transforms.embed.backends` blocks telemetry before each `import openvino` it does.

Set `EMBEDDINGS_VERBOSE=1` (what `--verbose` does; Beam's local worker processes inherit it) to
see the lines again.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

__all__ = [
    "VERBOSE_ENV",
    "QUIET_MODULES",
    "TELEMETRY_MODULES",
    "install",
    "quiet_start",
    "block_telemetry",
    "is_verbose",
    "quiet_stderr",
    "strip_startup_noise",
]

VERBOSE_ENV = "EMBEDDINGS_VERBOSE"
QUIET_MODULES = ("tensorflow",)
TELEMETRY_MODULES = ("openvino_telemetry",)  # usage telemetry that libraries start on import

_NOISE = re.compile(
    rb"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] .*"  # absl's own format: I0000 00:00:17... 123 port.cc:153] ...
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.)\r?$"
)
_LOCK = threading.RLock()


def is_verbose() -> bool:
    """Whether the user asked to see library start-up output (`--verbose`, i.e. EMBEDDINGS_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def strip_startup_noise(data: bytes) -> bytes:
    """`data` without the absl/TensorFlow start-up lines; every other line is kept as it was."""
    lines = data.splitlines(keepends=True)
    return b"".join(line for line in lines if not _NOISE.match(line.rstrip(b"\n")))


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Run the block with file descriptor 2 captured; write back all but the start-up noise afterwards."""
    if is_verbose():
        yield
        return
    with _LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to hide
            yield
            return
        capture = tempfile.TemporaryFile()
        os.dup2(capture.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            written = capture.read()
            capture.close()
            kept = strip_startup_noise(written) if ok else written
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, kept)


class _QuietLoader(importlib.abc.Loader):
    """Wraps a module's real loader: executes the module inside `quiet_stderr`."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module) -> None:
        # The module keeps its real loader (importlib.resources and friends ask it for files).
        module.__loader__ = self._real
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._real
        with quiet_stderr():
            self._real.exec_module(module)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of QUIET_MODULES with the other finders and wraps their loaders."""

    def find_spec(self, name, path=None, target=None):
        if name not in QUIET_MODULES or is_verbose():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def block_telemetry() -> bool:
    """Make the telemetry packages of TELEMETRY_MODULES unimportable in this process (an import
    raises ImportError, and OpenVINO falls back to its no-op stub); returns False when one was
    already imported (too late for what its import did; `transforms.embed.backends` still stubs it out
    of the converter)."""
    in_time = True
    for name in TELEMETRY_MODULES:
        if sys.modules.get(name, None) is not None:
            in_time = False
        else:
            sys.modules[name] = None
    return in_time


def install() -> None:
    """For a process's entry point (the CLI, the flex template's launcher): put the quiet finder first
    on `sys.meta_path` (once per process; a no-op if TensorFlow is already imported), and switch
    telemetry off before OpenVINO is imported (`block_telemetry`)."""
    block_telemetry()
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def quiet_start() -> None:
    """Before a model loads (the job's DoFns' `setup()`): switch telemetry off (`block_telemetry`) and,
    unless TensorFlow is already imported or `is_verbose()`, import it with its start-up lines hidden
    (`quiet_stderr`). Touches no import machinery (`sys.meta_path` stays as it was)."""
    block_telemetry()
    if "tensorflow" in sys.modules or is_verbose():
        return
    with quiet_stderr():
        try:
            import tensorflow  # noqa: F401 - imported here so that its C++ start-up lines are hidden
        except ImportError:  # not installed: the model's own import says so
            pass
