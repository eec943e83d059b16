"""Run one worker process and watch it: its result, its wall time, and the memory of its whole
process tree (Beam's multi-processing mode does the work in child processes)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from typing import Optional

from benchmarks.inputs import PROJECT_ROOT

__all__ = ["WorkerFailed", "run_worker", "worker_env"]

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


class WorkerFailed(RuntimeError):
    """A worker process exited non-zero; the message ends with its log's last lines."""


def worker_env(work: pathlib.Path, tf_threads: Optional[int] = None, job_root: Optional[pathlib.Path] = None) -> dict:
    """The same environment for every measured process (threads included).

    `job_root` is a folder holding the job's `pipeline/` and `transforms/` to measure instead of
    this checkout's (e.g. an earlier commit's); the workers start there, so it comes first on sys.path.
    """
    env = dict(os.environ)
    roots = ([str(job_root)] if job_root else []) + [str(PROJECT_ROOT)]
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_HOME=str(work / "keras-home"),
        PYTHONPATH=os.pathsep.join(roots + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
        PYTHONUNBUFFERED="1",
        BENCH_JOB_ROOT=roots[0],
    )
    if tf_threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(tf_threads), TF_NUM_INTEROP_THREADS=str(tf_threads))
    return env


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, stack = _children(), [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE_MB
    except OSError:
        return 0.0


def _listening_sockets(pids: list[int]) -> list[str]:
    """`ss -ltnp` lines owned by these processes (to see where Beam's gRPC servers listen)."""
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    marks = tuple(f"pid={pid}," for pid in pids)
    return [" ".join(line.split()) for line in out.splitlines() if any(m in line for m in marks)]


class _TreeWatcher(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.25, sockets_after: Optional[float] = None):
        super().__init__(daemon=True)
        self.pid, self.interval, self.sockets_after = pid, interval, sockets_after
        self.peak_tree_mb, self.max_processes, self.sockets = 0.0, 0, []
        self.timeline: list[tuple[float, float]] = []  # (seconds, tree RSS MB), one point a second
        self._stop_event = threading.Event()

    def run(self):
        start = time.monotonic()
        while not self._stop_event.is_set():
            pids = _descendants(self.pid)
            rss = sum(_rss_mb(p) for p in pids)
            self.peak_tree_mb = max(self.peak_tree_mb, rss)
            now = time.monotonic() - start
            if not self.timeline or now - self.timeline[-1][0] >= 1.0:
                self.timeline.append((round(now, 1), round(rss, 1)))
            self.max_processes = max(self.max_processes, len(pids))
            if self.sockets_after is not None and not self.sockets and time.monotonic() - start > self.sockets_after:
                if len(pids) > 1:
                    self.sockets = _listening_sockets(pids)
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()


def run_worker(
    spec: dict, label: str, folder: pathlib.Path, env: dict, watch_sockets: bool = False, wrap: Optional[list[str]] = None
) -> dict:
    """Run `benchmarks.worker` on `spec` in a fresh process (its spec, log and result in `folder`);
    its result plus what was seen from outside."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = (folder / f"{label}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(spec, indent=2))
    if result_path.exists():
        result_path.unlink()
    cmd = list(wrap or []) + [sys.executable, "-m", "benchmarks.worker", str(spec_path), str(result_path)]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            cmd,
            cwd=env.get("BENCH_JOB_ROOT", PROJECT_ROOT),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        watcher = _TreeWatcher(process.pid, sockets_after=8.0 if watch_sockets else None)
        watcher.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        watcher.stop()
    wall = time.perf_counter() - start
    if process.returncode != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise WorkerFailed(f"{label}: worker exited with {process.returncode} (log {log_path}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["outside"] = {
        "wall_seconds": wall,
        "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
        "peak_tree_rss_mb_sampled": round(watcher.peak_tree_mb, 1),
        "max_processes": watcher.max_processes,
        "tree_rss_timeline_mb": watcher.timeline,
        "log": str(log_path),
    }
    if watch_sockets:
        result["outside"]["listening_sockets"] = watcher.sockets
    return result
