"""The embedded demo: data the project makes itself, a small image model, and a neighbour search.

Nothing is downloaded and everything is seeded, so the same seed gives the same files:

* `make_demo_text`: a JSONL file of short, templated product and film reviews (`id`, `topic`,
  `text`, 0/1 `label`), plus a few bad lines on purpose (malformed JSON, an empty text, a null
  text, a text with no word) so that a run shows its dead letters.
* `make_demo_images`: small PNG and JPEG pictures of circles, squares, stripes and triangles in
  random colours, sizes and places, in class folders, with a `MANIFEST.csv` (`uri`, `label`), plus
  one truncated JPEG on purpose.
* `train_demo_image_model`: a small CNN classifier (`Rescaling` inside the model, a pooled
  `features` layer, a softmax `classes` head) trained in seconds on those pictures. The job then
  uses it headless, `--image-layer features`: the transfer-learning idea at toy scale.
* `nearest_neighbours`: cosine neighbours of a finished run's embeddings, found by the
  `neighbors` command's own search (`pipeline.tools`), as `format_neighbours` prints them.

Command line (`python -m examples.demo`)::

    python -m examples.demo data --output demo_data
    python -m examples.demo neighbors --output demo_output   # `neighbours` works too

Keras and TensorFlow are imported only inside the functions that train or load a model.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import random
import sys
import time
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "IMAGE_CLASSES",
    "IMAGE_SIZE",
    "DemoImages",
    "DemoText",
    "add_arguments",
    "format_neighbours",
    "main",
    "main_from_args",
    "make_demo_data",
    "make_demo_images",
    "make_demo_text",
    "nearest_label_agreement",
    "nearest_neighbours",
    "train_demo_image_model",
]

IMAGE_SIZE = 64
IMAGE_CLASSES = ("circles", "squares", "stripes", "triangles")
TEXT_FILE = os.path.join("text", "reviews.jsonl")
IMAGES_FOLDER = "images"
IMAGE_MANIFEST = "MANIFEST.csv"
IMAGE_MODEL_FILE = "image_model.keras"

# ---------------------------------------------------------------------------------------------
# Text: templated reviews

_TOPICS = {
    "film": ("plot", "soundtrack", "ending", "cast", "script", "dialogue", "acting"),
    "restaurant": ("food", "service", "pasta", "dessert", "waiter", "menu", "soup"),
    "hotel": ("room", "bed", "breakfast", "staff", "view", "pool", "lobby"),
    "phone": ("battery", "screen", "camera", "speaker", "charger", "keyboard", "app"),
    "book": ("story", "chapter", "author", "heroine", "cover", "prose", "translation"),
}
_ADJECTIVES = {
    1: (
        "great",
        "wonderful",
        "excellent",
        "delightful",
        "superb",
        "lovely",
        "fantastic",
        "brilliant",
        "charming",
        "perfect",
        "impressive",
        "pleasant",
    ),
    0: (
        "terrible",
        "awful",
        "boring",
        "disappointing",
        "dreadful",
        "poor",
        "mediocre",
        "horrible",
        "bland",
        "broken",
        "annoying",
        "useless",
    ),
}
_CLOSERS = {
    1: (
        "I would recommend it.",
        "Worth every penny.",
        "I will be back for more.",
        "Five stars.",
        "Loved it.",
        "A real pleasure.",
    ),
    0: ("I would not recommend it.", "A waste of money.", "Never again.", "One star.", "I want a refund.", "What a letdown."),
}
_INTENSIFIERS = ("really", "truly", "quite", "very", "absolutely", "rather", "simply")
_TEMPLATES = (
    "The {noun} was {intensifier} {adjective}.",
    "{Adjective} {noun} and {adjective2} {noun2}. {closer}",
    "What {a} {adjective} {noun}! {closer}",
    "I found the {noun} {intensifier} {adjective}, and the {noun2} {adjective2}.",
    "Honestly, the {noun} is {adjective}. {closer}",
    "{closer} The {noun} was {adjective} and the {noun2} {intensifier} {adjective2}.",
    "This {topic} had {a} {adjective} {noun}.",
    "{Adjective}. The {noun} felt {adjective2}.",
)
# Deliberately bad lines: not JSON (a Python dict), an empty text, a null text, no word at all.
_BAD_TEXT_LINES = (
    "{'id': 'bad-not-json', 'text': 'single quotes are not JSON', 'label': 1}",
    json.dumps({"id": "bad-empty-text", "topic": "film", "text": "", "label": 1}),
    json.dumps({"id": "bad-null-text", "topic": "hotel", "text": None, "label": 0}),
    json.dumps({"id": "bad-no-words", "topic": "phone", "text": "?! ...", "label": 1}),
)


@dataclasses.dataclass(frozen=True)
class DemoText:
    """What `make_demo_text` wrote: `records` good lines and `bad_lines` bad ones in one JSONL file."""

    path: str
    records: int
    positives: int
    bad_line_numbers: tuple[int, ...]  # 1-based, in file order

    @property
    def bad_lines(self) -> int:
        return len(self.bad_line_numbers)


def _review(rng: random.Random, topic: str, label: int) -> str:
    nouns = _TOPICS[topic]
    noun, noun2 = rng.sample(nouns, 2)
    adjective, adjective2 = rng.sample(_ADJECTIVES[label], 2)
    return rng.choice(_TEMPLATES).format(
        topic=topic,
        noun=noun,
        noun2=noun2,
        adjective=adjective,
        Adjective=adjective.capitalize(),
        a="an" if adjective[0] in "aeiou" else "a",
        adjective2=adjective2,
        intensifier=rng.choice(_INTENSIFIERS),
        closer=rng.choice(_CLOSERS[label]),
    )


def make_demo_text(path: str, n: int = 400, seed: int = 0) -> DemoText:
    """Write `n` labelled reviews (half positive) and a few bad lines to a JSONL file at `path`."""
    if n < 2:
        raise ValueError(f"n must be at least 2 (one review of each label), got {n}")
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    rng.shuffle(labels)
    topics = sorted(_TOPICS)
    lines = []
    for i, label in enumerate(labels):
        topic = rng.choice(topics)
        record = {"id": f"review-{i:04d}", "topic": topic, "text": _review(rng, topic, label), "label": label}
        lines.append(json.dumps(record))
    # Spread the bad lines through the file rather than leaving them at the end.
    bad_line_numbers = []
    for k, line in enumerate(_BAD_TEXT_LINES):
        position = round((k + 1) * len(lines) / (len(_BAD_TEXT_LINES) + 1))
        lines.insert(position, line)
        bad_line_numbers.append(position + 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n".join(lines) + "\n")
    return DemoText(
        path=path,
        records=n,
        positives=sum(labels),
        bad_line_numbers=tuple(bad_line_numbers),
    )


# ---------------------------------------------------------------------------------------------
# Images: shapes in class folders


@dataclasses.dataclass(frozen=True)
class DemoImages:
    """What `make_demo_images` wrote: good images per class, the manifest, and the corrupt file(s)."""

    folder: str
    manifest: str
    per_class: int
    classes: tuple[str, ...]
    corrupt: tuple[str, ...]  # manifest uris of the deliberately broken files

    @property
    def images(self) -> int:
        """Good (decodable) images."""
        return self.per_class * len(self.classes)


def _contrasting_colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A random background colour and a random foreground colour clearly different from it."""
    background = rng.integers(0, 256, 3)
    while True:
        foreground = rng.integers(0, 256, 3)
        if np.abs(foreground - background).sum() >= 240:
            return tuple(int(v) for v in background), tuple(int(v) for v in foreground)


def _draw_shape(shape: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One picture of `shape` as a uint8 (size, size, 3) array, with random colours and noise."""
    from PIL import Image, ImageDraw

    background, foreground = _contrasting_colours(rng)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    if shape == "circles":
        r = int(rng.integers(size // 7, size // 3))
        cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=foreground)
    elif shape == "squares":
        side = int(rng.integers(size // 4, size * 5 // 8))
        x0, y0 = (int(v) for v in rng.integers(2, size - side - 2, 2))
        draw.rectangle([x0, y0, x0 + side, y0 + side], fill=foreground)
    elif shape == "triangles":
        half = int(rng.integers(size // 6, size * 3 // 8))
        height = int(round(half * 1.7))
        cx = int(rng.integers(half + 2, size - half - 2))
        top = int(rng.integers(2, size - height - 2))
        draw.polygon([(cx, top), (cx - half, top + height), (cx + half, top + height)], fill=foreground)
    elif shape == "stripes":
        period = float(rng.uniform(6, 14))
        angle = float(rng.choice([0, 45, 90, 135])) + float(rng.uniform(-10, 10))
        y, x = np.mgrid[0:size, 0:size]
        t = np.radians(angle)
        phase = float(rng.uniform(0, 1))
        on = ((x * np.cos(t) + y * np.sin(t)) / period + phase) % 1.0 < 0.5
        pixels = np.where(on[..., None], np.array(foreground), np.array(background))
        img = Image.fromarray(pixels.astype(np.uint8))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(IMAGE_CLASSES)}")
    noise = rng.normal(0.0, float(rng.uniform(3, 14)), (size, size, 3))
    return np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def make_demo_images(folder: str, per_class: int = 12, seed: int = 0) -> DemoImages:
    """Write `per_class` images of each of `IMAGE_CLASSES` (PNG and JPEG alternately), one truncated
    JPEG, and `MANIFEST.csv` (`uri` relative to the folder, `label`)."""
    from PIL import Image

    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    rows = []
    for label in IMAGE_CLASSES:
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        stem = label[:-1]
        for i in range(per_class):
            pixels = _draw_shape(label, rng)
            ext = "png" if i % 2 == 0 else "jpg"
            uri = f"{label}/{stem}-{i:02d}.{ext}"
            if ext == "png":
                Image.fromarray(pixels).save(os.path.join(folder, uri), "PNG")
            else:
                Image.fromarray(pixels).save(os.path.join(folder, uri), "JPEG", quality=int(rng.integers(80, 96)))
            rows.append((uri, label))
    # A JPEG cut off halfway, like an interrupted upload: its header reads, its pixels do not.
    buffer = io.BytesIO()
    Image.fromarray(_draw_shape("triangles", rng)).save(buffer, "JPEG", quality=90)
    corrupt = "triangles/triangle-truncated.jpg"
    with open(os.path.join(folder, corrupt), "wb") as handle:
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    rows.append((corrupt, "triangles"))
    manifest = os.path.join(folder, IMAGE_MANIFEST)
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["uri", "label"])
        writer.writerows(rows)
    return DemoImages(folder=folder, manifest=manifest, per_class=per_class, classes=IMAGE_CLASSES, corrupt=(corrupt,))


# ---------------------------------------------------------------------------------------------
# The demo image model


def _load_labelled_images(folder: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(uint8 pixels, labels, skipped uris) of the images listed in `folder/MANIFEST.csv`.

    Decoded with the job's own `decode_image`, so the model trains on exactly what the job feeds it.
    """
    from transforms.embed.decode import ImageDecodeError, decode_image

    pixels, labels, skipped = [], [], []
    with open(os.path.join(folder, IMAGE_MANIFEST), newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            with open(os.path.join(folder, row["uri"]), "rb") as image_file:
                data = image_file.read()
            try:
                pixels.append(decode_image(data, (IMAGE_SIZE, IMAGE_SIZE)))
            except ImageDecodeError:
                skipped.append(row["uri"])
                continue
            labels.append(row["label"])
    if not pixels:
        raise ValueError(f"{folder}/{IMAGE_MANIFEST} lists no decodable image")
    return np.stack(pixels), labels, skipped


def build_demo_image_model(num_classes: int, size: int = IMAGE_SIZE):
    """The small CNN: 0..255 pixels in, `features` (pooled, 64 values) then a `classes` softmax.

    Built-in layers only, so the saved file loads in Keras safe mode; batch normalisation makes
    the few dozen pictures enough for a few seconds of training.
    """
    import keras
    from keras import layers

    pixels = keras.Input((size, size, 3), name="pixels")
    x = layers.Rescaling(1 / 255.0, name="rescale")(pixels)
    for block, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"norm{block}")(x)
        x = layers.Activation("relu", name=f"relu{block}")(x)
        x = layers.MaxPooling2D(name=f"pool{block}")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv4")(x)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    classes = layers.Dense(num_classes, activation="softmax", name="classes")(features)
    return keras.Model(pixels, classes, name="demo_shapes")


def train_demo_image_model(folder: str, output_keras: str, seed: int = 0, epochs: int = 30, verbose: bool = True) -> dict:
    """Train the small CNN on the images of `make_demo_images` and save it; returns a short report."""
    import keras

    if not output_keras.endswith(".keras"):
        raise ValueError(f"output_keras must end in .keras, got {output_keras!r}")
    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    pixels, labels, skipped = _load_labelled_images(folder)
    classes = sorted(set(labels))
    targets = np.array([classes.index(label) for label in labels])
    # Left-right flips double the few examples; every class stays itself when mirrored.
    x = np.concatenate([pixels, pixels[:, :, ::-1]]).astype(np.float32)
    y = np.concatenate([targets, targets])
    model = build_demo_image_model(len(classes))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=epochs, shuffle=True, verbose=0)
    _, accuracy = model.evaluate(pixels.astype(np.float32), targets, verbose=0)
    os.makedirs(os.path.dirname(os.path.abspath(output_keras)), exist_ok=True)
    # Saved uncompiled: the job needs the layers, not the optimizer state.
    keras.Model(model.inputs, model.outputs, name=model.name).save(output_keras)
    report = {
        "model": output_keras,
        "classes": classes,
        "images": int(len(pixels)),
        "skipped": skipped,
        "epochs": epochs,
        "train_accuracy": float(accuracy),
        "final_loss": float(history.history["loss"][-1]),
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    if verbose:
        print(
            f"image model: train accuracy {accuracy:.3f} on {len(pixels)} images, {len(classes)} classes, "
            f"{epochs} epochs, {report['elapsed_seconds']} s ({len(skipped)} undecodable skipped) -> {output_keras}"
        )
    return report


def make_demo_data(out: str, reviews: int = 400, per_class: int = 12, seed: int = 0, epochs: int = 30) -> dict:
    """Everything `run_local.sh` needs in `out`: text/reviews.jsonl, images/, image_model.keras."""
    text = make_demo_text(os.path.join(out, TEXT_FILE), n=reviews, seed=seed)
    print(f"text: {text.records} reviews ({text.positives} positive) and {text.bad_lines} bad lines -> {text.path}")
    images = make_demo_images(os.path.join(out, IMAGES_FOLDER), per_class=per_class, seed=seed)
    print(f"images: {images.images} in {len(images.classes)} classes and {len(images.corrupt)} corrupt -> {images.manifest}")
    report = train_demo_image_model(images.folder, os.path.join(out, IMAGE_MODEL_FILE), seed=seed, epochs=epochs)
    return {"text": text, "images": images, "image_model": report}


# ---------------------------------------------------------------------------------------------
# Nearest neighbours of a finished run


def _query_ids(embeddings, n_queries: int) -> list[str]:
    """`n_queries` ids spread evenly over the run's sorted ids (reads the ids only)."""
    ids = sorted(record_id for batch in embeddings.vector_batches(with_vectors=False) for record_id in batch.ids)
    if len(ids) < 2 or n_queries < 1:
        return []
    rows = np.unique(np.linspace(0, len(ids) - 1, min(n_queries, len(ids))).round().astype(int))
    return [ids[i] for i in rows]


def _neighbour_search(embeddings, k: int, n_queries: int, label_field: str) -> tuple[list, dict]:
    """The `neighbors` tool's search (`--id`) for each query id; and the labels of the ids found
    (None each when the run has no `label_field` column)."""
    from pipeline.tools.common import ToolError
    from pipeline.tools.neighbors import find_neighbours

    if k < 1:
        return [], {}
    labelled = label_field in embeddings.passthrough
    results, label_of = [], {}
    for query in _query_ids(embeddings, n_queries):
        try:
            position, vector = embeddings.find_id(query)
            found = find_neighbours(embeddings, vector, k, exclude_id=query)
        except ToolError:  # a null, non-finite or zero vector has no direction: not a query
            continue
        if labelled:
            label_of[query] = embeddings.rows_at([position], [label_field])[position][label_field]
        neighbours = [(row["id"], row["score"], row[label_field] if labelled else None) for row in found.rows]
        label_of.update((record_id, label) for record_id, _, label in neighbours if labelled)
        results.append((query, neighbours))
    return results, label_of


def nearest_neighbours(
    output_dir: str, modality: str, k: int = 3, n_queries: int = 3, label_field: str = "label"
) -> list[tuple[str, list[tuple[str, float, Optional[str]]]]]:
    """Cosine neighbours of `n_queries` records spread evenly over the ids of a finished run.

    Returns `[(query id, [(neighbour id, cosine score, label), ...]), ...]`, best neighbour first;
    the label is the `label_field` passthrough column, or None when the run has none. The search is
    the `neighbors` command's (`pipeline.tools.neighbors.find_neighbours`).
    """
    from pipeline.tools.store import open_embeddings

    return _neighbour_search(open_embeddings(output_dir, modality), k, n_queries, label_field)[0]


def _label_agreement(embeddings, label_field: str) -> float:
    from pipeline.tools.evaluate import knn_precision, load_labelled_vectors

    labelled = load_labelled_vectors(embeddings, label_field)
    if len(labelled.labels) < 2:
        return float("nan")
    return knn_precision(labelled.vectors, labelled.labels, k=1)["precision_at_1"]


def nearest_label_agreement(output_dir: str, modality: str, label_field: str = "label") -> float:
    """The fraction of labelled records whose nearest neighbour has the same label (a quick embedding
    check): the `evaluate` command's leave-one-out precision@1."""
    from pipeline.tools.store import open_embeddings

    return _label_agreement(open_embeddings(output_dir, modality), label_field)


def _text_captions(embeddings, wanted: set[str], text_field: str) -> dict[str, str]:
    """The text of some records, read back from their JSONL or plain-text source line (the output holds no text)."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.io.text_formats import detect_format

    by_source: dict[str, dict[int, str]] = {}
    for batch in embeddings.vector_batches(columns=["source", "line"], with_vectors=False):
        for record_id, source, line in zip(batch.ids, batch.columns["source"], batch.columns["line"]):
            if record_id in wanted and source and line and detect_format(source) in ("jsonl", "lines"):
                by_source.setdefault(source, {})[line] = record_id
    captions = {}
    for source, lines in by_source.items():
        try:
            with FileSystems.open(source) as handle:  # decompresses .gz and the like
                for number in range(1, max(lines) + 1):
                    raw = handle.readline()
                    if not raw:
                        break
                    if number not in lines:
                        continue
                    text = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if detect_format(source) == "jsonl":
                        value = json.loads(text)
                        text = value.get(text_field, text) if isinstance(value, dict) else text
                    captions[lines[number]] = str(text)
        except Exception:  # noqa: BLE001 - captions are a nicety; a moved or changed input only loses them
            continue
    return captions


def format_neighbours(output_dir: str, modality: str, k: int = 3, n_queries: int = 3, label_field: str = "label") -> str:
    """A readable block: each query's label and its `k` nearest neighbours (with their text, for text)."""
    from pipeline.tools.store import open_embeddings

    embeddings = open_embeddings(output_dir, modality)
    results, label_of = _neighbour_search(embeddings, k, n_queries, label_field)
    captions = {}
    if modality == "text":
        wanted = {q for q, _ in results} | {n[0] for _, ns in results for n in ns}
        text_field = embeddings.manifest.get("options", {}).get("text_field", "text")
        captions = _text_captions(embeddings, wanted, text_field)

    def describe(record_id: str) -> str:
        parts = [record_id]
        if record_id in label_of:
            parts.append(f"[{label_field}={label_of[record_id]}]")
        if record_id in captions:
            parts.append(repr(captions[record_id][:70]))
        return " ".join(parts)

    lines = [f"{modality}: {embeddings.num_rows()} embeddings of dimension {embeddings.dimension}"]
    if label_field in embeddings.passthrough:
        agreement = _label_agreement(embeddings, label_field)
        lines.append(f"  nearest neighbour has the same {label_field}: {agreement:.0%} of labelled records")
    for query, neighbours in results:
        lines.append(f"  query {describe(query)}")
        for neighbour_id, score, _ in neighbours:
            lines.append(f"    {score:+.3f}  {describe(neighbour_id)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sub-commands `data` and `neighbors` (also spelt `neighbours`)."""
    commands = parser.add_subparsers(dest="demo_command", required=True, metavar="{data,neighbors}")
    data = commands.add_parser("data", help="Write the demo text, images and image model into --output.")
    data.add_argument(
        "--output", "--out", dest="out", required=True, help="Folder for text/reviews.jsonl, images/ and image_model.keras."
    )
    data.add_argument("--reviews", type=int, default=400, help="Good review records (default: %(default)s).")
    data.add_argument("--images-per-class", type=int, default=12, help="Images per shape class (default: %(default)s).")
    data.add_argument("--epochs", type=int, default=30, help="Training epochs of the image model (default: %(default)s).")
    data.add_argument("--seed", type=int, default=0, help="Seed of the data and the model (default: %(default)s).")
    near = commands.add_parser("neighbors", aliases=["neighbours"], help="Print nearest neighbors from a finished run's output.")
    commands._choices_actions[-1].metavar = "neighbors"  # help shows one spelling; `neighbours` still works
    near.add_argument("--output", required=True, help="The run's --output folder (holding _MANIFEST.json).")
    near.add_argument(
        "--modality",
        choices=("text", "image"),
        action="append",
        help="Modality to search (repeatable; default: every one the run embedded).",
    )
    near.add_argument("-k", "--k", type=int, default=3, help="Neighbours per query (default: %(default)s).")
    near.add_argument("--queries", type=int, default=3, help="Queries per modality (default: %(default)s).")
    near.add_argument("--label-field", default="label", help="Passthrough column shown as the label (default: %(default)s).")


def _print_output_files(output_dir: str) -> list[str]:
    """Where a run's Parquet went, from its manifest; returns the modalities it embedded."""
    from transforms.results import read_manifest

    manifest = read_manifest(output_dir)
    print(f"Output of run {manifest['run_id']} in {output_dir}:")
    for paths in manifest["files"].values():
        for path in paths:
            print(f"  {path}")
    counts = ", ".join(f"{m}: {c['embedded']} embedded, {c['failed']} failed" for m, c in manifest["counts"].items())
    print(f"  ({counts}; read with transforms.read_embeddings(dir, 'text'|'image'))")
    return list(manifest["models"])


def main_from_args(args: argparse.Namespace) -> int:
    """Run a parsed demo command; a folder that is not a finished run, or did not embed a modality
    asked for, raises a `UserError` (exit 2)."""
    if args.demo_command == "data":
        make_demo_data(args.out, args.reviews, args.images_per_class, args.seed, args.epochs)
        return 0
    from transforms.errors import UserError
    from transforms.results import IncompleteOutputError

    try:
        modalities = _print_output_files(args.output)
    except IncompleteOutputError as exc:  # here a wrong --output: bad usage (2), not a failed check (1)
        raise UserError(str(exc)) from None
    for modality in args.modality or modalities:
        if modality not in modalities:
            raise UserError(f"the run in {args.output} embedded no {modality}")
        print()
        print(format_neighbours(args.output, modality, args.k, args.queries, args.label_field))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m examples.demo data|neighbors ...` (quiet unless --verbose, as `python -m pipeline`; the same exit path)."""
    from pipeline.cli import GENERAL_HELP, HelpFormatter, configure_logging, exit_status, version_line
    from transforms import quiet

    quiet.install()  # as `python -m pipeline`: TensorFlow's start-up lines hidden, telemetry off

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--version" in argv:
        print(version_line())
        return 0
    verbose = "--verbose" in argv
    configure_logging(verbose)
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--verbose", action="store_true", help=GENERAL_HELP["verbose"])
    parser.add_argument("--version", action="store_true", help=GENERAL_HELP["version"])
    add_arguments(parser)
    args = parser.parse_args([a for a in argv if a != "--verbose"])
    return exit_status(None, lambda: main_from_args(args), verbose)


if __name__ == "__main__":
    sys.exit(main())
