"""Keep the local runner's gRPC servers on loopback.

For `--direct_num_workers > 1` (multi-threading and multi-processing modes) Beam's FnApiRunner
opens control, data, state and logging servers on `[::]:0` (and, in multi-processing mode, one
logging server per worker subprocess), i.e. on every network interface, while its workers only
ever connect to `localhost`. Nothing outside the machine should reach a job's
data plane, so for local runs we rewrite those binds to `localhost` for the duration of the run.
The patch is confined to the one module that opens them and undone afterwards.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

__all__ = ["loopback_only_servers"]

_LOCK = threading.Lock()


class _LoopbackServer:
    """A grpc.Server whose `add_insecure_port('[::]:N')` binds `localhost:N` instead."""

    def __init__(self, server):
        self._server = server

    def add_insecure_port(self, address: str) -> int:
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = "localhost:" + address.rsplit(":", 1)[1]
        return self._server.add_insecure_port(address)

    def __getattr__(self, name):
        return getattr(self._server, name)


class _LoopbackGrpc:
    """The grpc module as seen by Beam's worker handlers, with loopback-only servers."""

    def __init__(self, grpc_module):
        self._grpc = grpc_module

    def server(self, *args, **kwargs):
        return _LoopbackServer(self._grpc.server(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._grpc, name)


@contextlib.contextmanager
def loopback_only_servers() -> Iterator[None]:
    """While active, the local runner's worker servers listen on loopback only."""
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    modules = (worker_handlers, local_job_service)  # runner servers; subprocess workers' log server
    with _LOCK:
        originals = [module.grpc for module in modules]
        for module, original in zip(modules, originals):
            module.grpc = _LoopbackGrpc(original)
        try:
            yield
        finally:
            for module, original in zip(modules, originals):
                module.grpc = original
