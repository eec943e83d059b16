"""The job on Beam's portable job service with an EXTERNAL worker pool, on loopback only.

Like on Dataflow, the SDK harness runs in separate worker processes that load the models
themselves: `--runner PortableRunner --job_endpoint embed` runs Beam's job service in this
process, and `--environment_type EXTERNAL` sends the work to a worker pool in a child process,
which starts one SDK worker process per worker. The output must equal the DirectRunner's.

Beam binds these gRPC servers to `[::]` (every interface) with no option to change it: the
runner's control/data/state/logging servers (`fn_api_runner.worker_handlers`) and the worker
pool (`worker_pool_main`). The test rebinds both to loopback (the same wrapper around
`grpc.server` in each process) and checks, by reading /proc/net/tcp and tcp6 during the run, that
every socket listening in this process tree is on 127.0.0.1 or ::1.
"""

import inspect
import ipaddress
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from pipeline.run import run
from transforms.results import read_embeddings, read_errors

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


class LoopbackGrpc:
    """The grpc module as Beam sees it, except that servers bind 127.0.0.1 instead of [::]."""

    def __init__(self, grpc_module):
        self._grpc = grpc_module

    def server(self, *args, **kwargs):
        server = self._grpc.server(*args, **kwargs)
        add_port = server.add_insecure_port
        server.add_insecure_port = lambda address: add_port("127.0.0.1:" + address.rsplit(":", 1)[1])
        return server

    def __getattr__(self, name):
        return getattr(self._grpc, name)


# The worker pool: loopback only (the same class), on a free port that it reports; runs until its
# stdin closes. Each StartWorker request becomes an SDK worker process (`python -c "...SdkHarness..."`).
_WORKER_POOL = (
    inspect.getsource(LoopbackGrpc)
    + """
import sys
import grpc
from apache_beam.runners.worker import worker_pool_main

worker_pool_main.grpc = LoopbackGrpc(grpc)
address, server = worker_pool_main.BeamFnExternalWorkerPoolServicer.start(use_process=True, port=0)
print(address.rsplit(":", 1)[1], flush=True)
sys.stdin.read()
server.stop(1).wait(5)
"""
)


def _listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket in this network namespace."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # TCP_LISTEN
                    continue
                hex_address, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_address)
                # the kernel prints each 32-bit word in host (little-endian) order
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found[fields[9]] = (str(ipaddress.ip_address(packed)), int(hex_port, 16))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _process_tree(roots: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


class ListenerWatch:
    """Polls, while a run goes on, which sockets the processes of a tree listen on."""

    def __init__(self, roots: list[int], interval: float = 0.05):
        self._roots, self._interval = roots, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.listening: set[tuple[int, str, int]] = set()  # (pid, address, port)
        self.commands: dict[int, str] = {}  # every process seen in the tree

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self):
        while not self._stop.is_set():
            sockets = _listening_sockets()
            tree = _process_tree(self._roots)
            for pid in tree:
                if pid not in self.commands:
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as handle:
                            self.commands[pid] = handle.read().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        continue
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    except OSError:
                        continue
                    inode = link[len("socket:[") : -1] if link.startswith("socket:[") else None
                    if inode in sockets:
                        self.listening.add((pid, *sockets[inode]))
            self._stop.wait(self._interval)


@pytest.fixture
def worker_pool():
    """A Beam worker pool in a child process on 127.0.0.1; yields (port, pid) and stops it after."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),  # workers run `python`
    )
    pool = subprocess.Popen(
        [sys.executable, "-c", _WORKER_POOL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
    )
    try:
        port = pool.stdout.readline().strip()
        assert port.isdigit(), f"worker pool did not start (exit code {pool.poll()})"
        yield int(port), pool.pid
    finally:
        pool.stdin.close()
        try:
            pool.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pool.kill()
            pool.wait()
        pool.stdout.close()


def _write_inputs(root: pathlib.Path) -> None:
    (root / "text").mkdir(parents=True)
    with open(root / "text" / "a.jsonl", "w") as handle:
        for i in range(4):
            handle.write(json.dumps({"id": f"t{i}", "text": f"good film {i}" if i % 2 else f"bad plot {i}"}) + "\n")
        handle.write("{broken\n")
    (root / "images").mkdir()
    rng = np.random.RandomState(1)
    for i in range(3):
        Image.fromarray((rng.rand(30 + i, 34, 3) * 255).astype("uint8")).save(root / "images" / f"i{i}.png")
    (root / "images" / "bad.jpg").write_bytes(b"not an image")


def _rows(output: pathlib.Path, modality: str) -> dict:
    rows = read_embeddings(str(output), modality).drop_columns(["embedded_run_id"]).to_pylist()  # each run has its own id
    return {row.pop("id"): row for row in rows}


def test_external_worker_pool_output_equals_the_direct_runner(
    tmp_path, monkeypatch, worker_pool, tiny_text_model, tiny_image_model
):
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    port, pool_pid = worker_pool
    _write_inputs(tmp_path)
    job = [
        "--text-input",
        str(tmp_path / "text" / "*"),
        "--text-model",
        str(tiny_text_model),
        "--image-input",
        str(tmp_path / "images" / "*"),
        "--image-model",
        str(tiny_image_model),
        "--image-batch-size",
        "2",
        "--max-failed-fraction",
        "1",  # a bad record per modality on purpose
    ]
    # The runner's servers (in this process) on loopback; workers reach them at localhost, not at
    # socket.getfqdn() (Beam's default for EXTERNAL workers, which need not resolve to loopback).
    monkeypatch.setattr(worker_handlers, "grpc", LoopbackGrpc(grpc))
    monkeypatch.setattr(worker_handlers.ExternalWorkerHandler, "host_from_worker", lambda self: "localhost")
    started = time.monotonic()
    with ListenerWatch([os.getpid(), pool_pid]) as watch:
        portable = run(
            job
            + [
                "--output",
                str(tmp_path / "portable"),
                "--runner",
                "PortableRunner",
                "--job_endpoint",
                "embed",
                "--environment_type",
                "EXTERNAL",
                "--environment_config",
                f"127.0.0.1:{port}",
            ]
        )
    portable_seconds = time.monotonic() - started
    monkeypatch.undo()
    direct = run(job + ["--output", str(tmp_path / "direct")])

    # the same rows, bit for bit
    for modality in ("text", "image"):
        got, want = _rows(tmp_path / "portable", modality), _rows(tmp_path / "direct", modality)
        assert sorted(got) == sorted(want) and len(got) == (4 if modality == "text" else 3)
        for ident, row in want.items():
            np.testing.assert_array_equal(np.asarray(got[ident]["embedding"]), np.asarray(row["embedding"]), err_msg=ident)
            assert got[ident] == row, ident
    errors = {(r["id"], r["stage"]) for r in read_errors(str(tmp_path / "portable")).to_pylist()}
    assert errors == {(r["id"], r["stage"]) for r in read_errors(str(tmp_path / "direct")).to_pylist()}
    assert len(errors) == 2
    assert portable["counts"] == direct["counts"]

    # the models were loaded in a worker process started by the pool, once each
    assert portable["model_loads"] == {"text_model_loads": 1, "image_model_loads": 1}
    workers = [pid for pid, command in watch.commands.items() if "SdkHarness" in command]
    assert workers and pool_pid not in workers and os.getpid() not in workers

    # every server of the run listened on loopback, in the launcher and in the pool
    assert watch.listening, "saw no listening socket at all: /proc/net/tcp unreadable?"
    exposed = {(pid, address, p) for pid, address, p in watch.listening if not _is_loopback(address)}
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert {pid for pid, _, _ in watch.listening} >= {os.getpid(), pool_pid}
    assert any(p == port for _, _, p in watch.listening)
    print(f"portable run: {portable_seconds:.1f} s; listeners: {sorted(watch.listening)}")
