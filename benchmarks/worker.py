"""One measured thing, in its own process: `python -m benchmarks.worker SPEC.json RESULT.json`.

The harness starts a fresh interpreter for every measured thing, so each one's peak memory
(VmHWM, ru_maxrss) is its own. A spec names a `kind` and lists `runs` (sizes) done in order; each
run reports its wall seconds and CPU seconds. Kinds:

* `prepare`: save the peer's `.keras` files;
* `limit_image`, `limit_text`: the compiled forward pass in a tight loop on ready batches (images:
  TensorFlow, or with `backend: openvino` OpenVINO with one batch in flight per stream);
* `job`: `pipeline.run.run(argv)` end to end;
* `peer_image`, `peer_text`: the plain RunInference pipeline (`benchmarks.peer`);
* `inspect`: Parquet file and row-group sizes of an output, and the time to read it back.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import logging
import os
import resource
import shutil
import sys
import time
from typing import Callable

__all__ = ["main", "peak_rss_mb"]


def peak_rss_mb() -> dict:
    """This process's peak resident memory (VmHWM), now resident (VmRSS), and its reaped children's largest peak."""
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "vmhwm_mb": round(fields["VmHWM"], 1),
        "vmrss_mb": round(fields["VmRSS"], 1),
        "children_maxrss_mb": round(children, 1),
    }


def _cpu_seconds() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _timed(label: str, count: int, body: Callable[[], dict]) -> dict:
    cpu0, kids0 = _cpu_seconds()
    start = time.perf_counter()
    extra = body() or {}
    seconds = time.perf_counter() - start
    cpu1, kids1 = _cpu_seconds()
    result = {
        "label": label,
        "count": count,
        "seconds": seconds,
        "cpu_seconds": cpu1 - cpu0,
        "children_cpu_seconds": kids1 - kids0,
        "loadavg_after": os.getloadavg()[0],
    }
    result.update(extra)
    result.update(peak_rss_mb())
    return result


def _fresh_folder(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)


# ------------------------------------------------------------------------------------------------
# prepare


def _prepare(spec: dict) -> dict:
    from benchmarks import models

    made = []
    for item in spec["peer_image_models"]:
        if not os.path.exists(item["output"]):
            models.save_peer_image_model(item["network"], item["size"], item["alpha"], item["weights"], item["output"])
            made.append(item["output"])
    text = spec.get("headless_text_model")
    if text and not os.path.exists(text["output"]):
        models.save_headless_text_model(text["source"], text["output"])
        made.append(text["output"])
    return {"made": made}


# ------------------------------------------------------------------------------------------------
# limits: the model alone


def _loop_rate(step: Callable[[int], None], batch: int, counts: list[int], warmup_batches: int = 3) -> list[dict]:
    for i in range(warmup_batches):
        step(i)
    runs = []
    for count in counts:
        batches = max(1, count // batch)

        def body(batches=batches):
            for i in range(batches):
                step(i)

        runs.append(_timed(f"{count}", batches * batch, body))
    return runs


def _rate_in_flight(embed: Callable, batches: list, calls: int, batch: int, counts: list[int], warmup: int = 4) -> list[dict]:
    """Timed runs of `embed` over about `count` records each, `calls` batches always in flight (no
    barrier between them: a thread takes the next batch as soon as its call returns)."""
    with concurrent.futures.ThreadPoolExecutor(calls) as executor:

        def run(n: int) -> None:
            list(executor.map(lambda k: embed(batches[k % len(batches)]), range(n)))

        run(warmup * calls)
        sizes = [max(1, count // batch) for count in counts]  # whole batches
        return [_timed(f"{count}", n * batch, lambda n=n: run(n)) for count, n in zip(counts, sizes)]


def _limit_image(spec: dict) -> dict:
    import numpy as np

    from transforms.embed import decode
    from transforms.embed.models import ImageModelSpec, load_image_embedder

    backend = spec.get("backend", "tensorflow")
    model_spec = ImageModelSpec(
        model=spec["network"],
        weights=spec["weights"],
        image_size=spec["size"],
        alpha=spec["alpha"],
        batch_size=spec["batch"],
        backend=backend,
    )
    load_start = time.perf_counter()
    embedder = load_image_embedder(model_spec)
    load_seconds = time.perf_counter() - load_start
    if embedder.backend != backend:
        raise RuntimeError(f"{embedder.model_name} did not load on {backend}: {embedder.backend_details}")
    paths = sorted(glob.glob(spec["images"]))[: spec.get("pool", 128)]
    blobs = [open(p, "rb").read() for p in paths]
    size = embedder.input_size
    start = time.perf_counter()
    pool = np.stack([decode.decode_image(b, size, decode.DEFAULT_MAX_IMAGE_PIXELS) for b in blobs])
    decode_one_thread = len(blobs) / (time.perf_counter() - start)
    batch = spec["batch"]
    batches = [np.ascontiguousarray(pool[(np.arange(batch) + k * batch) % len(pool)]) for k in range(8)]
    result = {
        "model_load_seconds": load_seconds,
        "dimension": embedder.dimension,
        "model": embedder.model_name,
        "decode_images_per_second": {"1_thread": decode_one_thread},
        "backend": embedder.backend_details,
    }
    if backend == "openvino":
        # OpenVINO's own best: one batch in flight per stream (its THROUGHPUT hint), as an
        # AsyncInferQueue would keep them, through the job's thread-safe embedder.
        result["concurrent_calls"] = embedder.concurrent_calls
        result["runs"] = _rate_in_flight(embedder.embed, batches, embedder.concurrent_calls, batch, spec["counts"])
        return result
    result["runs"] = _loop_rate(lambda i: embedder.embed(batches[i % len(batches)]), batch, spec["counts"], 5)
    # TensorFlow with two batches in flight from two threads (it releases the GIL): a small network
    # does not fill two cores from one call, so the limit is the better of the two ways.
    result["runs_two_callers"] = _rate_in_flight(embedder.embed, batches, 2, batch, spec["counts"])
    if not spec.get("extras", True):
        return result
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        start = time.perf_counter()
        list(executor.map(lambda b: decode.decode_image(b, size, decode.DEFAULT_MAX_IMAGE_PIXELS), blobs))
        result["decode_images_per_second"]["2_threads"] = len(blobs) / (time.perf_counter() - start)
    return result


def _limit_text(spec: dict) -> dict:
    import tensorflow as tf

    from transforms.embed.models import TEXT_EMBEDDING_LAYER, TextModelSpec, load_text_embedder

    batch = spec["batch"]
    load_start = time.perf_counter()
    embedder = load_text_embedder(TextModelSpec(spec["model"], batch))
    load_seconds = time.perf_counter() - load_start
    texts = []
    for path in sorted(glob.glob(spec["texts"])):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                texts.append(json.loads(line)["text"])
                if len(texts) >= 64 * batch:
                    break
        if len(texts) >= 64 * batch:
            break
    chunks = [texts[k * batch : (k + 1) * batch] for k in range(len(texts) // batch)]
    import keras

    model = embedder.full_model
    headless = keras.Model(model.inputs, model.get_layer(TEXT_EMBEDDING_LAYER).output)
    forward = tf.function(lambda x: headless(x, training=False), input_signature=[tf.TensorSpec([batch, 1], tf.string)])
    tensors = [tf.constant([[t] for t in chunk]) for chunk in chunks]
    compiled = _loop_rate(lambda i: forward(tensors[i % len(tensors)]).numpy(), batch, spec["counts"], 20)
    result = {"runs": compiled, "model_load_seconds": load_seconds, "dimension": embedder.dimension, "model": embedder.model_name}
    if spec.get("extras", True):
        result["embedder_embed_runs"] = _loop_rate(lambda i: embedder.embed(chunks[i % len(chunks)]), batch, spec["counts"], 20)
    return result


# ------------------------------------------------------------------------------------------------
# the job and the peer


def _inspect(spec: dict) -> dict:
    """What a run wrote, and the time (and memory) to read its embeddings back."""
    from benchmarks import outputs

    files = outputs.parquet_files(spec["folder"])
    return {"parquet": outputs.describe_parquet(files), "read_back": outputs.read_back_seconds(files)}


def _job(spec: dict) -> dict:
    import contextlib

    from pipeline.run import run

    runs = []
    for item in spec["runs"]:
        manifest = {}

        def body(item=item):
            nonlocal manifest
            _fresh_folder(item["output"])
            with contextlib.redirect_stdout(sys.stderr):
                manifest = run(item["argv"])
            details = manifest.get("models", {}).get(spec["modality"], {}).get("details", {})
            return {
                "counts": manifest.get("counts"),
                "model_loads": manifest.get("model_loads"),
                "output": os.path.join(item["output"], spec["modality"]),
                "backend": {k: details[k] for k in ("backend", "precision", "convert_seconds", "backend_note") if k in details},
            }

        runs.append(_timed(item["label"], item["count"], body))
    return {"runs": runs}


def _peer(spec: dict) -> dict:
    from benchmarks import peer

    runs = []
    for item in spec["runs"]:

        def body(item=item):
            _fresh_folder(item["output"])
            if spec["kind"] == "peer_image":
                peer.run_image_peer(
                    item["pattern"],
                    spec["model"],
                    spec["size"],
                    spec["batch"],
                    spec["dimension"],
                    item["output"],
                    spec.get("beam_args", ()),
                )
            else:
                peer.run_text_peer(
                    item["pattern"], spec["model"], spec["batch"], spec["dimension"], item["output"], spec.get("beam_args", ())
                )
            return {"output": item["output"]}

        runs.append(_timed(item["label"], item["count"], body))
    return {"runs": runs}


KINDS = {
    "prepare": _prepare,
    "limit_image": _limit_image,
    "limit_text": _limit_text,
    "job": _job,
    "peer_image": _peer,
    "peer_text": _peer,
    "inspect": _inspect,
}


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path) as handle:
        spec = json.load(handle)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    result = KINDS[spec["kind"]](spec)
    result["process"] = peak_rss_mb()
    result["process"]["seconds_in_worker"] = time.perf_counter() - started
    with open(result_path, "w") as handle:
        json.dump(result, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
