"""The comparison of ways to score a user of several photos, on a population with noisy photos."""

from __future__ import annotations

import numpy as np

from edge.evaluation.enrolment import compare_user_scores


def population(people: int = 120, photos: int = 4, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(people, dim))
    labels = np.repeat(np.arange(people), photos)
    vectors = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    vectors = vectors + rng.normal(scale=0.25, size=vectors.shape)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_one_photo_users_score_the_same_every_way() -> None:
    result = compare_user_scores(*population(), 1)
    assert len({tuple(r.values()) for r in result.values()}) == 1


def test_the_centroid_averages_away_photo_noise() -> None:
    result = compare_user_scores(*population(), 3)
    assert result["centroid"]["genuine"] == 120 * 4 * 1  # each of 4 subsets against the one photo left
    assert result["centroid"]["0.001"] > result["best face"]["0.001"]
