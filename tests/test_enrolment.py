"""The comparison of ways to score a user of several photos, on a population with noisy photos."""

from __future__ import annotations

import numpy as np

from edge.evaluation.enrolment import COHORT_TOP, cohort_statistics, compare_user_scores


def population(people: int = 120, photos: int = 4, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(people, dim))
    labels = np.repeat(np.arange(people), photos)
    vectors = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    vectors = vectors + rng.normal(scale=0.25, size=vectors.shape)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_one_photo_users_score_the_same_every_way() -> None:
    result = compare_user_scores(*population(), 1)
    cosine_scores = [r for name, r in result.items() if "norm" not in name]  # the rest rescale per user
    assert len(cosine_scores) == 4 and len({tuple(r.values()) for r in cosine_scores}) == 1


def test_the_centroid_averages_away_photo_noise() -> None:
    result = compare_user_scores(*population(), 3)
    assert result["centroid"]["genuine"] == 120 * 4 * 1  # each of 4 subsets against the one photo left
    assert result["centroid"]["0.001"] > result["best face"]["0.001"]


def test_a_users_cohort_never_holds_its_own_person_or_the_probes() -> None:
    rng = np.random.default_rng(0)
    person = np.repeat(np.arange(60), 3)
    cosines = rng.uniform(-1, 1, len(person))
    stats = cohort_statistics(cosines, person, owner=7, n_people=60)
    for probe in (7, 8, 30):
        cohort = cosines[(person != 7) & (person != probe)]
        mean, sd = stats["all"][0][probe], stats["all"][1][probe]
        assert abs(mean - cohort.mean()) < 1e-12 and abs(sd - cohort.std()) < 1e-12
        top = np.sort(cohort)[::-1][:COHORT_TOP]
        assert abs(stats["top"][0][probe] - top.mean()) < 1e-12 and abs(stats["top"][1][probe] - top.std()) < 1e-12
