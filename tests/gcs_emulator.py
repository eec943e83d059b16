"""A local Google Cloud Storage emulator for the tests, so every gs:// path works offline.

`gcp-storage-emulator` runs in a child process bound to 127.0.0.1 on a free port, keeping its
objects in memory. While it runs, `STORAGE_EMULATOR_HOST` points the storage client (and so Beam's
`FileSystems`) at it, and `GOOGLE_APPLICATION_CREDENTIALS` names a fake `authorized_user` file that
already holds an unexpired token: without one, Beam's auth lookup retries for ~20 s in every
process before it gives up and goes anonymous. Both variables are restored when the session ends.

Test modules import the fixture (`from gcs_emulator import gcs_emulator`). pytest makes one
fixture per importing module, so the server itself is shared and reference-counted here: one
emulator per session, stopped when the last user is torn down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Iterator, Optional

import pytest

__all__ = ["GcsEmulator", "gcs_emulator", "start_emulator", "EMULATOR_ENV"]

BUCKET = "embeddings-test"
PROJECT = "embeddings-test-project"
EMULATOR_ENV = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")
_START_TIMEOUT_S = 30

# Runs in the child: bind to loopback on port 0, report the port that the OS chose, serve until
# stdin closes (so the server also dies with the test process).
_SERVER_CODE = """
import logging, sys
logging.disable(logging.CRITICAL)
from gcp_storage_emulator.server import create_server
server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=sys.argv[1])
server.start()
print(server._api._httpd.server_address[1], flush=True)
sys.stdin.read()
server.stop()
"""


@dataclasses.dataclass(frozen=True)
class GcsEmulator:
    """A running emulator: its endpoint, its bucket and the environment that points clients at it."""

    endpoint: str
    bucket: str
    credentials_file: str

    @property
    def env(self) -> dict[str, str]:
        """The variables a process needs to use this emulator (already set in this process)."""
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GOOGLE_APPLICATION_CREDENTIALS": self.credentials_file,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }

    def url(self, *parts: str) -> str:
        """`gs://BUCKET/part/part...`."""
        return "/".join([f"gs://{self.bucket}", *(p.strip("/") for p in parts)])

    def upload(self, local: os.PathLike | str, *parts: str) -> str:
        """Copy one local file to gs://BUCKET/parts...; returns its gs:// path."""
        from apache_beam.io.filesystems import FileSystems

        target = self.url(*parts)
        with open(local, "rb") as source, FileSystems.create(target) as out:
            shutil.copyfileobj(source, out)
        return target

    def upload_tree(self, local_dir: os.PathLike | str, *parts: str) -> str:
        """Copy every file below `local_dir` to gs://BUCKET/parts/..., keeping relative paths."""
        root = pathlib.Path(local_dir)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.upload(path, *parts, path.relative_to(root).as_posix())
        return self.url(*parts)


def _fake_credentials(folder: str) -> str:
    """An `authorized_user` file whose access token never expires: google.auth loads it without a
    network call, and the emulator ignores the bearer token it adds."""
    path = os.path.join(folder, "application_default_credentials.json")
    with open(path, "w") as handle:
        json.dump(
            {
                "type": "authorized_user",
                "client_id": "emulator-test.apps.example",
                "client_secret": "not-a-secret",
                "refresh_token": "not-a-refresh-token",
                "token": "emulator-test-token",
                "expiry": "2999-01-01T00:00:00Z",
            },
            handle,
        )
    return path


@dataclasses.dataclass
class _Running:
    emulator: GcsEmulator
    process: subprocess.Popen
    saved_env: dict[str, Optional[str]]
    folder: str
    users: int = 0


_LOCK = threading.Lock()
_RUNNING: Optional[_Running] = None


def start_emulator() -> GcsEmulator:
    """Start the shared emulator (or take another reference to it) and point this process at it."""
    global _RUNNING
    with _LOCK:
        if _RUNNING is None:
            folder = tempfile.mkdtemp(prefix="gcs-emulator-")
            process = subprocess.Popen(
                [sys.executable, "-c", _SERVER_CODE, BUCKET],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            port_line = _read_line(process, _START_TIMEOUT_S)
            if not port_line.strip().isdigit():
                process.kill()
                process.wait()
                shutil.rmtree(folder, ignore_errors=True)
                raise RuntimeError(f"gcp-storage-emulator did not start (said {port_line!r})")
            emulator = GcsEmulator(f"http://127.0.0.1:{int(port_line)}", BUCKET, _fake_credentials(folder))
            saved = {name: os.environ.get(name) for name in EMULATOR_ENV}
            os.environ.update(emulator.env)
            _RUNNING = _Running(emulator, process, saved, folder)
        _RUNNING.users += 1
        return _RUNNING.emulator


def stop_emulator() -> None:
    """Drop one reference; the last one stops the server and restores the environment."""
    global _RUNNING
    with _LOCK:
        if _RUNNING is None:
            return
        _RUNNING.users -= 1
        if _RUNNING.users > 0:
            return
        running, _RUNNING = _RUNNING, None
    for name, value in running.saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    running.process.stdin.close()  # the child's stdin.read() returns: it stops its server
    try:
        running.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait()
    running.process.stdout.close()
    shutil.rmtree(running.folder, ignore_errors=True)


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """A GCS emulator on 127.0.0.1 with one empty bucket, for the whole session."""
    emulator = start_emulator()
    try:
        yield emulator
    finally:
        stop_emulator()
