"""The `export-projector` command: TensorBoard Embedding Projector files and a 2-D PCA scatter plot.

Writes to `--output` (local or gs://; `--out` still works):

- `vectors.tsv`: one row of tab-separated values per point, no header (the projector's format).
- `metadata.tsv`: the id and the passthrough columns (the label first); a header row when there is
  more than one column, none when there is one (the projector's rule). Tabs and newlines inside
  values become spaces.
- `projector_config.pbtxt`: points TensorBoard's projector at the two files (`--logdir DIR2`), or
  load the two TSVs at projector.tensorflow.org.
- `pca.png`: the points on their first two principal components, with ticks and grid, titled
  with the model's name, coloured by `--label-field` with a legend of the labels and their counts
  (the 20 commonest labels get a colour of their own, the rest are grey).

At most `--max-points` rows are exported: a seeded uniform sample, chosen from the Parquet footers'
row counts and then read in one streamed pass (the projector itself slows beyond ~10,000 points).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from pipeline.command_flags import CommandFlag, add_flags
from pipeline.tools.common import (
    ToolError,
    format_fields,
    print_json,
    run_folder,
    write_bytes,
)
from pipeline.tools.flags import (
    ALLOW_FAILED_FLAG,
    MODALITY_FLAG,
    batch_rows_flag,
    json_flag,
    label_field_flag,
    output_flag,
    run_flags,
    seed_flag,
)
from pipeline.tools.store import DEFAULT_BATCH_ROWS, EmbeddingSet, open_embeddings, unit_rows
from transforms.io import fileio

__all__ = [
    "DEFAULT_MAX_POINTS",
    "ProjectorPoints",
    "sample_points",
    "pca_2d",
    "nice_ticks",
    "draw_scatter",
    "export_projector",
    "format_export_summary",
    "FLAGS",
    "add_arguments",
    "main_from_args",
]

DEFAULT_MAX_POINTS = 10_000
VECTORS_NAME = "vectors.tsv"
METADATA_NAME = "metadata.tsv"
CONFIG_NAME = "projector_config.pbtxt"
PLOT_NAME = "pca.png"

# Colour-blind-friendly categorical colours (Tableau 20 order); unplaced labels are grey.
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (219, 219, 141),
    (158, 218, 229),
    (57, 59, 121),
]
_OTHER = (190, 190, 190)


@dataclasses.dataclass(frozen=True)
class ProjectorPoints:
    """The exported rows: vectors (n, d) and the metadata columns, in the run's order."""

    vectors: np.ndarray
    metadata: dict[str, list]
    skipped_invalid: int
    total_rows: int


def sample_points(
    embeddings: EmbeddingSet,
    columns: Sequence[str],
    max_points: Optional[int],
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ProjectorPoints:
    """A seeded uniform sample of at most `max_points` rows with usable vectors, read in one streamed pass."""
    total = embeddings.num_rows()
    chosen = None
    if max_points is not None and total > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(total, max_points, replace=False))
    vectors, metadata = [], {c: [] for c in columns}
    skipped = 0
    for batch in embeddings.vector_batches(batch_rows, columns=[c for c in columns if c != "id"]):
        local = np.arange(len(batch.ids))
        if chosen is not None:
            lo, hi = np.searchsorted(chosen, [batch.start, batch.start + len(batch.ids)])
            local = chosen[lo:hi] - batch.start
        usable = unit_rows(batch.vectors, batch.valid)[1]
        skipped += int((~usable[local]).sum())
        local = local[usable[local]]
        vectors.append(batch.vectors[local])
        for c in columns:
            values = batch.ids if c == "id" else batch.columns[c]
            metadata[c] += [values[i] for i in local]
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, embeddings.dimension), np.float32)
    return ProjectorPoints(matrix, metadata, skipped, total)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points on their first two principal components, and the share of variance each explains."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    covariance = x.T @ x / max(len(x) - 1, 1)
    values, vectors_ = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(values)[::-1][:2]
    components = vectors_[:, order]
    for j in range(components.shape[1]):  # a fixed sign: the largest loading is positive
        if components[np.argmax(np.abs(components[:, j])), j] < 0:
            components[:, j] *= -1
    total = values.sum()
    explained = values[order] / total if total > 0 else np.zeros(len(order))
    projected = x @ components
    if projected.shape[1] < 2:  # one-dimensional embeddings: a flat second axis
        projected = np.column_stack([projected, np.zeros(len(x))])
        explained = np.append(explained, 0.0)
    return projected, explained


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi], about `count` of them."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return [float(lo)] if np.isfinite(lo) else []
    raw = (hi - lo) / max(count, 1)
    power = 10 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = np.ceil(lo / step) * step
    ticks = np.arange(first, hi + step * 1e-9, step)
    return [0.0 if abs(t) < step * 1e-9 else float(t) for t in ticks]


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    decimals = max(0, int(-np.floor(np.log10(step)))) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _fitted(draw, text: str, room: float, fonts: Sequence) -> tuple[str, object]:
    """`text` and the first of `fonts` (largest first) it fits `room` pixels in; else, in the last
    font, with its middle replaced by "..." (a long model path keeps its start and its file name)."""
    for font in fonts:
        if draw.textlength(text, font=font) <= room:
            return text, font
    font = fonts[-1]
    keep = len(text)
    while keep > 2:
        keep -= 1
        head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2 :]
        if draw.textlength(f"{head}...{tail}", font=font) <= room:
            return f"{head}...{tail}", font
    return "...", font


def draw_scatter(
    points: np.ndarray,
    labels: Optional[Sequence[str]],
    title: str,
    explained: Sequence[float],
    seed: int = 0,
    size: tuple[int, int] = (1000, 760),
    legend_title: Optional[str] = None,
    subtitle: str = "",
) -> bytes:
    """A PNG scatter plot of 2-D points coloured by label: axes with ticks and grid, a legend with counts (Pillow)."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    left, top, right, bottom = 95, 70, width - 240, height - 70
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    small = ImageFont.load_default(size=12)
    room = width - left - 12  # the title and subtitle end inside the image, however long the model's name
    title, title_font = _fitted(draw, title, room, [font, ImageFont.load_default(size=13)])
    draw.text((left, 14), title, fill="black", font=title_font)
    if subtitle:
        draw.text((left, 38), _fitted(draw, subtitle, room, [small])[0], fill=(90, 90, 90), font=small)

    names = [str(v) if v is not None else "(none)" for v in labels] if labels is not None else ["all points"] * len(points)
    counts = Counter(names)
    ranked = [name for name, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    colours = {name: _PALETTE[i] if i < len(_PALETTE) else _OTHER for i, name in enumerate(ranked)}
    pad = 10
    if len(points):
        lo, hi = points.min(axis=0), points.max(axis=0)
    else:
        lo, hi = np.zeros(2), np.ones(2)
    lo = np.where(hi - lo > 0, lo, lo - 0.5)
    hi = np.where(hi - lo > 0, hi, hi + 0.5)
    span = hi - lo

    def to_x(v):
        return left + pad + (v - lo[0]) / span[0] * (right - left - 2 * pad)

    def to_y(v):
        return bottom - pad - (v - lo[1]) / span[1] * (bottom - top - 2 * pad)

    # Grid, ticks and tick labels.
    xticks, yticks = nice_ticks(lo[0], hi[0]), nice_ticks(lo[1], hi[1])
    for t in xticks:
        x = float(to_x(t))
        draw.line([x, top, x, bottom], fill=(232, 232, 232))
        draw.line([x, bottom, x, bottom + 5], fill=(80, 80, 80))
        text = _tick_label(t, xticks)
        draw.text((x - draw.textlength(text, font=small) / 2, bottom + 8), text, fill="black", font=small)
    for t in yticks:
        y = float(to_y(t))
        draw.line([left, y, right, y], fill=(232, 232, 232))
        draw.line([left - 5, y, left, y], fill=(80, 80, 80))
        text = _tick_label(t, yticks)
        draw.text((left - 8 - draw.textlength(text, font=small), y - 7), text, fill="black", font=small)
    draw.rectangle([left, top, right, bottom], outline=(80, 80, 80))
    xlabel = f"PC1 ({100 * explained[0]:.1f}% of variance)"
    draw.text(((left + right) / 2 - draw.textlength(xlabel, font=small) / 2, bottom + 30), xlabel, fill="black", font=small)
    ylabel = f"PC2 ({100 * explained[1]:.1f}% of variance)"
    axis = Image.new("RGBA", (int(draw.textlength(ylabel, font=small)) + 4, 16), (255, 255, 255, 0))
    ImageDraw.Draw(axis).text((0, 0), ylabel, fill="black", font=small)
    rotated = axis.rotate(90, expand=True)
    image.paste(rotated, (12, int((top + bottom) / 2 - rotated.height / 2)), rotated)

    if len(points):
        xs, ys = to_x(points[:, 0]), to_y(points[:, 1])
        radius = 3 if len(points) <= 2000 else 2
        for i in np.random.default_rng(seed).permutation(len(points)):  # no label drawn wholly on top
            x, y = float(xs[i]), float(ys[i])
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colours[names[i]])

    # Legend: one entry per label (the commonest first) with its number of points.
    x0, y = right + 18, top
    if legend_title:
        draw.text((x0, y), legend_title[:28], fill="black", font=font)
        y += 24
    for name in ranked[: len(_PALETTE)]:
        draw.ellipse([x0 + 2, y + 4, x0 + 12, y + 14], fill=colours[name])
        draw.text((x0 + 20, y), f"{name[:22]} ({counts[name]:,})", fill="black", font=small)
        y += 20
    if len(ranked) > len(_PALETTE):
        others = sum(counts[name] for name in ranked[len(_PALETTE) :])
        draw.ellipse([x0 + 2, y + 4, x0 + 12, y + 14], fill=_OTHER)
        draw.text((x0 + 20, y), f"{len(ranked) - len(_PALETTE)} other labels ({others:,})", fill="black", font=small)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _tsv_cell(value) -> str:
    if value is None:
        return ""
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _pbtxt_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid protobuf text-format string


def export_projector(
    embeddings: EmbeddingSet,
    out: str,
    label_field: Optional[str] = None,
    max_points: Optional[int] = DEFAULT_MAX_POINTS,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict:
    """Write the projector files and the PCA plot to `out`; returns a summary."""
    if max_points is not None and max_points < 1:
        raise ToolError(f"--max-points must be at least 1, got {max_points}")
    passthrough = list(embeddings.passthrough)
    if label_field is not None:
        if label_field not in passthrough:
            raise ToolError(
                f"--label-field {label_field!r} is not a column of the {embeddings.modality} embeddings "
                f"(passthrough columns: {', '.join(passthrough) or 'none'})"
            )
        passthrough.remove(label_field)
        passthrough.insert(0, label_field)
    columns = ["id", *passthrough]
    points = sample_points(embeddings, columns, max_points, seed, batch_rows)
    n, d = points.vectors.shape
    if n == 0:
        raise ToolError(f"{embeddings.output}: no {embeddings.modality} row has a usable embedding to export")

    vectors_tsv = io.StringIO()
    np.savetxt(vectors_tsv, points.vectors, fmt="%.9g", delimiter="\t")
    metadata_lines = ["\t".join(columns)] if len(columns) > 1 else []
    metadata_lines += ["\t".join(_tsv_cell(points.metadata[c][i]) for c in columns) for i in range(n)]
    tensor_name = f"{embeddings.modality} ({embeddings.model.get('name')})"
    config = (
        "embeddings {\n"
        f"  tensor_name: {_pbtxt_string(tensor_name)}\n"
        f"  tensor_shape: {n}\n"
        f"  tensor_shape: {d}\n"
        f"  tensor_path: {_pbtxt_string(VECTORS_NAME)}\n"
        f"  metadata_path: {_pbtxt_string(METADATA_NAME)}\n"
        "}\n"
    )
    projected, explained = pca_2d(points.vectors)
    labels = points.metadata[label_field] if label_field else None
    model = embeddings.model.get("name") or "unknown model"
    title = f"PCA of {n:,} {embeddings.modality} embeddings, model {model}"
    subtitle = (f"coloured by {label_field}; " if label_field else "") + (
        f"a seeded sample of {n:,} of {points.total_rows:,} rows" if n < points.total_rows else f"all {n:,} usable rows"
    )
    png = draw_scatter(projected, labels, title, explained, seed, legend_title=label_field, subtitle=subtitle)

    paths = {name: fileio.join(out, name) for name in (VECTORS_NAME, METADATA_NAME, CONFIG_NAME, PLOT_NAME)}
    write_bytes(paths[VECTORS_NAME], vectors_tsv.getvalue().encode("utf-8"), "text/tab-separated-values")
    write_bytes(paths[METADATA_NAME], ("\n".join(metadata_lines) + "\n").encode("utf-8"), "text/tab-separated-values")
    write_bytes(paths[CONFIG_NAME], config.encode("utf-8"), "text/plain")
    write_bytes(paths[PLOT_NAME], png, "image/png")
    return {
        "model": model,
        "points": n,
        "dimension": d,
        "rows": points.total_rows,
        "skipped_invalid": points.skipped_invalid,
        "metadata_columns": columns,
        "pca_explained_variance": [float(v) for v in explained],
        "files": paths,
    }


def format_export_summary(summary: dict) -> str:
    """What `export-projector` wrote, as aligned lines."""
    pc1, pc2 = summary["pca_explained_variance"][:2]
    files = summary["files"]
    return format_fields(
        [
            (
                "points",
                f"{summary['points']:,} of {summary['rows']:,} rows (dimension {summary['dimension']}, model {summary['model']})"
                + (f"; {summary['skipped_invalid']:,} unusable vectors left out" if summary["skipped_invalid"] else ""),
            ),
            ("metadata", ", ".join(summary["metadata_columns"])),
            ("PCA", f"PC1 explains {100 * pc1:.1f}% of the variance, PC2 {100 * pc2:.1f}%"),
            ("plot", files[PLOT_NAME]),
            ("projector", files[VECTORS_NAME]),
            ("", files[METADATA_NAME]),
            ("", files[CONFIG_NAME]),
            (
                "view",
                "load the two .tsv files at https://projector.tensorflow.org, or point TensorBoard's projector at the folder",
            ),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Command line


FLAGS = (
    *run_flags(),
    output_flag("DIR2", "Folder for the projector files and pca.png (local or gs://)."),
    MODALITY_FLAG,
    ALLOW_FAILED_FLAG,
    label_field_flag("Passthrough column to colour the plot by (also the first metadata column)."),
    CommandFlag(
        "--max-points",
        "Export a seeded random sample of at most this many rows (default: %(default)s).",
        default=DEFAULT_MAX_POINTS,
        type=int,
    ),
    seed_flag("the sample"),
    batch_rows_flag("Rows read per Parquet chunk"),
    json_flag("the summary"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline export-projector`: its `FLAGS`."""
    add_flags(parser, FLAGS)


def main_from_args(args: argparse.Namespace) -> int:
    """Run `export-projector`: a summary table on stdout (`--json` for scripts)."""
    embeddings = open_embeddings(run_folder(args, "export-projector RUN"), args.modality, allow_failed=args.allow_failed)
    summary = export_projector(embeddings, args.out, args.label_field, args.max_points, args.seed, args.batch_rows)
    if args.json:
        print_json(summary)
    else:
        print(format_export_summary(summary))
    return 0
