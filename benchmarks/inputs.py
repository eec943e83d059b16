"""Derived benchmark inputs, made from the shared data into the work folder (never into git).

* Photos: the 224x224 Imagenette sample upscaled, cropped, flipped and brightness-jittered into
  500x375 JPEGs at quality 90 (`img-NNNNN.jpg`, deterministic per index). A set of the first n
  photos is a folder of symlinks, so every runner is given a plain glob.
* Text: JSONL records `{"id": ..., "text": ...}` of 4-30 consecutive words from two rt-polarity
  sentences (cp1252), split into a fixed number of shards (files), so small and large sets have
  the same file-level parallelism.

Everything is made once and reused; a `.done` marker holds the parameters it was made with.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

import numpy as np

__all__ = [
    "PROJECT_ROOT",
    "DEFAULT_SHARED_DATA",
    "DEFAULT_WORK_DIR",
    "add_location_flags",
    "IMAGE_WIDTH",
    "IMAGE_HEIGHT",
    "TEXT_SHARDS",
    "imagenette_sources",
    "rt_polarity_sentences",
    "make_photos",
    "image_set",
    "text_set",
]

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
DEFAULT_WORK_DIR = PROJECT_ROOT / "benchmarks" / "work"
DEFAULT_RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"


def add_location_flags(parser, work_help: str = "Derived inputs and outputs (default: benchmarks/work).") -> None:
    """--work-dir, --results-dir and --shared-data, the same for every harness command."""
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help=work_help)
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="Where the JSON and table go.")
    parser.add_argument("--shared-data", default=str(DEFAULT_SHARED_DATA), help="The shared data folder.")


IMAGE_WIDTH, IMAGE_HEIGHT = 500, 375
JPEG_QUALITY = 90
TEXT_SHARDS = 8
_SEED = 20240611


def _marker_ok(folder: pathlib.Path, params: dict) -> bool:
    marker = folder / ".done"
    return marker.exists() and json.loads(marker.read_text()) == params


def _write_marker(folder: pathlib.Path, params: dict) -> None:
    (folder / ".done").write_text(json.dumps(params, sort_keys=True))


def imagenette_sources(shared: pathlib.Path) -> list[pathlib.Path]:
    """The shared Imagenette photos, in manifest order."""
    folder = shared / "images" / "imagenette-sample"
    lines = (folder / "MANIFEST.csv").read_text().splitlines()[1:]
    return [folder / line.split(",")[0] for line in lines if line.strip()]


def rt_polarity_sentences(shared: pathlib.Path) -> list[str]:
    """The 10,662 rt-polarity sentences (positive then negative), decoded from cp1252."""
    sentences = []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        raw = (shared / "sentiment" / name).read_bytes().decode("cp1252")
        sentences += [line.strip() for line in raw.splitlines() if line.strip()]
    return sentences


def _augment(source: pathlib.Path, index: int):
    """One 500x375 photo from a 224x224 one: upscale, random crop, flip, brightness."""
    from PIL import Image

    rng = np.random.default_rng((_SEED, index))
    with Image.open(source) as img:
        img = img.convert("RGB")
        scale = rng.uniform(IMAGE_WIDTH / img.width, 1.25 * IMAGE_WIDTH / img.width)
        side = int(round(img.width * scale))
        img = img.resize((side, side), Image.Resampling.BICUBIC)
    left = int(rng.integers(0, side - IMAGE_WIDTH + 1))
    top = int(rng.integers(0, side - IMAGE_HEIGHT + 1))
    img = img.crop((left, top, left + IMAGE_WIDTH, top + IMAGE_HEIGHT))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.2)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_photos(shared: pathlib.Path, work: pathlib.Path, count: int) -> list[pathlib.Path]:
    """The first `count` derived photos (made where missing); their paths in order."""
    folder = work / "photos" / f"{IMAGE_WIDTH}x{IMAGE_HEIGHT}-q{JPEG_QUALITY}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = imagenette_sources(shared)
    paths = []
    for i in range(count):
        path = folder / f"img-{i:05d}.jpg"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            _augment(sources[i % len(sources)], i).save(tmp, format="JPEG", quality=JPEG_QUALITY)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def image_set(shared: pathlib.Path, work: pathlib.Path, count: int) -> str:
    """A glob matching exactly the first `count` photos (a folder of symlinks)."""
    photos = make_photos(shared, work, count)
    folder = work / "sets" / f"images-{count}"
    params = {"count": count, "first": str(photos[0]), "last": str(photos[-1])}
    if not _marker_ok(folder, params):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.jpg"):
            old.unlink()
        for photo in photos:
            try:
                (folder / photo.name).symlink_to(photo)
            except FileExistsError:  # made by another invocation meanwhile
                pass
        _write_marker(folder, params)
    return str(folder / "*.jpg")


def _shard_bounds(count: int, shards: int) -> Sequence[tuple[int, int]]:
    edges = np.linspace(0, count, shards + 1).astype(int)
    return list(zip(edges[:-1], edges[1:]))


def _short_text(words: list[list[str]], index: int) -> str:
    """Record `index`: 4-30 consecutive words across two rt-polarity sentences (almost never repeated,
    so neither the model's work nor Parquet's dictionary encoding profits from repeats)."""
    rng = np.random.default_rng((_SEED, index))
    first, second = rng.integers(0, len(words), size=2)
    pool = words[first] + words[second]
    length = min(len(pool), int(rng.integers(4, 31)))
    start = int(rng.integers(0, len(pool) - length + 1))
    return " ".join(pool[start : start + length])


def text_set(shared: pathlib.Path, work: pathlib.Path, count: int, shards: int = TEXT_SHARDS) -> str:
    """A glob matching `shards` JSONL files holding `count` records in all."""
    folder = work / "text" / f"jsonl-{count}"
    params = {"count": count, "shards": shards, "seed": _SEED, "text": "4-30 words of two sentences"}
    if not _marker_ok(folder, params):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.jsonl"):
            old.unlink()
        words = [s.split() for s in rt_polarity_sentences(shared)]
        for k, (lo, hi) in enumerate(_shard_bounds(count, shards)):
            target = folder / f"part-{k:02d}-of-{shards:02d}.jsonl"
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # another invocation may be writing too
            with open(tmp, "w", encoding="utf-8") as out:
                for i in range(lo, hi):
                    out.write(json.dumps({"id": f"rt-{i:08d}", "text": _short_text(words, i)}, ensure_ascii=False) + "\n")
            os.replace(tmp, target)
        _write_marker(folder, params)
    return str(folder / "*.jsonl")
