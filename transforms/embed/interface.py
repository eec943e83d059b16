"""The model interface the embedding DoFns are written against: `ModelSpec` and `Embedder`.

In the vocabulary of Beam's RunInference (`apache_beam.ml.inference.base.ModelHandler`):

- a `ModelSpec` plays the model handler: a small frozen, picklable description that travels with
  the pipeline to every worker. `load_model()` builds the model (Beam's `load_model`),
  `cache_key()` is the tag under which a worker process shares one loaded copy between its threads
  (`shared.Shared`, what Beam's `share_model_across_processes` is about within a process), and
  `batch_size` is the model batch (Beam's `batch_elements_kwargs`).
- an `Embedder` is the loaded model (Beam's `ModelT`): `embed(batch)` is `run_inference` for one
  batch and returns one float32 row per item; `model_name` and `model_sha256` are the model's
  identity (the output's `model`/`model_sha256` columns, the manifest, incremental runs);
  `dimension` is the width of a row.

`TextModelSpec` and `ImageModelSpec` (`transforms.embed.models`) implement them. A spec names its
own fields when a value cannot work (`models.ModelConfigError(field=...)`); command-line flags are
the CLI's business (`pipeline.flags_map`), argument names the public API's (`transforms.embed.api`).
This module imports nothing heavy.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["ModelSpec", "Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """A loaded model: a batch in, a (len(batch), dimension) float32 array out."""

    spec: ModelSpec
    model_name: str  # what the output's `model` column says
    model_sha256: str  # the model's identity: a sha256 of its files (or weights), plus what changes its vectors
    dimension: int

    def embed(self, batch: Sequence[Any]) -> Any:
        """Embeddings of `batch` (texts, or a uint8 pixel array), one row per item; each row depends
        on its own item only, so a failing batch can be split to isolate the item at fault."""


@runtime_checkable
class ModelSpec(Protocol):
    """A description of a model, cheap to pickle; `load_model()` turns it into an `Embedder`."""

    modality: str  # "text" | "image": the kind of records it embeds, the prefix of its error fields
    batch_size: int  # items per model call

    def load_model(self) -> Embedder:
        """Load (or build) the model; raises `models.ModelConfigError` naming the field at fault."""

    def cache_key(self) -> str:
        """Equal for specs that load the same model: one loaded copy per worker process per key."""
