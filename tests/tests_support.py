"""Shared constants and helpers for tests (importable, unlike conftest)."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Iterator, Optional, Sequence

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent

DATAFLOW_PROJECT = "embeddings-test-project"
"""The project of the Dataflow jobs built offline (nothing is submitted)."""


# ---- processes ------------------------------------------------------------------------------------


def pipeline_command(*args: object) -> list[str]:
    """The command line `python -m pipeline ARGS...` with this interpreter (each arg as `str`), for
    `subprocess.run`/`Popen`: e.g. `pipeline_command("run", "--output", out, ...)`."""
    return [sys.executable, "-m", "pipeline", *map(str, args)]


TWO_WORKER_PROCESSES = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
"""Beam flags of a local run on two worker processes (the FnApiRunner's multi-processing mode)."""


def start_pipeline(
    *args: object, cwd: os.PathLike | str = PROJECT_ROOT, env: Optional[dict[str, str]] = None, **kwargs
) -> subprocess.Popen:
    """Start `python -m pipeline ARGS...` in `cwd` (the project root by default) without waiting;
    its stdout and stderr are text pipes unless `kwargs` say otherwise (e.g. `stdout=None`, or
    `start_new_session=True` to signal its whole process group). `env` as for `run_pipeline`."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(pipeline_command(*args), cwd=cwd, env=env, **{**streams, **kwargs})


def run_pipeline(
    *args: object,
    cwd: os.PathLike | str = PROJECT_ROOT,
    env: Optional[dict[str, str]] = None,
    timeout: float = 600,
    **kwargs,
) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ARGS...` to its end in `cwd` (the project root by default) and return
    it with its stdout and stderr captured as text; `env`: the process's whole environment (None:
    this one's). A run longer than `timeout` seconds raises `subprocess.TimeoutExpired`."""
    return subprocess.run(pipeline_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def descendants(pid: int) -> set[int]:
    """The live process ids below `pid` (children, their children, ...), read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        children = {p for p, pp in parents.items() if pp == parent} - found
        found |= children
        frontier += list(children)
    return found


# ---- storage -------------------------------------------------------------------------------------


@contextlib.contextmanager
def refused_storage(timeout: float = 2.0) -> Iterator[None]:
    """gs:// pointed at a closed loopback port (every connection refused), with the shared
    emulator's fake credentials in the environment (no 20 s auth lookups) and this process's
    storage retries bounded to `timeout` seconds; all restored on exit."""
    from gcs_emulator import start_emulator, stop_emulator
    from transforms.io import fileio

    start_emulator()
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
    previous = fileio.storage_timeout()
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: connections are refused
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
        fileio.bound_storage_retries(timeout)
        yield
    finally:
        fileio.bound_storage_retries(previous)
        fileio._down_until = 0.0
        if endpoint is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        stop_emulator()


# ---- Dataflow jobs built offline ------------------------------------------------------------------


def build_dataflow_template(emulator, job: str, sdk_image: str, flags: Sequence[str]) -> dict:
    """Build the job as a Dataflow template on the GCS emulator (staging there, nothing submitted)
    with the common Dataflow flags plus `flags` (the job's own: inputs, models, ...; --output is
    set here); returns the launch request, its pipeline options and the pipeline proto."""
    from apache_beam.portability.api import beam_runner_api_pb2

    from pipeline.run import run
    from transforms.io import fileio

    location = emulator.url(job, "template", "embed.json")
    argv = [
        "--runner",
        "DataflowRunner",
        "--project",
        DATAFLOW_PROJECT,
        "--region",
        "europe-west1",
        "--job_name",
        job,
        "--temp_location",
        emulator.url(job, "temp"),
        "--staging_location",
        emulator.url(job, "staging"),
        "--template_location",
        location,
        "--sdk_container_image",
        sdk_image,
        "--sdk_location",
        "container",
        "--output",
        emulator.url(job, "out"),
        *flags,
    ]
    assert run(argv) == {}
    request = json.loads(fileio.read_bytes(location))
    options = request["environment"]["sdkPipelineOptions"]["options"]
    pipeline = beam_runner_api_pb2.Pipeline.FromString(fileio.read_bytes(options["pipelineUrl"]))
    return {"request": request, "options": options, "pipeline": pipeline}


def pipeline_do_fns(pipeline, prefix: str) -> dict:
    """The DoFns of a pipeline proto's ParDo steps whose name starts with `prefix`, by step name."""
    from apache_beam.internal import pickler
    from apache_beam.portability.api import beam_runner_api_pb2

    found = {}
    for transform in pipeline.components.transforms.values():
        if transform.unique_name.startswith(prefix) and transform.spec.urn == "beam:transform:pardo:v1":
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            found[transform.unique_name] = pickler.loads(payload.do_fn.payload)[0]
    return found


def train_text_args(*argv: str):
    """`train-text`'s flags parsed as its command line does (argparse.Namespace)."""
    import argparse

    from pipeline.train import text as train_text

    parser = argparse.ArgumentParser()
    train_text.add_arguments(parser)
    return parser.parse_args(list(argv))


def train_text_config(*argv: str, **changes):
    """A validated `TextTrainingConfig` from `train-text` flags, quiet unless asked (`changes` replace fields)."""
    import dataclasses

    from pipeline.train import text as train_text

    return dataclasses.replace(train_text.config_from_args(train_text_args(*argv)), **{"verbose": 0, **changes})
