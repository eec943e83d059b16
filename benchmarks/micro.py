"""`python -m benchmarks.micro`: the cost of each step of the job's per-record work, one at a time.

Single-threaded microseconds per record (per image, per text record) for the steps the job does
and for the cheaper alternatives the profile suggests, on the same derived inputs as
`benchmarks.run` (make them first: `python -m benchmarks.run --quick`). Results:
`benchmarks/results/micro.json` and `.txt`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import pathlib
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

from benchmarks import inputs

__all__ = ["main", "per_item_us"]


def per_item_us(step: Callable[[], int], min_seconds: float = 1.0) -> float:
    """Microseconds per item of `step` (which returns how many items it did), best of 3 rounds."""
    step()  # warm
    best = float("inf")
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds / 3:
            done += step()
        best = min(best, (time.perf_counter() - start) / done * 1e6)
    return best


def _image_steps(photos: Sequence[str]) -> dict:
    from PIL import Image

    from transforms import decode

    blobs = [open(p, "rb").read() for p in photos]
    size = (224, 224)
    out = {}

    def each(function):
        def step():
            for blob in blobs:
                function(blob)
            return len(blobs)
        return step

    def pil_decode_only(blob):
        with Image.open(io.BytesIO(blob)) as img:
            img.load()

    def draft_half(blob):
        with Image.open(io.BytesIO(blob)) as img:
            img.draft("RGB", (img.width // 2, img.height // 2))  # libjpeg DCT scaling to 1/2
            return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR))

    def reducing_gap(blob):
        with Image.open(io.BytesIO(blob)) as img:
            return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))

    decoded = Image.open(io.BytesIO(blobs[0])).convert("RGB")
    out["sha256 of the file bytes"] = per_item_us(each(lambda b: hashlib.sha256(b).hexdigest()))
    out["Pillow JPEG decode only (full size)"] = per_item_us(each(pil_decode_only))
    out["Pillow bilinear resize 500x375 -> 224 only"] = per_item_us(
        lambda: (decoded.resize(size, Image.Resampling.BILINEAR), 1)[1])
    out["job: decode.decode_image (header checks, decode, orient, RGB, resize)"] = per_item_us(
        each(lambda b: decode.decode_image(b, size, decode.DEFAULT_MAX_IMAGE_PIXELS)))
    out["alternative: draft 1/2 scale (250x188) then resize (changes pixels)"] = per_item_us(each(draft_half))
    out["alternative: resize with reducing_gap=2.0 (changes pixels)"] = per_item_us(each(reducing_gap))
    batch = [decode.decode_image(b, size, decode.DEFAULT_MAX_IMAGE_PIXELS) for b in blobs[:32]]
    stacked = np.stack(batch)
    out["np.stack of a batch of 32 (per image)"] = per_item_us(lambda: (np.stack(batch), 32)[1])
    out["stacked[list(range(32))] fancy-index copy (per image)"] = per_item_us(lambda: (stacked[list(range(32))], 32)[1])
    return out


def _text_steps(shard: str, model_path: Optional[str]) -> dict:
    import pyarrow as pa
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    raw_lines = open(shard, "rb").read().splitlines(keepends=True)[:20000]
    n = len(raw_lines)
    decoded = [line.decode("utf-8") for line in raw_lines]
    records = [json.loads(line) for line in decoded]
    texts = [r["text"] for r in records]
    out = {}
    out["bytes -> str decode"] = per_item_us(lambda: (sum(1 for line in raw_lines if line.decode("utf-8")), n)[1])
    out["json.loads"] = per_item_us(lambda: (sum(1 for line in decoded if json.loads(line)), n)[1])
    out["sha256 hexdigest of the text"] = per_item_us(
        lambda: (sum(1 for t in texts if hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest()), n)[1])
    blob = b"".join(raw_lines)
    out["alternative: pyarrow.json.read_json of the same bytes"] = per_item_us(
        lambda: (pajson.read_json(io.BytesIO(blob)), n)[1])
    columns = {"id": [r["id"] for r in records], "source": [shard] * n, "line": list(range(n)), "text": texts,
               "content_sha256": ["0" * 64] * n}
    out["pa.Table.from_pydict (5 columns)"] = per_item_us(lambda: (pa.Table.from_pydict(columns), n)[1])
    table = pa.Table.from_pydict(columns)
    out["table.column('text').to_pylist()"] = per_item_us(lambda: (table.column("text").to_pylist(), n)[1])
    if model_path:
        import tensorflow as tf

        from transforms.models import TextModelSpec, load_text_embedder

        embedder = load_text_embedder(TextModelSpec(model_path, 256))
        chunk = texts[:256]
        out["np.array(chunk, dtype=object).reshape + tf.constant (per record)"] = per_item_us(
            lambda: (tf.constant(np.array(chunk, dtype=object).reshape(-1, 1)), 256)[1])
        out["tf.constant(256 rows of the arrow column via to_numpy) (per record)"] = per_item_us(
            lambda: (tf.constant(table.column("text").slice(0, 256).to_numpy(zero_copy_only=False).reshape(-1, 1)), 256)[1])
        out["job: TextEmbedder.embed(list of 4096)"] = per_item_us(lambda: (embedder.embed(texts[:4096]), 4096)[1], 3.0)
        vectors = embedder.embed(texts[:4096])
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        small = table.slice(0, 4096).append_column("embedding", emb)
        sink = io.BytesIO
        written = small.drop_columns(["text"])  # the job's output columns
        variants = {
            "Beam WriteToParquetBatched default: snappy, dictionary on every column": dict(compression="snappy"),
            "dictionary on id/source/model/model_sha256 (the job since 84bbdc7)": dict(
                compression="snappy", use_dictionary=["id", "source", "model", "model_sha256"]),
            "dictionary only on source/model/model_sha256": dict(
                compression="snappy", use_dictionary=["source", "model", "model_sha256"]),
            "alternative: + zstd, BYTE_STREAM_SPLIT embeddings": dict(
                compression="zstd", use_dictionary=["source", "model", "model_sha256"],
                column_encoding={"embedding.list.item": "BYTE_STREAM_SPLIT"}),
        }
        for name, options in variants.items():
            buffer = sink()
            pq.write_table(written, buffer, **options)
            size = len(buffer.getvalue()) / written.num_rows
            out[f"Parquet write, 4096 rows, {name} ({size:.0f} bytes/row)"] = per_item_us(
                lambda options=options: (pq.write_table(written, sink(), **options), 4096)[1])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=str(inputs.DEFAULT_WORK_DIR))
    parser.add_argument("--results-dir", default=str(inputs.PROJECT_ROOT / "benchmarks" / "results"))
    parser.add_argument("--text-model", help="default: the work folder's text.keras")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work_dir)
    photos = sorted(glob.glob(str(work / "photos" / "*" / "img-*.jpg")))[:64]
    shards = sorted(glob.glob(str(work / "text" / "jsonl-*" / "*.jsonl")), key=lambda p: -pathlib.Path(p).stat().st_size)
    model = args.text_model or str(work / "models" / "text.keras")
    result = {"images (us per image, 1 thread)": _image_steps(photos) if photos else {},
              "text (us per record, 1 thread)": _text_steps(shards[0], model if pathlib.Path(model).exists() else None)
              if shards else {}}
    lines = []
    for group, steps in result.items():
        lines.append(group)
        lines += [f"  {us:10.2f}  {name}" for name, us in steps.items()]
    text = "\n".join(lines)
    print(text)
    results = pathlib.Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / "micro.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / "micro.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
