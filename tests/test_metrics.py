"""Verification metrics on synthetic scores, the faces-dev loader, and a quick peer sanity check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edge.evaluation.dataset import FaceSet, load_faceset
from edge.evaluation.metrics import all_pair_scores, fmr_at, tar_at_far, ten_fold_accuracy


@pytest.fixture(scope="module")
def faceset(faces_dev: Path) -> FaceSet:
    """faces-dev loaded; conftest's `faces_dev` skips when EDGE_FACE_DATA has no faces-dev."""
    return load_faceset(faces_dev)


def test_ten_fold_separable_scores_are_perfect() -> None:
    rng = np.random.default_rng(0)
    same = rng.random(1000) < 0.5
    scores = np.where(same, rng.uniform(0.6, 1.0, 1000), rng.uniform(-1.0, 0.4, 1000))
    mean, std = ten_fold_accuracy(scores, same)
    assert mean == 1.0 and std == 0.0


def test_ten_fold_uninformative_scores_are_chance() -> None:
    rng = np.random.default_rng(1)
    same = rng.random(4000) < 0.5
    mean, _ = ten_fold_accuracy(rng.normal(size=4000), same)
    assert 0.45 < mean < 0.56


def test_ten_fold_uses_held_out_threshold_and_minus_inf() -> None:
    # Pairs without a face score -inf and are always "different": 10 such positives cost 1% exactly.
    same = np.tile([True, False], 500)
    scores = np.where(same, 1.0, 0.0)
    scores[np.flatnonzero(same)[::50]] = -np.inf
    mean, _ = ten_fold_accuracy(scores, same)
    assert mean == pytest.approx(0.99)
    with pytest.raises(ValueError, match="NaN"):
        ten_fold_accuracy(np.where(same, np.nan, 0.0), same)


def test_tar_at_far_hand_computed() -> None:
    impostor = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    genuine = np.array([0.5, 0.85, 0.95, 0.7])
    tar, thr, at_floor = tar_at_far(genuine, impostor, 0.2)  # 2 impostors may lie above: 0.9, 1.0
    assert (tar, thr, at_floor) == (0.5, 0.8, False)
    assert fmr_at(impostor, thr) == pytest.approx(0.3)  # FMR counts ties: 0.8 itself matches
    assert tar_at_far(genuine, impostor, 0.1) == (0.25, 0.9, False)  # only 0.95 is above 0.9
    assert tar_at_far(genuine, impostor, 0.05) == (0.0, 1.0, True)  # FAR below 1/10: max impostor
    assert tar_at_far(genuine, impostor, 0.25).threshold == 0.8  # floor(2.5) = 2
    assert fmr_at(impostor, 0.55) == 0.5


def test_all_pair_scores_counts_and_blocks() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(40), rng.integers(1, 6, 40))
    n = len(labels)
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    valid = rng.random(n) > 0.1
    m, lab = int(valid.sum()), labels[valid]
    n_genuine = sum(k * (k - 1) // 2 for k in np.unique(lab, return_counts=True)[1])

    g, i = all_pair_scores(emb, labels, valid)
    assert len(g) + len(i) == m * (m - 1) // 2
    assert len(g) == n_genuine
    x = emb[valid]
    brute = x @ x.T
    iu = np.triu_indices(m, k=1)
    same = lab[iu[0]] == lab[iu[1]]
    assert np.allclose(g, brute[iu][same], atol=1e-6)
    assert np.allclose(i, brute[iu][~same], atol=1e-6)
    for block in (1, 7, 1000):
        g2, i2 = all_pair_scores(emb, labels, valid, block_size=block)
        assert np.allclose(g2, g, atol=1e-6) and np.allclose(i2, i, atol=1e-6)

    ge, ie = all_pair_scores(2 * emb, labels, valid, metric="euclidean", block_size=5)
    d = -np.linalg.norm(2 * x[iu[0]] - 2 * x[iu[1]], axis=1)
    assert np.allclose(ge, d[same], atol=1e-4) and np.allclose(ie, d[~same], atol=1e-4)


def test_load_faces_dev(faceset: FaceSet) -> None:
    assert len(faceset.paths) == 1345
    assert len(faceset.names) == 300
    assert faceset.pairs.shape == (2124, 2)
    assert faceset.same.sum() == 1062
    assert faceset.paths == sorted(faceset.paths)
    left, right = faceset.pairs[0]
    assert faceset.paths[left].name == "David_Wells_0005.jpg"
    assert faceset.paths[right].name == "David_Wells_0006.jpg"


@pytest.mark.slow
def test_peer_separates_same_from_different(faceset: FaceSet) -> None:
    if importlib.util.find_spec("face_recognition") is None:
        pytest.skip("face_recognition (optional `peer` extra) is not installed")
    from edge.evaluation.peer import cosine_scores, embed_with_face_recognition, euclidean_scores

    pairs, same = faceset.pairs[:20], faceset.same[:20]
    used = np.unique(pairs)
    emb = np.full((len(faceset.paths), 128), np.nan, dtype=np.float32)
    emb[used], timings = embed_with_face_recognition([faceset.paths[k] for k in used])
    assert timings["n_photos"] == len(used) and timings["total_ms"] > 0
    ok = np.isfinite(emb[pairs]).all(axis=(1, 2))
    assert ok.sum() >= 18
    for rule in (euclidean_scores, cosine_scores):
        s = rule(emb, pairs[ok])
        assert s[same[ok]].mean() > s[~same[ok]].mean()
        assert np.median(s[same[ok]]) > np.max(s[~same[ok]]) - 0.1
    assert np.all(-euclidean_scores(emb, pairs[ok & same]) < 0.6 + 0.1)
