"""The peer: the same work written the plain way a Beam user would, with Beam's own RunInference.

Images: MatchFiles -> ReadMatches -> Map(decode with Pillow, sha256) -> RunInference(KeyedModelHandler(
TFModelHandlerNumpy)) -> Map(row dict) -> WriteToParquet.
Text: ReadFromTextWithFilename -> Map(json.loads, sha256, tf.constant) -> RunInference(KeyedModelHandler(
TFModelHandlerTensor)) -> Map(row dict) -> WriteToParquet.

Both write the job's own output schema (`transforms.records.embedding_schema`), with a fixed batch
size equal to the job's (min_batch_size == max_batch_size). The decode is Pillow's straightforward
`open -> convert("RGB") -> resize(bilinear)`, the same geometry and filter as the job (the job's
JPEG draft mode does not apply to 500x375 photos going to 224 px: a 1/2 scale would be too small).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio as beam_fileio
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy, TFModelHandlerTensor
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.io.fileio import path_id
from transforms.records import IMAGE, TEXT, embedding_schema

__all__ = ["run_image_peer", "run_text_peer", "local_pipeline"]


def local_pipeline(beam_args: Sequence[str]) -> beam.Pipeline:
    """A pipeline on the FnApiRunner (honours --direct_num_workers / --direct_running_mode)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    options = PipelineOptions(list(beam_args))
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=info), options=options)


def _sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read())
    return digest.hexdigest()


def decode_for_peer(readable, size: int):
    """((path, sha256), uint8 pixels) for one matched file."""
    from PIL import Image

    data = readable.read()
    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    return (readable.metadata.path, hashlib.sha256(data).hexdigest()), pixels


def _row(keyed, model_name: str, model_sha256: str, line: bool = False) -> dict:
    (ident, source, sha), result = keyed
    row = {
        "id": ident,
        "source": source,
        "content_sha256": sha,
        "embedding": np.asarray(result.inference, dtype=np.float32).tolist(),
        "model": model_name,
        "model_sha256": model_sha256,
    }
    if line:
        row["line"] = None  # ReadFromText does not give line numbers
    return row


def run_image_peer(
    pattern: str, model_path: str, size: int, batch: int, dimension: int, output: str, beam_args: Sequence[str] = ()
) -> None:
    """Embed every image matching `pattern` into `output/part-*.parquet`."""
    schema = embedding_schema(IMAGE, dimension)
    name, sha = os.path.basename(model_path), _sha256_of_file(model_path)
    handler = KeyedModelHandler(TFModelHandlerNumpy(model_path, min_batch_size=batch, max_batch_size=batch))
    with local_pipeline(beam_args) as p:
        (
            p
            | "Match" >> beam_fileio.MatchFiles(pattern)
            | "Read" >> beam_fileio.ReadMatches()
            | "Decode" >> beam.Map(decode_for_peer, size)
            # ids as the job derives them (the path relative to the glob's folder), so outputs compare by id
            | "Key" >> beam.MapTuple(lambda key, pixels: ((path_id(key[0], pattern), key[0], key[1]), pixels))
            | "RunInference" >> RunInference(handler)
            | "ToRow" >> beam.Map(_row, name, sha)
            | "Write" >> beam.io.WriteToParquet(os.path.join(output, "part"), schema, codec="snappy", file_name_suffix=".parquet")
        )


def parse_for_peer(file_and_line):
    """((id, source, sha256), string tensor of shape (1,)) for one JSONL line."""
    import tensorflow as tf

    path, line = file_and_line
    record = json.loads(line)
    text = record["text"]
    return (record["id"], path, hashlib.sha256(text.encode("utf-8")).hexdigest()), tf.constant([text])


def run_text_peer(pattern: str, model_path: str, batch: int, dimension: int, output: str, beam_args: Sequence[str] = ()) -> None:
    """Embed every JSONL record matching `pattern` into `output/part-*.parquet`."""
    schema = embedding_schema(TEXT, dimension)
    name, sha = os.path.basename(model_path), _sha256_of_file(model_path)
    handler = KeyedModelHandler(TFModelHandlerTensor(model_path, min_batch_size=batch, max_batch_size=batch))
    with local_pipeline(beam_args) as p:
        (
            p
            | "Read" >> beam.io.ReadFromTextWithFilename(pattern)
            | "Parse" >> beam.Map(parse_for_peer)
            | "RunInference" >> RunInference(handler)
            | "ToRow" >> beam.Map(_row, name, sha, line=True)
            | "Write" >> beam.io.WriteToParquet(os.path.join(output, "part"), schema, codec="snappy", file_name_suffix=".parquet")
        )
