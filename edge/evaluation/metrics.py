"""Verification metrics in plain numpy: LFW 10-fold accuracy, all-pairs scores, TAR at a fixed FAR."""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising accuracy of `score > t`; the middle of tied optima, so it is not edge-biased."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order]
    n = len(s)
    # Cut k: the k lowest scores are called "different".  Only cuts between distinct values are real.
    neg_below = np.concatenate(([0], np.cumsum(~y)))
    pos_above = y.sum() - np.concatenate(([0], np.cumsum(y)))
    correct = neg_below + pos_above
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] > s[:-1]
    correct = np.where(valid, correct, -1)
    best = np.flatnonzero(correct == correct.max())
    k = int(best[len(best) // 2])
    lo = s[k - 1] if k > 0 else -np.inf
    hi = s[k] if k < n else np.inf
    return float((lo + hi) / 2) if np.isfinite(lo) and np.isfinite(hi) else float(lo)


def ten_fold_accuracy(scores: np.ndarray, same: np.ndarray, n_folds: int = 10) -> tuple[float, float]:
    """LFW protocol: contiguous folds in file order; each fold judged at the threshold best on the others.

    Higher score means "more alike".  Scores may be -inf (e.g. no face found: always "different"),
    never NaN.  Returns (mean, std) of the per-fold accuracies.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if scores.shape != same.shape or scores.ndim != 1:
        raise ValueError("scores and same must be 1-D and the same length")
    if np.isnan(scores).any():
        raise ValueError("NaN score; map pairs without a face to -inf explicitly")
    if len(scores) < n_folds:
        raise ValueError(f"need at least {n_folds} pairs")
    accs = []
    for test in np.array_split(np.arange(len(scores)), n_folds):
        train = np.ones(len(scores), dtype=bool)
        train[test] = False
        t = _best_threshold(scores[train], same[train])
        accs.append(float(np.mean((scores[test] > t) == same[test])))
    return float(np.mean(accs)), float(np.std(accs))


def all_pair_scores(
    emb: np.ndarray,
    labels: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    metric: Literal["cosine", "euclidean"] = "cosine",
    block_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every pair i<j of valid images, split into (genuine, impostor).

    Cosine (rows are re-normalised) or negated Euclidean distance, so higher is always more alike.
    Row blocks keep memory at block_size x N; output order is row-major i<j whatever the block size.
    """
    emb = np.asarray(emb, dtype=np.float32)
    labels = np.asarray(labels)
    keep = np.ones(len(emb), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    x, lab = emb[keep], labels[keep]
    if not np.isfinite(x).all():
        raise ValueError("non-finite embedding among the valid rows")
    sq = np.einsum("ij,ij->i", x, x)
    if metric == "cosine":
        x = x / np.sqrt(sq)[:, None]
    elif metric != "euclidean":
        raise ValueError(f"unknown metric {metric!r}")
    genuine, impostor = [], []
    n = len(x)
    for b0 in range(0, n, block_size):
        b1 = min(b0 + block_size, n)
        dots = x[b0:b1] @ x[b0:].T  # (rows, n - b0): column c is image b0 + c
        s = dots if metric == "cosine" else -np.sqrt(np.maximum(sq[b0:b1, None] + sq[None, b0:] - 2 * dots, 0))
        rows, cols = np.triu_indices(b1 - b0, k=1, m=n - b0)
        vals = s[rows, cols]
        is_same = lab[b0 + rows] == lab[b0 + cols]
        genuine.append(vals[is_same])
        impostor.append(vals[~is_same])
    empty = np.zeros(0, dtype=np.float32)
    return np.concatenate([empty, *genuine]), np.concatenate([empty, *impostor])


class TarAtFar(NamedTuple):
    """Operating point; `at_floor` means FAR was below 1/len(impostor), so the threshold is the max impostor."""

    tar: float
    threshold: float
    at_floor: bool


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> TarAtFar:
    """Threshold that at most `far` of impostors exceed (strictly), and the fraction of genuine above it."""
    impostor = np.asarray(impostor, dtype=np.float64)
    genuine = np.asarray(genuine, dtype=np.float64)
    if len(impostor) == 0 or not 0 <= far <= 1:
        raise ValueError("need impostor scores and 0 <= far <= 1")
    k = int(np.floor(far * len(impostor) + 1e-9))  # impostors allowed strictly above the threshold
    if k >= len(impostor):
        return TarAtFar(1.0, -np.inf, False)
    threshold = float(-np.partition(-impostor, k)[k])  # (k+1)-th highest
    return TarAtFar(float(np.mean(genuine > threshold)), threshold, k == 0)


def fmr_at(impostor: np.ndarray, threshold: float) -> float:
    """Fraction of impostor scores >= threshold (the product's FMR definition, ties count as matches)."""
    return float(np.mean(np.asarray(impostor) >= threshold))
