"""The `evaluate` command: how well a run's embeddings separate the labels of a passthrough column,
or (`--word-similarity FILE --text-model MODEL`) how well a text model's word vectors agree with
human word-similarity scores.

Word similarity: a file of `word1<TAB>word2<TAB>score` lines (`#` lines are comments; spaces also
separate; e.g. SimLex-999, WordSim-353), scored by the Spearman rank correlation between the
cosine similarity of the two words' vectors in the model's `embedding` layer and the human
score, over the pairs whose two words are in the model's vocabulary (the others are counted as
not covered). Every Embedding-layer model qualifies (classify, skipgram, ...).

Embeddings on labels: two measures, printed as a table (`--json`: the full report as JSON):

- leave-one-out precision@1 and precision@k (cosine kNN): for each labelled row, the fraction of
  its k nearest other rows that share its label, averaged over rows. Chance is about
  sum over labels of share**2 (`chance_precision`).
- a linear probe: a softmax (multinomial logistic) regression trained with NumPy on a seeded,
  stratified split of the rows, and its accuracy on the held-out part (beside the majority-label
  accuracy).

The vectors of the evaluated rows are held in memory (n x dimension float32); the n x n
similarities are computed in blocks of `--block-rows` rows. Rows without a label or with an
unusable (null, non-finite or zero) vector are left out and counted. kNN costs n**2 x dimension:
`--max-rows` evaluates a seeded random sample of a very large run.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

import numpy as np

from pipeline.command_flags import CommandFlag, add_flags
from pipeline.tools.common import (
    ToolError,
    format_fields,
    format_table,
    print_json,
    run_folder,
)
from pipeline.tools.flags import (
    ALLOW_FAILED_FLAG,
    MODALITY_FLAG,
    TEXT_MODEL_FLAG,
    UNSAFE_MODEL_LOADING_FLAG,
    batch_rows_flag,
    json_flag,
    k_flag,
    label_field_flag,
    run_flags,
    seed_flag,
)
from pipeline.tools.knn import DEFAULT_BLOCK_ROWS, DEFAULT_K, leave_one_out_neighbours, precision_at_k
from pipeline.tools.store import DEFAULT_BATCH_ROWS, EmbeddingSet, open_embeddings, unit_rows

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "LabelledVectors",
    "load_labelled_vectors",
    "knn_precision",
    "fit_softmax_probe",
    "linear_probe",
    "evaluate_embeddings",
    "format_evaluation",
    "read_word_pairs",
    "spearman",
    "word_similarity",
    "FLAGS",
    "add_arguments",
    "main_from_args",
]

DEFAULT_TEST_FRACTION = 0.2  # rows held out from the linear probe's training (--test-fraction)


@dataclasses.dataclass(frozen=True)
class LabelledVectors:
    """The usable rows: their vectors as stored, labels as class numbers, and the label names."""

    vectors: np.ndarray  # (n, d) float32
    labels: np.ndarray  # (n,) int64 into `classes`
    classes: list[str]
    ids: list[str]
    rows: int  # rows in the run
    skipped_unlabelled: int
    skipped_invalid: int


def load_labelled_vectors(
    embeddings: EmbeddingSet,
    label_field: str,
    max_rows: Optional[int] = None,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> LabelledVectors:
    """The labelled rows with usable vectors (a seeded sample of `max_rows` of them when given)."""
    if label_field not in embeddings.passthrough:
        from transforms.records import embedding_schema

        columns = ", ".join(embeddings.passthrough) or "none"
        if label_field in embedding_schema(embeddings.modality, 1, provenance=True).names:  # `run` refuses it as a passthrough
            raise ToolError(
                f"--label-field {label_field!r} is a column the job writes itself, not a label (passthrough columns: {columns}; "
                "run the job with --passthrough NAME, NAME being the input's label field)"
            )
        raise ToolError(
            f"--label-field {label_field!r} is not a column of the {embeddings.modality} embeddings "
            f"(passthrough columns: {columns}; run the job with --passthrough {label_field})"
        )
    vectors, labels, ids = [], [], []
    rows = unlabelled = invalid = 0
    for batch in embeddings.vector_batches(batch_rows, columns=[label_field]):
        rows += len(batch.ids)
        names = batch.columns[label_field]
        labelled = np.array([v is not None and v != "" for v in names], dtype=bool)
        usable = unit_rows(batch.vectors, batch.valid)[1]
        unlabelled += int((~labelled).sum())
        invalid += int((labelled & ~usable).sum())
        keep = np.flatnonzero(labelled & usable)
        vectors.append(batch.vectors[keep])
        labels += [names[i] for i in keep]
        ids += [batch.ids[i] for i in keep]
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, embeddings.dimension), np.float32)
    if max_rows is not None and len(labels) > max_rows:
        chosen = np.sort(np.random.default_rng(seed).choice(len(labels), max_rows, replace=False))
        matrix = matrix[chosen]
        labels = [labels[i] for i in chosen]
        ids = [ids[i] for i in chosen]
    classes, codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    return LabelledVectors(matrix, codes.astype(np.int64), [str(c) for c in classes], ids, rows, unlabelled, invalid)


def knn_precision(vectors: np.ndarray, labels: np.ndarray, k: int = DEFAULT_K, block_rows: int = DEFAULT_BLOCK_ROWS) -> dict:
    """Leave-one-out cosine kNN precision@1 and precision@k, and what chance would give."""
    n = len(labels)
    if n < 2:
        raise ToolError(f"need at least 2 labelled rows for kNN, got {n}")
    unit = unit_rows(vectors)[0]
    neighbours = leave_one_out_neighbours(unit, max(k, 1), block_rows)
    counts = np.bincount(labels)
    chance = float(((counts * (counts - 1)).sum()) / (n * (n - 1)))  # a random other row shares the label
    return {
        "precision_at_1": precision_at_k(neighbours, labels, 1),
        f"precision_at_{k}": precision_at_k(neighbours, labels, k),
        "k": int(min(k, n - 1)),
        "chance_precision": chance,
    }


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * test_fraction))
        n_test = min(max(n_test, 1), len(members) - 1) if len(members) >= 2 else 0
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_softmax_probe(
    vectors: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    classes: int,
    steps: int = 300,
    learning_rate: float = 0.05,
    l2: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the vectors standardised on the `train` rows, weights, bias) of a softmax regression fitted
    on those rows: full-batch Adam, deterministic. `linear_probe`'s trainer, for callers that pick
    their own rows (e.g. cross-validation)."""
    x = np.asarray(vectors, dtype=np.float64)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std[std < 1e-8] = 1.0
    x = (x - mean) / std
    xt, yt = x[train], np.eye(classes)[labels[train]]
    weights = np.zeros((x.shape[1], classes))
    bias = np.zeros(classes)
    params = [weights, bias]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        error = (_softmax(xt @ weights + bias) - yt) / len(train)
        grads = [xt.T @ error + l2 * weights, error.sum(axis=0)]
        for p, g, m, v in zip(params, grads, moments, squares):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            p -= learning_rate * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
    return x, weights, bias


def linear_probe(
    vectors: np.ndarray,
    labels: np.ndarray,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    steps: int = 300,
    learning_rate: float = 0.05,
    l2: float = 1e-4,
) -> dict:
    """Held-out accuracy of a softmax regression on standardised vectors (full-batch Adam; deterministic)."""
    if not 0 < test_fraction < 1:
        raise ToolError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    classes = int(labels.max()) + 1 if len(labels) else 0
    train, test = _stratified_split(labels, test_fraction, seed)
    if len(test) == 0 or len(np.unique(labels[train])) < 2:
        raise ToolError("the linear probe needs two labels with at least two rows each")
    x, weights, bias = fit_softmax_probe(vectors, labels, train, classes, steps, learning_rate, l2)
    xt = x[train]
    predicted = np.argmax(x[test] @ weights + bias, axis=1)
    train_predicted = np.argmax(xt @ weights + bias, axis=1)
    majority = np.bincount(labels[train], minlength=classes).argmax()
    return {
        "accuracy": float((predicted == labels[test]).mean()),
        "train_accuracy": float((train_predicted == labels[train]).mean()),
        "majority_accuracy": float((labels[test] == majority).mean()),
        "train_rows": int(len(train)),
        "test_rows": int(len(test)),
        "test_fraction": test_fraction,
        "seed": seed,
        "steps": steps,
        "l2": l2,
    }


def evaluate_embeddings(
    embeddings: EmbeddingSet,
    label_field: str,
    k: int = DEFAULT_K,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    max_rows: Optional[int] = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict:
    """Every measure of one modality of a run, as a JSON-able dict."""
    if k < 1:
        raise ToolError(f"-k must be at least 1, got {k}")
    data = load_labelled_vectors(embeddings, label_field, max_rows, seed, batch_rows)
    if len(data.classes) < 2:
        raise ToolError(f"--label-field {label_field!r}: needs at least two different labels, found {len(data.classes)}")
    report = {
        "embeddings": embeddings.output,
        "modality": embeddings.modality,
        "model": embeddings.model.get("name"),
        "label_field": label_field,
        "rows": data.rows,
        "evaluated": int(len(data.labels)),
        "skipped_unlabelled": data.skipped_unlabelled,
        "skipped_invalid": data.skipped_invalid,
        "classes": len(data.classes),
        "class_counts": dict(zip(data.classes, np.bincount(data.labels).tolist())) if len(data.classes) <= 100 else None,
    }
    report.update(knn_precision(data.vectors, data.labels, k, block_rows))
    report["linear_probe"] = linear_probe(data.vectors, data.labels, test_fraction, seed)
    return report


OVERFITTING_GAP = 0.1  # training accuracy this far above the held-out accuracy reads as overfitting


def overfitting_note(probe: dict) -> str:
    """What the probe's training accuracy says beside its held-out accuracy: overfitting only when
    it is more than `OVERFITTING_GAP` above it."""
    gap = probe["train_accuracy"] - probe["accuracy"]
    if gap > OVERFITTING_GAP:
        return f"{gap:.2f} above held-out accuracy: overfitting"
    return "close to held-out accuracy: no overfitting"


def format_evaluation(report: dict) -> str:
    """The report of `evaluate_embeddings` as a few lines and a table of measures against their baselines."""
    k = report["k"]
    probe = report["linear_probe"]
    skipped = report["skipped_unlabelled"] + report["skipped_invalid"]
    counts = report.get("class_counts")
    classes = f"{report['classes']}" + (" (" + ", ".join(f"{name}: {n:,}" for name, n in counts.items()) + ")" if counts else "")
    header = format_fields(
        [
            ("embeddings", f"{report['embeddings']} ({report['modality']}, model {report['model']})"),
            ("label field", report["label_field"]),
            (
                "rows",
                f"{report['rows']:,}, evaluated {report['evaluated']:,}"
                + (
                    f" (skipped {report['skipped_unlabelled']:,} unlabelled, {report['skipped_invalid']:,} unusable vectors)"
                    if skipped
                    else ""
                ),
            ),
            ("classes", classes),
        ]
    )
    chance = report["chance_precision"]
    rows = [
        {
            "measure": "kNN precision@1",
            "value": report["precision_at_1"],
            "baseline": chance,
            "baseline is": "chance: a random other row has the same label",
        },
        {"measure": f"kNN precision@{k}", "value": report[f"precision_at_{k}"], "baseline": chance, "baseline is": "chance"},
        {
            "measure": "linear probe accuracy",
            "value": probe["accuracy"],
            "baseline": probe["majority_accuracy"],
            "baseline is": f"always the majority label ({probe['test_rows']:,} held-out rows)",
        },
        {
            "measure": "linear probe, training rows",
            "value": probe["train_accuracy"],
            "baseline": None,
            "baseline is": f"{probe['train_rows']:,} rows; {overfitting_note(probe)}",
        },
    ]
    return header + "\n\n" + format_table(rows, ["measure", "value", "baseline", "baseline is"])


# ---------------------------------------------------------------------------------------------
# Word similarity


def read_word_pairs(path: str) -> list[tuple[str, str, float]]:
    """(word1, word2, score) of a word-similarity file; a ToolError naming the file and line for a bad line."""
    from transforms.io.fileio import read_bytes

    try:
        text = read_bytes(path).decode("utf-8")
    except OSError as exc:
        raise ToolError(f"--word-similarity {path}: cannot read the file ({type(exc).__name__}: {exc})") from exc
    except UnicodeDecodeError as exc:
        raise ToolError(f"--word-similarity {path}: not UTF-8 text ({exc.reason})") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            pairs.append((parts[0].strip(), parts[1].strip(), float(parts[2])))
        except (IndexError, ValueError):
            raise ToolError(
                f"--word-similarity {path}:{number}: expected word1<TAB>word2<TAB>score, got {line.strip()[:80]!r}"
            ) from None
    if not pairs:
        raise ToolError(f"--word-similarity {path}: no word pair in the file")
    return pairs


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(unique) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); NaN for fewer than 2 values or a constant side."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a) - (len(a) + 1) / 2, _ranks(b) - (len(b) + 1) / 2
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator else float("nan")


def word_similarity(words, pairs: Sequence[tuple[str, str, float]]) -> dict:
    """Spearman of cosine(word1, word2) against the human score, over the pairs the vocabulary covers."""
    from pipeline.tools.store import unit_rows

    index = {word: i for i, (word, is_word) in enumerate(zip(words.vocabulary, words.word_rows)) if is_word}  # no pair
    unit, valid = unit_rows(words.vectors)
    model, human, missing = [], [], []
    for first, second, score in pairs:
        a, b = index.get(first.lower()), index.get(second.lower())
        if a is None or b is None or not (valid[a] and valid[b]):
            missing.append(f"{first}/{second}")
            continue
        model.append(float(unit[a] @ unit[b]))
        human.append(score)
    if len(model) < 2:
        raise ToolError(
            f"--word-similarity: only {len(model)} of the {len(pairs)} pairs have both words in the model's vocabulary"
        )
    return {
        "spearman": spearman(model, human),
        "pairs": len(pairs),
        "covered_pairs": len(model),
        "missing_examples": missing[:10],
    }


# ---------------------------------------------------------------------------------------------
# Command line


FLAGS = (
    *run_flags(required=False),
    label_field_flag("Passthrough column holding each row's label (with RUN)."),
    CommandFlag(
        "--word-similarity",
        "Instead: score the word vectors of --text-model on this word1<TAB>word2<TAB>score file (Spearman), e.g. SimLex-999.",
        metavar="FILE",
    ),
    dataclasses.replace(
        TEXT_MODEL_FLAG, help="The .keras text model whose word vectors --word-similarity scores.", required=False
    ),
    UNSAFE_MODEL_LOADING_FLAG,
    MODALITY_FLAG,
    ALLOW_FAILED_FLAG,
    k_flag("k of precision@k, besides precision@1"),
    CommandFlag(
        "--test-fraction",
        "Rows held out from the linear probe's training (default: %(default)s).",
        default=DEFAULT_TEST_FRACTION,
        type=float,
    ),
    seed_flag("the probe's split and of --max-rows' sample"),
    CommandFlag("--max-rows", "Evaluate a seeded random sample of this many labelled rows (default: all).", type=int),
    CommandFlag(
        "--block-rows",
        "Query rows per block of the similarity computation (default: %(default)s).",
        default=DEFAULT_BLOCK_ROWS,
        type=int,
    ),
    batch_rows_flag("Rows read per Parquet chunk"),
    json_flag("the full report"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline evaluate`: its `FLAGS`."""
    add_flags(parser, FLAGS)


def main_from_args(args: argparse.Namespace) -> int:
    """Run `evaluate`: a table on stdout (`--json`: the full report)."""
    if args.word_similarity or args.text_model:
        if not (args.word_similarity and args.text_model):
            raise ToolError("--word-similarity FILE and --text-model PATH go together")
        if run_folder(args, required=False):
            raise ToolError("give either a run folder RUN (with --label-field) or --word-similarity with --text-model, not both")
        from pipeline.tools.word_vectors import load_word_vectors

        words = load_word_vectors(args.text_model, args.unsafe_model_loading)
        report = {"text_model": args.text_model, "word_similarity": args.word_similarity}
        report.update(word_similarity(words, read_word_pairs(args.word_similarity)))
        if args.json:
            print_json(report)
        else:
            print(
                format_fields(
                    [
                        ("text model", args.text_model),
                        (
                            "word pairs",
                            f"{args.word_similarity}: {report['covered_pairs']:,} of {report['pairs']:,} in the vocabulary",
                        ),
                        ("Spearman", report["spearman"]),
                    ]
                )
            )
        return 0
    run = run_folder(args, required=False)
    if not run or not args.label_field:
        raise ToolError(
            "give the run folder RUN (or --run RUN) and --label-field NAME (or --word-similarity FILE with --text-model PATH)"
        )
    if args.max_rows is not None and args.max_rows < 2:
        raise ToolError(f"--max-rows must be at least 2, got {args.max_rows}")
    if args.block_rows < 1:
        raise ToolError(f"--block-rows must be at least 1, got {args.block_rows}")
    embeddings = open_embeddings(run, args.modality, allow_failed=args.allow_failed)
    report = evaluate_embeddings(
        embeddings, args.label_field, args.k, args.test_fraction, args.seed, args.max_rows, args.block_rows, args.batch_rows
    )
    if args.json:
        print_json(report)
    else:
        print(format_evaluation(report))
    return 0
