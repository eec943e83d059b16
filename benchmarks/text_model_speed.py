"""Job speed of each text model of the same size (issue 20): text records/s of `python -m pipeline run`.

    python -m benchmarks.text_model_speed [--records 200000] [--rounds 3] [--dim 128] [--models ABCD] [--json OUT]

Four models of `--dim` dimensions, all made by `train-text` (`--models`: the letters to run; A is the base):

- A `classify`: today's model, mean pooling, trained on rt-polarity (the sentiment model);
- B `skipgram` mean: word vectors trained on WikiText-2 train, mean pooling;
- C `skipgram` sif: the same word vectors as B with SIF pooling (B is C's vectors re-pooled);
- D `classify --ngrams 2`: A with pairs of adjacent words as tokens too (the same 64 tokens hold a
  text's words, then its pairs; a vocabulary of up to 200,000 words and pairs). The results of
  2026-12-05T00:45 and T00:50 were measured with the 128 tokens --ngrams 2 had at first.

Speed does not depend on how well the vectors are trained, so B/C train one skip-gram epoch only
(`--skipgram-epochs 1`); the vocabulary is the full one (min_count 5: ~20,000 words, as the quality
benchmark's models; A's is rt-polarity's, capped at 20,000). The input is the benchmarks' generated
JSONL (`benchmarks.inputs.text_set`: 4-30 words of rt-polarity sentences, 8 files). Each round runs
the job once per model, interleaved (A B C D A B C D ...), each in its own process (`python -m pipeline
run`, DirectRunner, 1 worker, default flags): wall seconds of the whole command, and the rate
`records / seconds` (start-up, ~5-10 s, included: a common offset). The ratios are of the medians
over the rounds, against A. Target (issue 20): B, C and D within 10 % of A.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "benchmarks" / "work" / "text-model-speed"


def _train_text(*flags: str) -> None:
    cmd = [sys.executable, "-m", "pipeline", "train-text", *flags]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def make_models(dim: int, letters: str = "ABCD") -> dict[str, str]:
    """The four models (made once per dimension, kept under benchmarks/work/)."""
    from benchmarks.text_quality import _rt_flags, _same_vectors_mean_pooled

    folder = WORK / f"models-{dim}"
    folder.mkdir(parents=True, exist_ok=True)
    models = {
        "A classify (mean)": folder / "classify-mean.keras",
        "B skipgram (mean)": folder / "skipgram-mean.keras",
        "C skipgram (sif)": folder / "skipgram-sif.keras",
        "D classify --ngrams 2 (mean)": folder / "classify-pairs-mean.keras",
    }
    a, b, c, d = models.values()
    if not a.exists():
        _train_text(*_rt_flags(), "--embedding-dim", str(dim), "--output", str(a))
    if not d.exists() and "D" in letters:
        _train_text(*_rt_flags(), "--ngrams", "2", "--embedding-dim", str(dim), "--output", str(d))
    if not c.exists() and ("B" in letters or "C" in letters):
        wikitext = SHARED / "text" / "wikitext-2" / "train.txt"
        _train_text(
            "--objective", "skipgram", "--pooling", "sif", "--unlabelled", str(wikitext), "--vocab-size", "1000000",
            "--embedding-dim", str(dim), "--skipgram-epochs", "1", "--output", str(c),
        )  # fmt: skip
    if not b.exists() and "B" in letters:
        _same_vectors_mean_pooled(str(c), str(b))
    return {name: str(path) for name, path in models.items() if name[0] in letters}


def run_job(model: str, pattern: str, output: str, records: int) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "run", "--text-input", pattern, "--text-model", model, "--output", output]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    manifest = json.loads((pathlib.Path(output) / "_MANIFEST.json").read_text())
    shutil.rmtree(output, ignore_errors=True)
    return {"seconds": round(seconds, 2), "records_per_second": round(records / seconds), "counts": manifest.get("counts")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="JSONL records per job run.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (A B C D per round).")
    parser.add_argument("--models", default="ABCD", help="Which models to run, by letter (A, the base, always runs).")
    parser.add_argument("--dim", type=int, default=128, help="Dimension of the three models.")
    parser.add_argument(
        "--json", default=None, help="Results file (default benchmarks/results/text-model-speed-<UTC time>.json)."
    )
    args = parser.parse_args(argv)
    from benchmarks.inputs import text_set

    models = make_models(args.dim, "A" + args.models.upper())
    pattern = text_set(SHARED, ROOT / "benchmarks" / "work", args.records)
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for round_number in range(args.rounds):
        for name, model in models.items():
            result = run_job(model, pattern, str(WORK / "out"), args.records)
            runs[name].append(result)
            print(
                f"round {round_number + 1} {name}: {result['seconds']} s, {result['records_per_second']:,} records/s",
                file=sys.stderr,
            )
    medians = {name: statistics.median(r["seconds"] for r in rows) for name, rows in runs.items()}
    base = medians["A classify (mean)"]
    summary = {
        name: {
            "median_seconds": medians[name],
            "records_per_second": round(args.records / medians[name]),
            "speed_vs_A": round(base / medians[name], 3),
        }
        for name in models
    }
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "records": args.records,
        "dim": args.dim,
        "rounds": args.rounds,
        "load_average_at_end": os.getloadavg(),
        "models": models,
        "summary": summary,
        "runs": runs,
    }
    out = args.json or str(
        ROOT / "benchmarks" / "results" / f"text-model-speed-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    )
    pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print("| model | median s | records/s | speed vs A |\n|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['median_seconds']:.1f} | {row['records_per_second']:,} | {row['speed_vs_A']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
