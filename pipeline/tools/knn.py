"""Cosine top-k arithmetic with NumPy: a running top-k over streamed chunks, and leave-one-out kNN.

Ordering is deterministic everywhere: higher score first, and among equal scores the lower global
position first, so a streamed search gives exactly the brute-force answer whatever the chunk size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["DEFAULT_K", "DEFAULT_BLOCK_ROWS", "top_k", "RunningTopK", "leave_one_out_neighbours", "precision_at_k"]

DEFAULT_K = 10  # neighbours (-k of neighbors, evaluate, similar-words)
DEFAULT_BLOCK_ROWS = 1024  # query rows per block of an n x n similarity (evaluate --block-rows)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite scores, best first (ties: lower index first)."""
    scores = np.asarray(scores)
    candidates = np.flatnonzero(np.isfinite(scores))
    if len(candidates) > k:
        values = scores[candidates]
        kth = np.partition(values, len(values) - k)[len(values) - k]  # the k-th largest
        above = candidates[values > kth]
        ties = candidates[values == kth][: k - len(above)]
        candidates = np.concatenate([above, ties])
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order]


class RunningTopK:
    """The k best (score, position, row) of one query over a stream of scored chunks."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self.scores = np.empty(0, dtype=np.float64)
        self.positions = np.empty(0, dtype=np.int64)
        self.rows: list = []
        self.chunks = 0

    def push(self, scores: np.ndarray, positions: np.ndarray, rows: Optional[Sequence] = None) -> None:
        """Merge one chunk: its scores (non-finite ones are ignored), global positions and optional row payloads."""
        self.chunks += 1
        best = top_k(scores, self.k)
        merged_scores = np.concatenate([self.scores, np.asarray(scores, dtype=np.float64)[best]])
        merged_positions = np.concatenate([self.positions, np.asarray(positions, dtype=np.int64)[best]])
        merged_rows = self.rows + ([rows[i] for i in best] if rows is not None else [None] * len(best))
        order = np.lexsort((merged_positions, -merged_scores))[: self.k]
        self.scores, self.positions = merged_scores[order], merged_positions[order]
        self.rows = [merged_rows[i] for i in order]


def leave_one_out_neighbours(unit: np.ndarray, k: int, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """For each row of an L2-normalised matrix, its k most similar other rows (best first), as (n, k) indices.

    The n x n similarity is computed `block_rows` queries at a time: memory is block_rows x n.
    """
    n = len(unit)
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"leave-one-out neighbours need at least 2 rows and k >= 1, got {n} rows and k={k}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        sims = unit[start:stop] @ unit.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not one's own neighbour
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # k <= n - 1
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(part, order, axis=1)
    return out


def precision_at_k(neighbours: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean fraction of each row's first k neighbours that share its label."""
    k = min(k, neighbours.shape[1])
    same = labels[neighbours[:, :k]] == labels[:, None]
    return float(same.mean())
