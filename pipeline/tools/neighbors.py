"""The `neighbors` command: the records of a run most similar (cosine) to an id, a text or an image.

The query is a stored record (`--id`), or a text or an image embedded with the run's own model
(read from the manifest; `--text-model` / `--image-model ...` override it, and must give the same
model unless `--allow-model-mismatch`). The search uses the run's FAISS index when `build-index`
made one for the current output, and otherwise streams the Parquet files in chunks of
`--batch-rows`, keeping a running top-k: memory stays at one chunk whatever the number of rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional

import numpy as np

from pipeline.command_flags import CommandFlag, add_flags, config_values
from pipeline.tools.common import ToolError, format_table, print_json_lines, run_folder
from pipeline.tools.flags import (
    ALLOW_FAILED_FLAG,
    MODALITY_FLAG,
    TEXT_MODEL_FLAG,
    UNSAFE_MODEL_LOADING_FLAG,
    batch_rows_flag,
    json_lines_flag,
    k_flag,
    run_flags,
    switch,
)
from pipeline.tools.index import load_index
from pipeline.tools.knn import DEFAULT_K, RunningTopK
from pipeline.tools.store import DEFAULT_BATCH_ROWS, EmbeddingSet, open_embeddings, unit_rows
from transforms.errors import UserError
from transforms.io import fileio
from transforms.records import IMAGE, TEXT
from transforms.results import read_manifest

__all__ = [
    "NeighbourSearch",
    "find_neighbours",
    "query_from_id",
    "modality_of_id",
    "query_from_text",
    "query_from_image",
    "IMAGE_MODEL_FLAGS",
    "FLAGS",
    "add_arguments",
    "main_from_args",
]


@dataclasses.dataclass(frozen=True)
class NeighbourSearch:
    """The answer: rows best first (rank, id, score, position, source, passthrough columns), and how it was found."""

    rows: list[dict]
    method: str  # "brute force" or "faiss flat" / "faiss hnsw"
    chunks: int  # Parquet chunks read by a brute-force search (0 with an index)
    note: str = ""


def find_neighbours(
    embeddings: EmbeddingSet,
    query: np.ndarray,
    k: int = DEFAULT_K,
    exclude_id: Optional[str] = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    use_index: bool = True,
) -> NeighbourSearch:
    """The k rows most similar to `query` (cosine), best first; `exclude_id` (the query's own record) is left out."""
    if k < 1:
        raise ToolError(f"-k must be at least 1, got {k}")
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if query.shape[0] != embeddings.dimension:
        raise ToolError(f"the query has {query.shape[0]} dimensions, the {embeddings.modality} embeddings {embeddings.dimension}")
    unit_query, ok = unit_rows(query[None, :])
    if not ok[0]:
        raise ToolError("the query embedding is zero or not finite: it has no direction to compare")
    index, note = load_index(embeddings) if use_index else (None, "brute force asked for")
    if index is not None:
        scores, rows = index.search(query, k + (1 if exclude_id is not None else 0))
        hits = [(float(s), int(index.positions[r]), index.ids[r]) for s, r in zip(scores, rows)]
        hits = [h for h in hits if h[2] != exclude_id][:k]
        method, chunks = note, 0
    else:
        running = RunningTopK(k)
        for batch in embeddings.vector_batches(batch_rows):
            unit, valid = unit_rows(batch.vectors, batch.valid)
            scores = (unit @ unit_query[0]).astype(np.float64)
            scores[~valid] = -np.inf
            if exclude_id is not None:
                scores[[i for i, rid in enumerate(batch.ids) if rid == exclude_id]] = -np.inf
            running.push(scores, batch.positions)
        hits = [(float(s), int(p), None) for s, p in zip(running.scores, running.positions)]
        method, chunks = "brute force", running.chunks
    details = embeddings.rows_at([p for _, p, _ in hits], ["source", *embeddings.passthrough], batch_rows)
    rows = []
    for rank, (score, position, _) in enumerate(hits, start=1):
        found = details[position]
        rows.append(
            {
                "rank": rank,
                "id": found["id"],
                "score": score,
                "position": position,
                **{name: found[name] for name in ["source", *embeddings.passthrough]},
            }
        )
    return NeighbourSearch(rows, method, chunks, "" if index is not None or not use_index else note)


def query_from_id(embeddings: EmbeddingSet, record_id: str) -> np.ndarray:
    """The stored embedding of a record of the run."""
    return embeddings.find_id(record_id)[1]


def modality_of_id(output: str, record_id: str, allow_failed: bool = False) -> Optional[str]:
    """The modality whose embeddings hold `record_id`, for `--id` without `--modality`.

    None when the run has one modality (`open_embeddings` takes it); with text and image, the one
    that has the id; an error naming --modality only when both have it."""
    manifest = read_manifest(output.rstrip("/") if len(output) > 1 else output, allow_failed=True)
    embedded = [m for m in (TEXT, IMAGE) if m in manifest.get("models", {})]
    if len(embedded) < 2:
        return None
    found, errors = [], []
    for modality in embedded:
        try:
            open_embeddings(output, modality, allow_failed=allow_failed).find_id(record_id)
        except UserError as exc:  # not there (or that modality cannot be read: say so if no other has it)
            errors.append(exc)
            continue
        found.append(modality)
    if len(found) == 1:
        return found[0]
    if found:
        raise ToolError(
            f"--id {record_id!r} is in both the text and the image embeddings of {output}: choose one with --modality"
        )
    raise (
        errors[0]
        if len(errors) == 1
        else ToolError(f"--id {record_id!r}: no such id in the text or image embeddings of {output}")
    )


def _check_same_model(embeddings: EmbeddingSet, name: str, sha256: str, flag: str, allow: bool, by_file: bool) -> None:
    """A model file is the same model when its bytes are; a named network also needs the same name (size, alpha)."""
    recorded = embeddings.model
    if allow or (sha256 == recorded.get("sha256") and (by_file or name == recorded.get("name"))):
        return
    raise ToolError(
        f"{flag}: the query model ({name}, sha256 {sha256[:12]}) is not the one the run used "
        f"({recorded.get('name')}, sha256 {str(recorded.get('sha256'))[:12]}): its vectors are not comparable. "
        "Leave the model flags out to use the run's own model, or pass --allow-model-mismatch"
    )


def query_from_text(
    embeddings: EmbeddingSet, text: str, model_path: Optional[str] = None, unsafe: bool = False, allow_mismatch: bool = False
) -> np.ndarray:
    """A text embedded with the run's text model (or `model_path`)."""
    from transforms.embed.models import TextModelSpec, load_text_embedder

    if embeddings.modality != TEXT:
        raise ToolError("--text searches text embeddings; this run's chosen modality is image")
    recorded = (embeddings.manifest.get("options") or {}).get("text_model") or {}
    path = model_path or recorded.get("path")
    if not path:
        raise ToolError("--text-model is needed: the manifest does not say which text model the run used")
    if not model_path:
        _check_recorded_path(path, "--text-model")
    # the run's --text-layer too (an encoder cut at a layer, a SavedModel output)
    spec = TextModelSpec(path, batch_size=1, unsafe_loading=unsafe, layer=recorded.get("layer"))
    embedder = load_text_embedder(spec)
    _check_same_model(embeddings, embedder.model_name, embedder.model_sha256, "--text-model", allow_mismatch, True)
    vector = embedder.embed([text])[0]
    if not np.isfinite(vector).all():
        raise ToolError(f"--text {text!r} has no word once lower-cased and stripped of punctuation: nothing to embed")
    return vector


def _check_recorded_path(path: str, flag: str) -> None:
    """A model path read from the manifest must be usable from here (runs made before paths were absolute may hold relative ones)."""
    if fileio.is_remote(path) or os.path.isabs(path) or os.path.exists(path):
        return
    raise ToolError(
        f"the manifest records the model as {path!r}, a path relative to the folder the run was started from "
        f"(an older run): run this command from that folder, or give the model with {flag}"
    )


def _image_spec(embeddings: EmbeddingSet, overrides: dict, unsafe: bool):
    from transforms.embed.models import ImageModelSpec

    recorded = dict((embeddings.manifest.get("options") or {}).get("image_model") or {})
    if overrides.get("model") and overrides["model"] != recorded.get("model"):
        recorded = {}  # another model: start from the defaults, not from the run's settings
    fields = {f.name for f in dataclasses.fields(ImageModelSpec)}
    settings = {k: v for k, v in recorded.items() if k in fields}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if not settings.get("model"):
        raise ToolError("--image-model is needed: the manifest does not say which image model the run used")
    if not overrides.get("model") and str(settings["model"]).endswith((".keras", ".h5")):
        _check_recorded_path(settings["model"], "--image-model")
    settings.update(batch_size=1, unsafe_loading=unsafe)  # never unsafe because a manifest says so
    return ImageModelSpec(**settings)


def query_from_image(
    embeddings: EmbeddingSet,
    image_path: str,
    overrides: Optional[dict] = None,
    unsafe: bool = False,
    allow_mismatch: bool = False,
) -> np.ndarray:
    """An image file (local or gs://) decoded and embedded as the job does, with the run's image model by default."""
    from transforms.embed.decode import ImageDecodeError, decode_image
    from transforms.embed.models import load_image_embedder

    if embeddings.modality != IMAGE:
        raise ToolError("--image searches image embeddings; this run's chosen modality is text")
    spec = _image_spec(embeddings, overrides or {}, unsafe)
    embedder = load_image_embedder(spec)
    _check_same_model(
        embeddings,
        embedder.model_name,
        embedder.model_sha256,
        "--image-model",
        allow_mismatch,
        not spec.is_network and spec.layer == (embeddings.model.get("details") or {}).get("layer"),
    )
    try:
        data = fileio.read_bytes(image_path)
    except Exception as exc:  # noqa: BLE001 - missing file, no permission
        raise ToolError(f"--image {image_path!r}: cannot read ({type(exc).__name__}: {exc})") from exc
    try:
        pixels = decode_image(data, embedder.input_size)
    except ImageDecodeError as exc:
        raise ToolError(f"--image {image_path!r}: {exc}") from exc
    return embedder.embed(pixels[None])[0]


# ---------------------------------------------------------------------------------------------
# Command line


# --image-*: the run's image model spec, but for the fields given (`field`: the ImageModelSpec field each sets)
IMAGE_MODEL_FLAGS = (
    CommandFlag(
        "--image-model", "Network name or .keras file (default: the one the run used, from its manifest).", field="model"
    ),
    CommandFlag("--image-weights", "imagenet, none or a weights file (default: the run's).", field="weights"),
    CommandFlag("--image-alpha", "MobileNet width multiplier (default: the run's).", type=float, field="alpha"),
    CommandFlag("--image-size", "Input size of a named network (default: the run's).", type=int),
    CommandFlag("--image-layer", "Layer of a .keras classifier to use (default: the run's).", field="layer"),
    CommandFlag(
        "--image-preprocess", "Network whose preprocess_input a .keras classifier needs (default: the run's).", field="preprocess"
    ),
)
FLAGS = (
    *run_flags(),
    CommandFlag("--id", "Neighbours of this record of the run (it is left out of the answer).", exclusive="query"),
    CommandFlag("--text", "Neighbours of this text, embedded with the run's text model.", exclusive="query"),
    CommandFlag(
        "--image",
        "Neighbours of this image file (local or gs://), embedded with the run's image model.",
        metavar="PATH",
        exclusive="query",
    ),
    k_flag("How many neighbours"),
    dataclasses.replace(MODALITY_FLAG, help="Which embeddings, for --id (default: the one that holds the id)."),
    ALLOW_FAILED_FLAG,
    dataclasses.replace(
        TEXT_MODEL_FLAG,
        help="The .keras text model (default: the one the run used, from its manifest).",
        required=False,
        metavar=None,
    ),
    *IMAGE_MODEL_FLAGS,
    UNSAFE_MODEL_LOADING_FLAG,
    switch("--allow-model-mismatch", "Search even when the query model is not the run's model."),
    switch("--brute-force", "Ignore any FAISS index and scan the Parquet files."),
    batch_rows_flag("Rows per chunk of a brute-force scan"),
    json_lines_flag("neighbour"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline neighbors`: its `FLAGS` (one of --id, --text and --image)."""
    add_flags(parser, FLAGS)


def main_from_args(args: argparse.Namespace) -> int:
    """Run `neighbors`: the table (or JSON lines) on stdout, how it searched on stderr."""
    modality = TEXT if args.text is not None else IMAGE if args.image is not None else args.modality
    if args.modality and modality != args.modality:
        raise ToolError(f"--modality {args.modality} contradicts the query (--{modality} searches {modality} embeddings)")
    run = run_folder(args, "neighbors RUN")
    if args.id is not None and modality is None:
        modality = modality_of_id(run, args.id, args.allow_failed)
    embeddings = open_embeddings(run, modality, allow_failed=args.allow_failed)
    if args.id is not None:
        query, exclude = query_from_id(embeddings, args.id), args.id
    elif args.text is not None:
        query, exclude = (
            query_from_text(embeddings, args.text, args.text_model, args.unsafe_model_loading, args.allow_model_mismatch),
            None,
        )
    else:
        overrides = config_values(IMAGE_MODEL_FLAGS, args)
        query, exclude = (
            query_from_image(embeddings, args.image, overrides, args.unsafe_model_loading, args.allow_model_mismatch),
            None,
        )
    result = find_neighbours(embeddings, query, args.k, exclude, args.batch_rows, use_index=not args.brute_force)
    where = f"{result.method}" + (f"; {result.note}" if result.note else "")
    print(f"{len(result.rows)} nearest {embeddings.modality} neighbors by cosine ({where})", file=sys.stderr)
    if args.json:
        print_json_lines(result.rows)
    else:
        print(format_table(result.rows, ["rank", "score", "id", *embeddings.passthrough]))
    return 0
