"""Beam transforms of the embedding job (read, decode, embed, dedup, write) and its public library API.

    from transforms import EmbedText, EmbedImages, read_embeddings

`EmbedText` / `EmbedImages` (see `transforms.embed.api`) embed a PCollection of dicts inside your own
pipeline; `EmbedTextTables` / `EmbedImageRefs` are their columnar core, which the job is built
from. `read_embeddings`, `read_errors` and `read_manifest` (see `transforms.results`) read a
finished run of the job; `WriteEmbeddingRun` (see `transforms.sinks.run`) writes `EmbedText` /
`EmbedImages` results as such a run, for the tools and later incremental runs. The names are
imported on first use, so `import transforms.io.fileio` stays light and reading a run never
imports TensorFlow. Importing `transforms` has no side effects: the job quiets TensorFlow and
switches OpenVINO's telemetry off itself when its DoFns load models (`transforms.quiet`).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "EmbedText",
    "EmbedImages",
    "EmbedResult",
    "EmbedTextTables",
    "EmbedImageRefs",
    "EmbeddedTables",
    "read_embeddings",
    "read_errors",
    "read_manifest",
    "WriteEmbeddingRun",
]

_HOMES = {
    "EmbedText": "transforms.embed.api",
    "EmbedImages": "transforms.embed.api",
    "EmbedResult": "transforms.embed.api",
    "EmbedTextTables": "transforms.embed.api",
    "EmbedImageRefs": "transforms.embed.api",
    "EmbeddedTables": "transforms.embed.api",
    "read_embeddings": "transforms.results",
    "read_errors": "transforms.results",
    "read_manifest": "transforms.results",
    "WriteEmbeddingRun": "transforms.sinks.run",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'transforms' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
