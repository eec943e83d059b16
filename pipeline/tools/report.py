"""The `report` command: one self-contained HTML page to look at a finished run.

`python -m pipeline report RUN [--out FILE] [--label-column COLUMN]` writes one HTML file that
needs no server and no network (inline CSS and JS, images as `data:` URIs; the page's own
Content-Security-Policy refuses anything else), with, for each modality of the run:

- the summary: status, run id, times, models, the manifest's counts (read, embedded, failed, skipped);
- the failure reasons, counted from the dead letters (`errors/`) by stage and type, with examples;
- a 2-D map of the embeddings (PCA of the unit vectors, NumPy) coloured by a label column, with the
  id and label of the point under the mouse;
- neighbour galleries: for a sample of queries, the k most similar rows of the whole run (cosine),
  as thumbnails made from the source images (image runs) or text snippets read back from the source
  files (text runs; a `text` passthrough column is used when the run has one);
- precision@k per label (where a label column exists): the share of each query's k neighbours that
  share its label, over a seeded sample of queries, beside the chance level of each label.

Sized for runs of 100,000+ rows: the Parquet is streamed twice in chunks (a sample, then one pass
of chunked matrix products for the kNN of the sampled queries), the map plots at most
`--map-points` points and the galleries show `--queries` queries, so the page stays small (a few
hundred KB) whatever the run's size.

The page is written outside the run folder by default (`./report-RUN_ID.html`): a run folder holds
exactly the files its manifest lists, so `--out` inside it is refused.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import dataclasses
import datetime
import html
import io
import json
import os
import time
from collections import Counter, defaultdict
from typing import Optional, Sequence

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.command_flags import CommandFlag, add_flags
from pipeline.tools.common import ToolError, format_fields, print_json, run_folder, write_bytes
from pipeline.tools.flags import ALLOW_FAILED_FLAG, MODALITY_FLAG, batch_rows_flag, json_flag, k_flag, run_flags, seed_flag
from pipeline.tools.projector import pca_2d
from pipeline.tools.store import DEFAULT_BATCH_ROWS, OUTPUT_COLUMNS, EmbeddingSet, unit_rows
from transforms.io import fileio
from transforms.records import IMAGE, MODALITIES, TEXT
from transforms.results import FailedRunError, read_manifest, run_files

__all__ = [
    "DEFAULT_MAP_POINTS",
    "DEFAULT_QUERIES",
    "DEFAULT_K",
    "DEFAULT_PRECISION_QUERIES",
    "build_report",
    "default_out",
    "FLAGS",
    "add_arguments",
    "main_from_args",
]

DEFAULT_MAP_POINTS = 5000
DEFAULT_QUERIES = 12
DEFAULT_K = 8
DEFAULT_PRECISION_QUERIES = 500
DEFAULT_THUMBNAIL = 112
MAX_THUMBNAIL_SOURCE_BYTES = 50 * 1024 * 1024
SNIPPET_CHARS = 280
MAX_SCAN_LINES = 2_000_000  # per text source file, looking for the gallery's lines
ERROR_EXAMPLES = 3
ERROR_GROUPS = 30
MATMUL_ROWS = 8192  # candidate rows per similarity product: queries x 8192 floats at a time
COLOURED_LABELS = 12
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#393b79",
    "#ad494a",
    "#637939",
]
OTHER_COLOUR = "#b8b8b8"


@dataclasses.dataclass
class ModalitySection:
    """What the page shows of one modality."""

    modality: str
    model: dict
    rows: int
    usable: int
    label_column: Optional[str]
    label_counts: dict[str, int]
    map_points: list  # [x, y, label index or -1, id]
    map_labels: list[str]
    explained: list[float]
    galleries: list[dict]
    precision: dict
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# Reading the run


def _open_modality(run: str, manifest: dict, modality: str) -> EmbeddingSet:
    """One modality's embeddings (as `store.open_embeddings`, from a manifest already read)."""
    files = tuple(run_files(run, manifest, modality))
    passthrough = tuple(manifest.get("options", {}).get("passthrough", ()))
    if files:
        path = files[0]
        handle = FileSystems.open(path, compression_type="uncompressed") if fileio.is_remote(path) else path
        passthrough = tuple(n for n in pq.read_schema(handle).names if n not in OUTPUT_COLUMNS)
    return EmbeddingSet(run, modality, manifest, files, int(manifest["models"][modality]["dimension"]), passthrough)


def _open_parquet(path: str) -> pq.ParquetFile:
    if fileio.is_remote(path):
        return pq.ParquetFile(FileSystems.open(path, compression_type="uncompressed"))
    return pq.ParquetFile(path)


def failure_groups(run: str, manifest: dict, batch_rows: int = DEFAULT_BATCH_ROWS) -> tuple[int, list[dict]]:
    """The dead letters counted by (modality, stage, error type), commonest first, each with a few examples."""
    groups: dict[tuple, dict] = {}
    total = 0
    for path in run_files(run, manifest, "errors"):
        parquet = _open_parquet(path)
        names = parquet.schema_arrow.names
        wanted = [c for c in ("id", "modality", "source", "stage", "error_type", "message") if c in names]
        for batch in fileio.parquet_batches(parquet, batch_rows, columns=wanted):
            columns = {c: batch.column(c).to_pylist() for c in wanted}
            for i in range(batch.num_rows):
                total += 1
                key = tuple(columns[c][i] if c in columns else None for c in ("modality", "stage", "error_type"))
                group = groups.setdefault(
                    key, {"modality": key[0], "stage": key[1], "error_type": key[2], "count": 0, "examples": []}
                )
                group["count"] += 1
                if len(group["examples"]) < ERROR_EXAMPLES:
                    group["examples"].append(
                        {
                            c: (str(columns[c][i])[:400] if columns[c][i] is not None else None)
                            for c in ("id", "source", "message")
                            if c in columns
                        }
                    )
    ranked = sorted(groups.values(), key=lambda g: (-g["count"], str(g["modality"]), str(g["stage"]), str(g["error_type"])))
    return total, ranked


def _sample_pass(
    embeddings: EmbeddingSet, label_column: Optional[str], map_points: int, queries: int, seed: int, batch_rows: int
):
    """Pass 1: the map's sample (vectors, ids, labels) and every row's label code and usability."""
    total = embeddings.num_rows()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, min(map_points, total), replace=False)) if total else np.zeros(0, np.int64)
    codes = np.full(total, -1, dtype=np.int32)  # every row's label as an index into `names` (-1: none)
    usable_rows = np.zeros(total, dtype=bool)
    names: dict[str, int] = {}
    vectors, positions, ids, labels = [], [], [], []
    columns = [label_column] if label_column else []
    for batch in embeddings.vector_batches(batch_rows, columns=columns):
        n = len(batch.ids)
        unit, ok = unit_rows(batch.vectors, batch.valid)
        usable_rows[batch.start : batch.start + n] = ok
        if label_column:
            values = batch.columns[label_column]
            codes[batch.start : batch.start + n] = [-1 if v is None else names.setdefault(str(v), len(names)) for v in values]
        lo, hi = np.searchsorted(chosen, [batch.start, batch.start + n])
        local = chosen[lo:hi] - batch.start
        local = local[ok[local]]
        vectors.append(unit[local])
        positions.append(local + batch.start)
        ids += [batch.ids[i] for i in local]
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, embeddings.dimension), np.float32)
    positions = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    labels = codes[positions] if len(positions) else np.zeros(0, np.int32)
    # The queries: a seeded subset of the (uniform) map sample.
    order = np.random.default_rng(seed + 1).permutation(len(positions))[:queries]
    return total, matrix, positions, ids, labels, codes, usable_rows, {v: k for k, v in names.items()}, order


def principal_components(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """The points on their first two principal components and the share of variance of each.

    Exact (`projector.pca_2d`, an eigendecomposition of the d x d covariance) up to 64 dimensions;
    above that, subspace iteration on the centred sample (a few products with a d x 8 block), which
    gives the same two components to well within a plot's resolution at a fraction of the cost of
    a full eigendecomposition (seconds for d = 1280).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.shape[1] <= 64 or len(x) < 3:
        projected, explained = pca_2d(x)
        return projected, [float(v) for v in explained]
    x = x - x.mean(axis=0)
    block = np.linalg.qr(np.random.default_rng(seed).normal(size=(x.shape[1], 8)))[0]
    for _ in range(12):
        block = np.linalg.qr(x.T @ (x @ block))[0]
    small = block.T @ (x.T @ (x @ block))
    values, rotation = np.linalg.eigh(small)
    order = np.argsort(values)[::-1][:2]
    components = block @ rotation[:, order]
    for j in range(2):  # a fixed sign: the largest loading is positive
        if components[np.argmax(np.abs(components[:, j])), j] < 0:
            components[:, j] *= -1
    total = float((x * x).sum())
    explained = [float(v) / total if total > 0 else 0.0 for v in values[order]]
    return x @ components, explained


def nearest(
    embeddings: EmbeddingSet, queries: np.ndarray, query_positions: np.ndarray, k: int, batch_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: each query's k most similar other rows of the whole run (cosine), best first; (scores, positions).

    Chunked matrix products (queries x MATMUL_ROWS at a time) with a running top-k; a query's own
    row is left out; missing neighbours (fewer than k usable rows) have score -inf and position -1.
    """
    m = len(queries)
    best_scores = np.full((m, k), -np.inf, dtype=np.float32)
    best_positions = np.full((m, k), -1, dtype=np.int64)
    if m == 0:
        return best_scores, best_positions
    rows = np.repeat(np.arange(m), k)
    for batch in embeddings.vector_batches(batch_rows):
        unit, ok = unit_rows(batch.vectors, batch.valid)
        for lo in range(0, len(unit), MATMUL_ROWS):
            hi = min(lo + MATMUL_ROWS, len(unit))
            scores = queries @ unit[lo:hi].T
            scores[:, ~ok[lo:hi]] = -np.inf
            positions = np.arange(batch.start + lo, batch.start + hi, dtype=np.int64)
            own = np.flatnonzero((query_positions >= positions[0]) & (query_positions <= positions[-1]))
            scores[own, query_positions[own] - positions[0]] = -np.inf
            # Only scores above a query's current k-th best can enter (equal ones come later, so lose the tie).
            hit_rows, hit_columns = np.nonzero(scores > best_scores[:, -1:])
            if len(hit_rows) > 4 * m * k:  # the first chunks: most rows pass; a partial sort per query is cheaper
                take = min(k, hi - lo)
                part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
                hit_rows = np.repeat(np.arange(m), take)
                hit_columns = part.ravel()
            if not len(hit_rows):
                continue
            # Merge: each query keeps its k best of (current best, candidates); ties go to the lower position.
            all_rows = np.concatenate([rows, hit_rows])
            all_scores = np.concatenate([best_scores.ravel(), scores[hit_rows, hit_columns]])
            all_positions = np.concatenate([best_positions.ravel(), positions[hit_columns]])
            order = np.lexsort((all_positions, -all_scores, all_rows))
            sorted_rows = all_rows[order]
            rank = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows)
            keep = order[rank < k]  # exactly k per query: each brought its k current entries
            best_scores = all_scores[keep].reshape(m, k)
            best_positions = all_positions[keep].reshape(m, k)
    best_positions[~np.isfinite(best_scores)] = -1
    return best_scores, best_positions


def precision_by_label(
    query_codes: np.ndarray, neighbour_codes: np.ndarray, found: np.ndarray, codes: np.ndarray, usable: np.ndarray, names: dict
) -> dict:
    """precision@k of labelled queries, per label and overall, beside each label's chance level."""
    counts = Counter(codes[usable & (codes >= 0)].tolist())
    usable_total = int(usable.sum())
    per_label, hits_all, seen_all = [], 0.0, 0
    for code in sorted(set(query_codes[query_codes >= 0].tolist()), key=lambda c: (-counts.get(c, 0), names[c])):
        rows = np.flatnonzero(query_codes == code)
        hits = (neighbour_codes[rows] == code) & found[rows]
        denominators = found[rows].sum(axis=1)
        ok = denominators > 0
        if not ok.any():
            continue
        values = hits[ok].sum(axis=1) / denominators[ok]
        hits_all += float(values.sum())
        seen_all += int(ok.sum())
        chance = (counts.get(code, 0) - 1) / max(usable_total - 1, 1)
        per_label.append(
            {"label": names[code], "queries": int(ok.sum()), "precision": float(values.mean()), "chance": float(chance)}
        )
    return {"overall": hits_all / seen_all if seen_all else None, "queries": seen_all, "labels": per_label}


# ---------------------------------------------------------------------------------------------
# Thumbnails and snippets


def thumbnail(uri: str, size: int) -> tuple[Optional[str], Optional[str]]:
    """A small JPEG of the image at `uri` as a data: URI, or (None, why not)."""
    from PIL import Image, ImageOps

    try:
        data = fileio.read_bytes(uri, limit=MAX_THUMBNAIL_SOURCE_BYTES)
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale
            picture = ImageOps.exif_transpose(image).convert("RGB")
        picture.thumbnail((size, size))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=72, optimize=True)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), None
    except Exception as exc:  # any unreadable source becomes a note on the tile, never a broken page
        return None, f"{type(exc).__name__}: {exc}"[:200]


def text_snippets(rows: Sequence[dict], manifest: dict) -> dict[tuple, str]:
    """The texts at (source, line) of some rows, read back from their source files (each file once, stopping when all are found)."""
    from transforms.io.text_formats import detect_format, iter_records

    options = manifest.get("options", {})
    field = options.get("text_field") or "text"
    encoding = options.get("text_encoding") or "utf-8"
    wanted: dict[str, set] = defaultdict(set)
    for row in rows:
        if row.get("source") and row.get("line") is not None:
            wanted[row["source"]].add(int(row["line"]))
    found: dict[tuple, str] = {}
    for source, lines in wanted.items():
        try:
            with fileio.open_input(source) as handle:
                for scanned, parsed in enumerate(iter_records(handle, detect_format(source), encoding, field)):
                    if parsed.line in lines and parsed.record is not None:
                        found[(source, parsed.line)] = str(parsed.record.get(field, ""))
                        lines.discard(parsed.line)
                    if not lines or scanned >= MAX_SCAN_LINES:
                        break
        except Exception as exc:  # the source moved or is unreadable: say so on each tile
            for line in lines:
                found[(source, line)] = f"[source not readable: {type(exc).__name__}: {exc}]"[:200]
    return found


# ---------------------------------------------------------------------------------------------
# One modality


def modality_section(
    embeddings: EmbeddingSet,
    label_column: Optional[str],
    map_points: int,
    queries: int,
    k: int,
    precision_queries: int,
    seed: int,
    batch_rows: int,
    thumbnail_size: int,
) -> ModalitySection:
    """Sample, map, kNN and galleries of one modality."""
    notes = []
    if label_column and label_column not in embeddings.passthrough:
        notes.append(f"no column {label_column!r} in the {embeddings.modality} rows: not coloured, no precision")
        label_column = None
    total, matrix, positions, ids, labels, codes, usable, names, order = _sample_pass(
        embeddings, label_column, map_points, max(queries, precision_queries), seed, batch_rows
    )
    usable_count = int(usable.sum())
    if total > len(positions):
        notes.append(f"the map shows a seeded sample of {len(positions):,} of {total:,} rows")
    if total - usable_count:
        notes.append(f"{total - usable_count:,} rows have a null, zero or non-finite embedding: left out")

    # The map: PCA of the sampled unit vectors, scaled to [0, 1].
    label_counts = Counter(names[c] for c in codes[usable & (codes >= 0)].tolist()) if label_column else Counter()
    ranked = [name for name, _ in sorted(label_counts.items(), key=lambda item: (-item[1], item[0]))][:COLOURED_LABELS]
    colour_index = {name: i for i, name in enumerate(ranked)}
    points, explained = [], [0.0, 0.0]
    if len(matrix):
        projected, explained = principal_components(matrix, seed)
        lo, hi = projected.min(axis=0), projected.max(axis=0)
        scaled = (projected - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
        for (x, y), code, rid in zip(scaled.tolist(), labels.tolist(), ids):
            index = colour_index.get(names.get(code), len(ranked)) if code >= 0 else -1
            points.append([round(x, 4), round(y, 4), index, rid])

    # kNN of the sampled queries over the whole run.
    query_rows = order[: max(queries, precision_queries)]
    scores, neighbours = nearest(embeddings, matrix[query_rows], positions[query_rows], k, batch_rows)
    found = neighbours >= 0
    precision = {}
    if label_column:
        neighbour_codes = np.where(found, codes[np.maximum(neighbours, 0)], -2)
        precision = precision_by_label(labels[query_rows], neighbour_codes, found, codes, usable, names)
        precision["k"] = k

    # Galleries: the first `queries` of them, with what to show of each row.
    shown = query_rows[:queries]
    wanted = {int(positions[q]) for q in shown} | {int(p) for p in neighbours[: len(shown)].ravel() if p >= 0}
    extra = [c for c in ("line",) if embeddings.modality == TEXT] + ([label_column] if label_column else [])
    if embeddings.modality == TEXT and "text" in embeddings.passthrough:
        extra.append("text")
    details = embeddings.rows_at(sorted(wanted), ["source", *dict.fromkeys(extra)], batch_rows)
    if embeddings.modality == IMAGE:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            made = dict(zip(details, pool.map(lambda p: thumbnail(details[p]["source"], thumbnail_size), details)))
        for position, (uri, why) in made.items():
            details[position]["thumbnail"], details[position]["thumbnail_error"] = uri, why
    else:
        missing = [row for row in details.values() if row.get("text") is None]
        snippets = text_snippets(missing, embeddings.manifest) if missing else {}
        for row in missing:
            row["text"] = snippets.get((row.get("source"), row.get("line")), "[text not found in its source]")
    galleries = []
    for i, q in enumerate(shown):
        query = dict(details.get(int(positions[q]), {"id": ids[q]}))
        row_neighbours = []
        for score, position in zip(scores[i].tolist(), neighbours[i].tolist()):
            if position < 0:
                continue
            item = dict(details.get(position, {}))
            item["score"] = score
            if label_column:
                item["same_label"] = query.get(label_column) is not None and item.get(label_column) == query.get(label_column)
            row_neighbours.append(item)
        galleries.append({"query": query, "neighbours": row_neighbours})
    return ModalitySection(
        embeddings.modality,
        embeddings.model,
        total,
        usable_count,
        label_column,
        dict(label_counts),
        points,
        ranked,
        explained,
        galleries,
        precision,
        notes,
    )


# ---------------------------------------------------------------------------------------------
# The page


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5d9de;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.muted{color:#5d6670}.banner{padding:10px 14px;border-radius:6px;margin:10px 0}
.failed{background:#fde8e8;border:1px solid #e7a3a3}.complete{background:#e7f5ea;border:1px solid #9ccfa6}
table{border-collapse:collapse;background:#fff;margin:6px 0}th,td{border:1px solid #dde1e5;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.card{background:#fff;border:1px solid #dde1e5;border-radius:6px;padding:12px 14px;margin:10px 0}
.mapwrap{position:relative;display:inline-block}canvas{background:#fff;border:1px solid #dde1e5;max-width:100%}
.tip{position:absolute;pointer-events:none;background:rgba(20,24,28,.88);color:#fff;padding:3px 7px;border-radius:4px;font-size:12px;display:none;white-space:nowrap}
.legend span{display:inline-block;margin:2px 10px 2px 0}.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px;vertical-align:middle}
.gallery{display:flex;gap:8px;overflow-x:auto;padding:4px 0 8px}
.tile{flex:0 0 auto;width:132px;background:#fff;border:2px solid #dde1e5;border-radius:6px;padding:5px;font-size:12px}
.tile.query{border-color:#1d2329}.tile.same{border-color:#2ca02c}.tile.other{border-color:#d62728}
.tile img{display:block;width:120px;height:120px;object-fit:contain;background:#f0f2f4}
.tile .noimg{width:120px;height:120px;background:#f0f2f4;color:#8a2a2a;font-size:11px;overflow:hidden;word-break:break-word}
.tile.text{width:176px}.snippet{white-space:pre-wrap;word-break:break-word;max-height:9.5em;overflow:hidden}
.id{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;word-break:break-all;color:#38424c}
pre{background:#fff;border:1px solid #dde1e5;padding:10px;overflow:auto;max-height:420px;font-size:12px}
"""

# Records script errors and whether every image decoded into attributes of <html>, so that a
# headless browser's --dump-dom shows them (tests/test_report.py), and draws the maps.
_JS = r"""
(function(){
var root=document.documentElement,errors=[];
function note(m){errors.push(String(m).slice(0,300));root.setAttribute('data-js-errors',JSON.stringify(errors));}
window.addEventListener('error',function(e){note((e.message||'error')+' at '+(e.filename||'')+':'+(e.lineno||''));});
window.addEventListener('unhandledrejection',function(e){note('unhandled rejection: '+e.reason);});
var consoleError=console.error;console.error=function(){note(Array.prototype.join.call(arguments,' '));return consoleError.apply(console,arguments);};
document.addEventListener('securitypolicyviolation',function(e){note('blocked by the page policy: '+e.blockedURI);});
root.setAttribute('data-js-errors','[]');
function drawMap(canvas){
  var data=JSON.parse(document.getElementById(canvas.getAttribute('data-points')).textContent);
  var colours=JSON.parse(canvas.getAttribute('data-colours')),other=canvas.getAttribute('data-other');
  var ctx=canvas.getContext('2d'),w=canvas.width,h=canvas.height,pad=14,r=data.length>2000?2:3;
  function px(p){return [pad+p[0]*(w-2*pad),h-pad-p[1]*(h-2*pad)];}
  ctx.fillStyle='#fff';ctx.fillRect(0,0,w,h);
  for(var i=0;i<data.length;i++){var p=data[i],q=px(p);ctx.fillStyle=p[2]<0?'#d0d0d0':(colours[p[2]]||other);
    ctx.beginPath();ctx.arc(q[0],q[1],r,0,6.2832);ctx.fill();}
  var tip=canvas.parentNode.querySelector('.tip'),labels=JSON.parse(canvas.getAttribute('data-labels'));
  canvas.addEventListener('mousemove',function(ev){
    var b=canvas.getBoundingClientRect(),sx=canvas.width/b.width,x=(ev.clientX-b.left)*sx,y=(ev.clientY-b.top)*sx,best=-1,bd=100;
    for(var i=0;i<data.length;i++){var q=px(data[i]),d=(q[0]-x)*(q[0]-x)+(q[1]-y)*(q[1]-y);if(d<bd){bd=d;best=i;}}
    if(best<0){tip.style.display='none';return;}
    var p=data[best],label=p[2]<0?'(no label)':(labels[p[2]]||'(other label)');
    tip.textContent=p[3]+(labels.length?'  ·  '+label:'');tip.style.display='block';
    tip.style.left=(ev.clientX-b.left+12)+'px';tip.style.top=(ev.clientY-b.top+12)+'px';});
  canvas.addEventListener('mouseleave',function(){tip.style.display='none';});
  canvas.setAttribute('data-drawn',String(data.length));
}
window.addEventListener('load',function(){
  var maps=document.querySelectorAll('canvas[data-points]');
  for(var i=0;i<maps.length;i++){try{drawMap(maps[i]);}catch(e){note('map: '+e);}}
  var imgs=document.images,ok=0,broken=[];
  for(var j=0;j<imgs.length;j++){if(imgs[j].complete&&imgs[j].naturalWidth>0){ok++;}else{broken.push(imgs[j].alt||String(j));}}
  root.setAttribute('data-images',String(imgs.length));root.setAttribute('data-images-rendered',String(ok));
  root.setAttribute('data-images-broken',JSON.stringify(broken.slice(0,20)));
  root.setAttribute('data-report-ready','1');
});
})();
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value) -> str:
    return f"{value:,}" if isinstance(value, int) else ("" if value is None else str(value))


def _tile(row: dict, modality: str, label_column: Optional[str], kind: str) -> str:
    parts = []
    if modality == IMAGE:
        if row.get("thumbnail"):
            parts.append(f'<img src="{row["thumbnail"]}" alt="{_e(row.get("id"))}">')
        else:
            parts.append(f'<div class="noimg">no thumbnail: {_e(row.get("thumbnail_error") or "source unknown")}</div>')
    else:
        text = str(row.get("text") or "")
        parts.append(f'<div class="snippet">{_e(text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else ""))}</div>')
    if "score" in row:
        parts.append(f"<div><b>{row['score']:.3f}</b> cosine</div>")
    else:
        parts.append("<div><b>query</b></div>")
    if label_column:
        parts.append(
            f"<div>{_e(label_column)}: {_e(row.get(label_column) if row.get(label_column) is not None else '(none)')}</div>"
        )
    parts.append(f'<div class="id" title="{_e(row.get("source"))}">{_e(row.get("id"))}</div>')
    text_class = " text" if modality == TEXT else ""
    return f'<div class="tile {kind}{text_class}">{"".join(parts)}</div>'


def _section_html(section: ModalitySection, manifest: dict, k: int) -> str:
    m = section.modality
    out = [f'<h2 id="{m}">{_e(m.capitalize())} embeddings</h2>']
    model = section.model
    out.append(
        f"<p>model <b>{_e(model.get('name'))}</b>, dimension {_e(model.get('dimension'))}, "
        f"{section.rows:,} rows ({section.usable:,} with a usable vector)"
        + (
            f"; labels from <b>{_e(section.label_column)}</b> ({len(section.label_counts):,} distinct)"
            if section.label_column
            else "; no label column"
        )
        + "</p>"
    )
    for note in section.notes:
        out.append(f'<p class="muted">{_e(note)}</p>')

    # Map.
    colours = [PALETTE[i] for i in range(len(section.map_labels))]
    out.append(
        f'<h3>Map</h3><p class="muted">{len(section.map_points):,} points on the first two principal components of the unit vectors '
        f"(PC1 {100 * section.explained[0]:.1f}% of the variance, PC2 {100 * section.explained[1]:.1f}%); hover for id and label.</p>"
    )
    data = json.dumps(section.map_points, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    out.append(f'<script type="application/json" id="points-{m}">{data}</script>')
    out.append(
        f'<div class="mapwrap"><canvas width="900" height="480" data-points="points-{m}" '
        f"data-colours='{_e(json.dumps(colours))}' data-other=\"{OTHER_COLOUR}\" "
        f"data-labels='{_e(json.dumps(section.map_labels, ensure_ascii=False))}'></canvas><div class=\"tip\"></div></div>"
    )
    if section.label_column:
        legend = [
            f'<span><i class="swatch" style="background:{PALETTE[i]}"></i>{_e(name)} ({section.label_counts[name]:,})</span>'
            for i, name in enumerate(section.map_labels)
        ]
        rest = len(section.label_counts) - len(section.map_labels)
        if rest > 0:
            legend.append(f'<span><i class="swatch" style="background:{OTHER_COLOUR}"></i>{rest:,} other labels</span>')
        out.append(f'<div class="legend">{"".join(legend)}</div>')

    # Precision.
    if section.precision:
        p = section.precision
        if p.get("overall") is None:
            out.append("<h3>Precision</h3><p>No labelled query had neighbours.</p>")
        else:
            out.append(
                f"<h3>precision@{k} per label</h3><p>Share of each query's {k} nearest rows (cosine, the whole run searched) that "
                f"carry the query's label, over {p['queries']:,} sampled labelled queries: <b>{p['overall']:.3f}</b> overall. "
                "Chance is the share a random neighbour would give.</p>"
            )
            out.append(
                _table(
                    ["label", "queries", f"precision@{k}", "chance"],
                    [(r["label"], f"{r['queries']:,}", f"{r['precision']:.3f}", f"{r['chance']:.3f}") for r in p["labels"]],
                    numeric=(1, 2, 3),
                )
            )

    # Galleries.
    out.append(
        f'<h3>Neighbours</h3><p class="muted">{len(section.galleries)} sampled queries, each with its {k} nearest rows '
        "(cosine, best first)" + ("; green: same label, red: another label" if section.label_column else "") + ".</p>"
    )
    for gallery in section.galleries:
        tiles = [_tile(gallery["query"], m, section.label_column, "query")]
        for item in gallery["neighbours"]:
            kind = ("same" if item.get("same_label") else "other") if section.label_column else ""
            tiles.append(_tile(item, m, section.label_column, kind))
        out.append(f'<div class="gallery">{"".join(tiles)}</div>')
    return "\n".join(out)


def render_page(
    manifest: dict, run: str, sections: Sequence[ModalitySection], failures: tuple[int, list[dict]], k: int, elapsed: float
) -> str:
    """The whole HTML page."""
    run_id = manifest.get("run_id", "?")
    status = manifest.get("status", "?")
    failed = status == "failed"
    head = [
        f"<h1>Run {_e(run_id)}</h1>",
        f'<p class="muted">{_e(run)}</p>',
        f'<div class="banner {"failed" if failed else "complete"}">status <b>{_e(status)}</b>'
        + (
            " — "
            + _e("; ".join(f"{k_}: {v}" for k_, v in sorted(manifest.get("failures", {}).items())) or "see the manifest")
            + ". Its embeddings are incomplete."
            if failed
            else ""
        )
        + "</div>",
    ]
    facts = [
        ("started", manifest.get("started_at")),
        ("finished", manifest.get("finished_at")),
        ("incremental from", ", ".join(manifest.get("incremental_from") or []) or None),
        ("versions", ", ".join(f"{n} {v}" for n, v in sorted(manifest.get("versions", {}).items())) or None),
    ]
    head.append(
        "<table><tbody>" + "".join(f"<tr><th>{_e(a)}</th><td>{_e(b)}</td></tr>" for a, b in facts if b) + "</tbody></table>"
    )
    counts = manifest.get("counts", {})
    head.append("<h2>Counts</h2>")
    head.append(
        _table(
            ["modality", "model", "read", "embedded", "failed", "skipped", "balanced"],
            [
                (
                    m,
                    manifest.get("models", {}).get(m, {}).get("name"),
                    *(_num(counts[m].get(c)) for c in ("read", "embedded", "failed", "skipped")),
                    {True: "yes", False: "NO"}.get(counts[m].get("balanced"), ""),
                )
                for m in MODALITIES
                if m in counts
            ],
            numeric=(2, 3, 4, 5),
        )
    )
    total, groups = failures
    head.append(f"<h2>Failures</h2><p>{total:,} dead letters in errors/" + (":" if total else ".") + "</p>")
    if groups:
        rows = []
        for g in groups[:ERROR_GROUPS]:
            examples = " | ".join(f"{x.get('id') or x.get('source') or '?'}: {x.get('message') or ''}" for x in g["examples"])
            rows.append((g["modality"], g["stage"], g["error_type"], f"{g['count']:,}", examples))
        head.append(_table(["modality", "stage", "reason", "count", "examples"], rows, numeric=(3,)))
        if len(groups) > ERROR_GROUPS:
            head.append(f'<p class="muted">{len(groups) - ERROR_GROUPS} rarer reasons not shown.</p>')
    nav = " · ".join(f'<a href="#{s.modality}">{s.modality}</a>' for s in sections)
    body = "\n".join(head + ([f"<p>Sections: {nav}</p>"] if nav else []) + [_section_html(s, manifest, k) for s in sections])
    manifest_json = _e(json.dumps(manifest, indent=2, ensure_ascii=False))
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Run {_e(run_id)} report</title><style>{_CSS}</style><script>{_JS}</script></head>\n<body><main>\n{body}\n"
        f"<h2>Manifest</h2><details><summary>_MANIFEST.json</summary><pre>{manifest_json}</pre></details>\n"
        f'<p class="muted">Made by beam-embeddings report on {made} in {elapsed:.1f} s.</p>\n</main></body></html>\n'
    )


# ---------------------------------------------------------------------------------------------
# The command


def default_out(manifest: dict) -> str:
    """Where the page goes without --out: ./report-RUN_ID.html, outside the run folder."""
    return os.path.join(os.getcwd(), f"report-{manifest.get('run_id', 'run')}.html")


def _inside(path: str, folder: str) -> bool:
    if fileio.is_remote(path) or fileio.is_remote(folder):
        return path.startswith(folder.rstrip("/") + "/")
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def build_report(
    run: str,
    out: Optional[str] = None,
    label_column: Optional[str] = None,
    modality: Optional[str] = None,
    allow_failed: bool = False,
    map_points: int = DEFAULT_MAP_POINTS,
    queries: int = DEFAULT_QUERIES,
    k: int = DEFAULT_K,
    precision_queries: int = DEFAULT_PRECISION_QUERIES,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    thumbnail_size: int = DEFAULT_THUMBNAIL,
) -> dict:
    """Write the report of the run in folder `run` to `out` (default: ./report-RUN_ID.html); returns a summary."""
    for name, value, least in (
        ("--map-points", map_points, 1),
        ("--queries", queries, 0),
        ("-k", k, 1),
        ("--precision-queries", precision_queries, 0),
        ("--thumbnail-size", thumbnail_size, 16),
    ):
        if value < least:
            raise ToolError(f"{name} must be at least {least}, got {value}")
    started = time.perf_counter()
    run = run.rstrip("/") if len(run) > 1 else run
    manifest = read_manifest(run, allow_failed=True)
    if manifest.get("status") == "failed" and not allow_failed:
        why = "; ".join(f"{m}: {r}" for m, r in sorted(manifest.get("failures", {}).items())) or "see its manifest"
        raise FailedRunError(f"{run}: run {manifest.get('run_id')} failed ({why}); pass --allow-failed to report on it anyway")
    out = out or default_out(manifest)
    if _inside(out, run):
        raise ToolError(
            f"--out {out}: inside the run folder, which holds only the files its manifest lists; write the report elsewhere"
        )
    embedded = [m for m in MODALITIES if m in manifest.get("models", {})]
    if modality is not None:
        if modality not in embedded:
            raise ToolError(
                f"--modality {modality}: {run} has no {modality} embeddings (it has: {', '.join(embedded) or 'none'})"
            )
        embedded = [modality]
    sets = [_open_modality(run, manifest, m) for m in embedded]
    if label_column and not any(label_column in s.passthrough for s in sets):
        columns = sorted({c for s in sets for c in s.passthrough})
        raise ToolError(
            f"--label-column {label_column!r} is not a column of {run} (passthrough columns: {', '.join(columns) or 'none'})"
        )
    if label_column is None:
        label_column = "label" if any("label" in s.passthrough for s in sets) else None
    sections = [
        modality_section(s, label_column, map_points, queries, k, precision_queries, seed, batch_rows, thumbnail_size)
        for s in sets
    ]
    failures = failure_groups(run, manifest, batch_rows)
    page = render_page(manifest, run, sections, failures, k, time.perf_counter() - started).encode("utf-8")
    write_bytes(out, page, "text/html")
    return {
        "report": out,
        "bytes": len(page),
        "seconds": round(time.perf_counter() - started, 2),
        "run_id": manifest.get("run_id"),
        "status": manifest.get("status"),
        "dead_letters": failures[0],
        "modalities": {
            s.modality: {
                "rows": s.rows,
                "map_points": len(s.map_points),
                "queries": len(s.galleries),
                "label_column": s.label_column,
                f"precision_at_{k}": s.precision.get("overall") if s.precision else None,
            }
            for s in sections
        },
    }


FLAGS = (
    *run_flags(),
    CommandFlag(
        "--out",
        "Where to write the page (local or gs://; default: ./report-RUN_ID.html, never inside the run folder).",
        aliases=("--output",),
        metavar="FILE.html",
    ),
    CommandFlag(
        "--label-column",
        "Passthrough column to colour the map and score precision@k by (default: `label` when the run has one).",
        aliases=("--label-field",),
        metavar="COLUMN",
    ),
    dataclasses.replace(MODALITY_FLAG, help="Report one modality only (default: every modality of the run)."),
    dataclasses.replace(ALLOW_FAILED_FLAG, help="Report on a run whose manifest says it failed its checks."),
    CommandFlag(
        "--map-points",
        "Most points on the map, a seeded sample (default: %(default)s).",
        default=DEFAULT_MAP_POINTS,
        type=int,
        metavar="N",
    ),
    CommandFlag(
        "--queries", "Sampled queries shown with their neighbours (default: %(default)s).", default=DEFAULT_QUERIES, type=int
    ),
    k_flag("Neighbours per query, and the k of precision@k", default=DEFAULT_K),
    CommandFlag(
        "--precision-queries",
        "Sampled queries behind precision@k (default: %(default)s).",
        default=DEFAULT_PRECISION_QUERIES,
        type=int,
        metavar="N",
    ),
    CommandFlag("--thumbnail-size", "Thumbnail edge in pixels (default: %(default)s).", default=DEFAULT_THUMBNAIL, type=int),
    seed_flag("the samples"),
    batch_rows_flag("Rows read per Parquet chunk"),
    json_flag("the summary"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline report`: its `FLAGS`."""
    add_flags(parser, FLAGS)


def main_from_args(args: argparse.Namespace) -> int:
    """Run `report`: the page's path and a few lines on stdout (`--json` for scripts)."""
    run = run_folder(args, "report RUN")
    summary = build_report(
        run,
        args.out,
        args.label_column,
        args.modality,
        args.allow_failed,
        args.map_points,
        args.queries,
        args.k,
        args.precision_queries,
        args.seed,
        args.batch_rows,
        args.thumbnail_size,
    )
    if args.json:
        print_json(summary)
        return 0
    pairs = [("report", summary["report"]), ("size", f"{summary['bytes'] / 1024:,.0f} KB, made in {summary['seconds']:.1f} s")]
    for name, m in summary["modalities"].items():
        line = f"{m['rows']:,} rows, {m['map_points']:,} on the map, {m['queries']} queries shown"
        p = next((v for key, v in m.items() if key.startswith("precision_at_")), None)
        if p is not None:
            line += f", precision@{args.k} {p:.3f} by {m['label_column']}"
        pairs.append((name, line))
    pairs.append(("dead letters", f"{summary['dead_letters']:,}"))
    pairs.append(("open", "in any browser: the file is self-contained (no server, no network)"))
    print(format_fields(pairs))
    return 0
