"""Which skip-gram window (and epochs) the AG News topic probe's cross-validation chooses (issue 20).

    python -m benchmarks.topic_window [--seeds 10,11] [--settings 5:5,10:5,5:10] [--models DIR] [--json OUT]

Why: with word2vec's window 5, `skipgram` + sif pooling reached a 3-seed median of 0.794 on the
topic probe against a target of 0.80. Wider windows make word vectors more topical (and less
"similar" in SimLex's sense), so the window is the natural setting for search embeddings. Choosing
it on the 1,600 reported test rows, or with the reported seeds 0-2, would overfit the figure; this
script chooses it the honest way, as benchmarks/sif_sweep.py chose SIF's settings: each setting
(WINDOW:EPOCHS) trains text_quality's topic model (128-d, WikiText-2 train, sif pooling) with
seeds other than the reported ones (default 10 and 11), embeds AG News dev with the job's embedder,
and scores it by repeated stratified 5-fold cross-validation inside the probe's 4,000 training rows
only (`sif_sweep.cross_validate`: `linear_probe`'s own trainer). The test rows are never read.

`--models DIR` reuses models saved there as `topic-w{WINDOW}-e{EPOCHS}-s{SEED}.keras` (and saves
the ones it trains there); without it they live in a temporary folder.

Result (2026-12-05, benchmarks/results/topic-window-20261205.json): see docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks.text_quality import AG_TEST_ROWS, ROOT, TOPIC_DIM, _ag_news, _skipgram_flags, _train


def _setting(text: str) -> tuple[int, int]:
    window, epochs = text.split(":")
    return int(window), int(epochs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="10,11", help="Skip-gram seeds (not 0-2: those are text_quality's reported ones).")
    parser.add_argument("--settings", default="5:5,10:5,5:10", help="Comma-separated WINDOW:EPOCHS pairs.")
    parser.add_argument("--models", help="Folder of trained models to reuse (and to save new ones in).")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "topic-window.json"), help="Results file.")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.sif_sweep import _embed, cross_validate
    from pipeline.tools.evaluate import _stratified_split

    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [_setting(s) for s in args.settings.split(",")]
    texts, labels = _ag_news()
    train_rows, _ = _stratified_split(labels, AG_TEST_ROWS / len(labels), 0)  # the probe's split; its test rows unused
    rows = []
    with tempfile.TemporaryDirectory(prefix="topic-window-") as scratch:
        folder = args.models or scratch
        os.makedirs(folder, exist_ok=True)
        for window, epochs in settings:
            for seed in seeds:
                path = os.path.join(folder, f"topic-w{window}-e{epochs}-s{seed}.keras")
                row = {"window": window, "epochs": epochs, "seed": seed}
                if not os.path.exists(path):
                    started = time.monotonic()
                    flags = _skipgram_flags(seed, TOPIC_DIM, window, epochs)
                    _train(*flags, "--pooling", "sif", "--output", path)
                    row["training_seconds"] = round(time.monotonic() - started, 1)
                x = _embed(path, texts)[train_rows]
                usable = np.isfinite(x).all(axis=1)
                row.update(cross_validate(x[usable], labels[train_rows][usable]))
                rows.append(row)
                print(f"window {window}, {epochs} epochs, seed {seed}: CV {row['cv_accuracy']:.4f}", file=sys.stderr)
    summary = []
    for window, epochs in settings:
        mine = [r for r in rows if (r["window"], r["epochs"]) == (window, epochs)]
        summary.append(
            {"window": window, "epochs": epochs, "cv_accuracy_mean_over_seeds": statistics.mean(r["cv_accuracy"] for r in mine)}
        )
    out = {"seeds": seeds, "train_rows": len(train_rows), "summary": summary, "runs": rows}
    print("| window | epochs | CV accuracy (mean over seeds) |\n|---|---|---|")
    for s in summary:
        print(f"| {s['window']} | {s['epochs']} | {s['cv_accuracy_mean_over_seeds']:.4f} |")
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
