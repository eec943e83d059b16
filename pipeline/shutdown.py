"""How a run ends early: Ctrl-C and SIGTERM end it with one line, its Beam worker processes stopped
and its output folder freed.

`signals_end_the_run` (around the pipeline in `pipeline.run.run_command`) turns SIGINT/SIGTERM into
`_interrupted` from a watcher thread, so a signal acts even while the main thread sits in a C call
of Beam's runner; local worker processes ignore Ctrl-C meanwhile (the launcher's one line is all a
Ctrl-C prints). `stop_workers` terminates the worker processes this run started (found in /proc).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from typing import Iterator

from transforms.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from transforms.sinks.folder import release_output

__all__ = ["CLAIMED", "UNFINISHED", "signals_end_the_run", "stop_workers"]

UNFINISHED = "the run did not finish (no manifest written); rerun the same command to complete it"


def _worker_pids() -> list[int]:
    """This process's Beam worker processes (local multi_processing mode: `sh -c python -m
    apache_beam...sdk_worker_main` and the Python below it), from /proc; nothing else is touched."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux: nothing to look at
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid != parent:
                continue
            if parent == os.getpid():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        if b"apache_beam" not in handle.read():  # a child that is not a Beam worker
                            continue
                except OSError:
                    continue
            found.append(pid)
            frontier.append(pid)
    return found


def stop_workers(grace: float = 5.0) -> int:
    """Terminate the Beam worker processes this run started, and the processes below them (SIGTERM,
    then SIGKILL after `grace` s); returns how many there were."""
    workers = _worker_pids()
    for pid in reversed(workers):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(workers)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reaps our direct children
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                        alive.remove(pid)
            except OSError:
                alive.remove(pid)
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(workers)


CLAIMED: dict = {}  # the output folder this process's run holds (`pipeline.run` fills it), to free it when a signal ends the run


def _interrupted(signum: int) -> None:
    """End the run for a Ctrl-C or SIGTERM: one line, the Beam workers stopped, the folder freed, and
    the process gone at once (Beam's runner threads are not daemons and would keep it alive)."""
    import threading

    threading.excepthook = lambda args: None  # Beam's threads complain as their workers go away
    terminated = signum == signal.SIGTERM
    name = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
    with contextlib.suppress(Exception):
        print(f"\nerror: {name}; {UNFINISHED}", file=sys.stderr, flush=True)
    # Nothing after that line: as the workers go away, Beam's data plane and gRPC threads in this
    # process log tracebacks ("Failed to read inputs in the data plane"). --verbose keeps them.
    from transforms import quiet

    if not quiet.is_verbose():
        logging.disable(logging.CRITICAL)
        with contextlib.suppress(Exception):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
    with contextlib.suppress(Exception):
        stop_workers(grace=3.0)
    if CLAIMED:
        with contextlib.suppress(Exception):
            release_output(CLAIMED["output"], CLAIMED["run_id"])
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


class _WorkersIgnoreCtrlC:
    """The `subprocess` module as Beam's local job service sees it: worker command lines (run by
    `sh -c`) start with `trap '' INT`, so the worker processes ignore SIGINT.

    A Ctrl-C in a terminal goes to the whole foreground process group: Beam's worker processes
    (multi_processing mode) got it too and each printed a KeyboardInterrupt traceback (inside an
    import or a gRPC call) after the launcher's one line. The launcher alone handles Ctrl-C
    (`_interrupted`) and stops its workers with SIGTERM; SIGTERM, SIGKILL and SIGHUP still reach them."""

    def __init__(self, module):
        self._module = module

    def Popen(self, args, *rest, **kwargs):  # noqa: N802 - subprocess.Popen's name
        if kwargs.get("shell") and isinstance(args, str):
            args = "trap '' INT; " + args
        return self._module.Popen(args, *rest, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """While active, local worker processes that Beam starts ignore SIGINT (`_WorkersIgnoreCtrlC`)."""
    from apache_beam.runners.portability import local_job_service

    original = local_job_service.subprocess
    local_job_service.subprocess = _WorkersIgnoreCtrlC(original)
    try:
        yield
    finally:
        local_job_service.subprocess = original


@contextlib.contextmanager
def signals_end_the_run() -> Iterator[None]:
    """While the run runs, SIGINT and SIGTERM end it through `_interrupted`, in a watcher thread.

    Python runs signal handlers only between bytecodes of the main thread, which may sit in a C call
    of Beam's runner for minutes; the wakeup fd is written by the C-level handler at once, so the
    watcher acts even then. Local worker processes ignore SIGINT meanwhile (`_workers_ignore_ctrl_c`):
    the launcher's one line is all a Ctrl-C prints."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}

    def watch():
        while True:
            try:
                data = os.read(read_fd, 1)
            except OSError:
                return
            if not data:
                return
            if data[0] in (signal.SIGINT, signal.SIGTERM):
                _interrupted(data[0])

    watcher = threading.Thread(target=watch, name="signal-watcher", daemon=True)
    watcher.start()
    try:
        with _workers_ignore_ctrl_c():
            yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(write_fd)  # the watcher reads end-of-file and stops
        watcher.join(timeout=5)
        os.close(read_fd)
