"""Person-disjoint cross-validated calibration: folds by person, the margin, the intervals, users of n faces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge.evaluation.calibrate import (
    CV_FOLDS,
    CV_REPEATS,
    CV_SEED,
    USER_FACES,
    CutOffSpread,
    ImpostorPairs,
    clopper_pearson,
    cross_validated_calibration,
    depth,
    estimate_margin,
    fit_calibration,
    fit_plain,
    fmr_report,
    held_out_rounds,
    knot_similarities,
    out_of_fold_similarity,
    person_folds,
)
from edge.similarity import SimilarityCalibration

CALIBRATIONS = Path(__file__).resolve().parents[1] / "models" / "calibration"


def _sf(z: np.ndarray) -> np.ndarray:
    """Standard normal upper tail."""
    return np.array([0.5 * math.erfc(v / math.sqrt(2)) for v in np.atleast_1d(z)])


def population(seed: int, people: int = 200, photos: int = 4, dim: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of `people` people: some look alike (nearby centres), which makes impostor tails
    depend on who is in the sample, as with real faces."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(people), photos)
    vectors = centres[labels] + rng.normal(scale=0.35, size=(len(labels), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def pairs() -> ImpostorPairs:
    return ImpostorPairs.from_vectors(*population(1))


def test_impostor_pairs_are_every_different_person_pair(pairs: ImpostorPairs) -> None:
    assert len(pairs.cosines) == (800 * 799) // 2 - 200 * 6
    assert np.all(pairs.person_a != pairs.person_b)
    assert np.all(np.diff(pairs.cosines) >= 0)


def test_folds_are_by_person_and_every_pair_is_scored_once_by_a_fit_without_its_people(pairs: ImpostorPairs) -> None:
    folds = person_folds(pairs, 10, seed=3)
    assert sorted(np.bincount(folds)) == [20] * 10  # each person in exactly one fold
    scored = np.zeros(len(pairs.cosines), dtype=int)
    for fit, score in held_out_rounds(pairs, folds, 10):
        fitted_people = np.union1d(pairs.person_a[fit], pairs.person_b[fit])
        scored_people = np.union1d(pairs.person_a[score], pairs.person_b[score])
        assert not np.intersect1d(fitted_people, scored_people).size
        assert len(fitted_people) == 160
        scored += score
    assert np.all(scored == 1)


def test_a_margin_moves_each_knot_to_a_rarer_fmr(pairs: ImpostorPairs) -> None:
    plain, _ = fit_calibration(pairs.cosines)
    shifted, _ = fit_calibration(pairs.cosines, margin=np.full(len(knot_similarities()), 4.0))
    for s in (50.0, 60.0, 70.0, 80.0):
        assert shifted.min_cosine(s) == pytest.approx(plain.min_cosine(s + 4.0), abs=1e-6)
    with pytest.raises(ValueError, match="non-decreasing"):
        fit_calibration(pairs.cosines, margin=np.linspace(3.0, 0.0, len(knot_similarities())))


def test_the_margin_is_how_far_fitted_curves_over_promise_on_other_people(pairs: ImpostorPairs) -> None:
    def over_promising(subset: ImpostorPairs) -> SimilarityCalibration:
        """A fit that claims 3 Similarity points more than the plain fit."""
        plain = fit_plain(subset)
        keep = np.array(plain.similarities) + 3.0 < 100.0
        return SimilarityCalibration(tuple(np.array(plain.cosines)[keep]),
                                     tuple(np.array(plain.similarities)[keep] + 3.0))

    honest = estimate_margin(pairs, repeats=2)
    inflated = estimate_margin(pairs, repeats=2, fit=over_promising)
    knots = knot_similarities()
    measured = (knots >= 40) & (knots <= honest.measured_up_to)  # at 30 every pair matches whatever the curve
    shift = inflated.points[measured] - honest.points[measured]
    assert shift == pytest.approx(np.full(len(shift), 3.0), abs=0.11)
    assert np.all(np.diff(honest.points) >= 0) and np.all(honest.points >= 0)


def test_the_cut_offs_spread_is_recovered_and_its_margin_keeps_the_promise_deeper_than_measured() -> None:
    """Out-of-fold FMR as a cut-off spreading like a location-scale estimate delivers it, measured
    only from Similarity 50 to 76: the fit finds the spread, and the margin it implies at 80 and 90
    brings the mean FMR on unseen people back to nominal."""
    true = CutOffSpread(a=0.002, b=0.015, z0=2.6)
    levels = np.arange(50.0, 76.1, 2.0)
    z = depth(levels)
    delivered = _sf(z / np.sqrt(1 + true.tau2(z)))
    fitted = CutOffSpread.fit(levels, delivered, np.full(len(levels), 20.0))
    assert (fitted.a, fitted.b, fitted.z0) == pytest.approx((true.a, true.b, true.z0), rel=0.05, abs=1e-3)
    knots = np.array([60.0, 70.0, 80.0, 90.0])
    margin = fitted.margin(knots)
    z_g = depth(knots + margin)
    assert _sf(z_g / np.sqrt(1 + true.tau2(z_g))) == pytest.approx(10 ** ((30 - knots) / 10), rel=0.02)
    assert np.all(np.diff(np.diff(margin)) > 0)  # faster than linearly with depth


def test_the_spread_is_never_negative_even_where_curves_undershoot() -> None:
    levels = np.arange(50.0, 72.1, 2.0)
    fitted = CutOffSpread.fit(levels, 0.8 * 10 ** ((30 - levels) / 10), np.full(len(levels), 20.0))
    assert fitted.a >= 0 and fitted.b >= 0
    assert np.all(fitted.margin(knot_similarities()) >= 0)


def test_the_published_curve_is_the_fit_with_the_margin_built_in(pairs: ImpostorPairs) -> None:
    published, report = cross_validated_calibration(pairs, repeats=2)
    margin = np.array(report["margin"]["points"])
    assert published == fit_calibration(pairs.cosines, margin=margin)[0]
    knots = knot_similarities()
    deeper = knots > report["margin"]["measured_up_to"]
    spread = CutOffSpread(**report["margin"]["spread"])
    assert np.all(margin[deeper] >= np.round(spread.margin(knots[deeper]), 2))  # beyond the data, the model
    assert report["margin"]["repeats"] == 2 and report["margin"]["folds"] == CV_FOLDS


def test_out_of_fold_similarity_comes_from_other_people(pairs: ImpostorPairs) -> None:
    oof = out_of_fold_similarity(pairs, fit_plain, 5, seed=0)
    assert np.isfinite(oof).all()
    in_sample = fit_plain(pairs).similarity(pairs.cosines)
    assert not np.allclose(oof, in_sample)  # scored by curves that never saw the pair's people


def test_fmr_report_counts_and_intervals(pairs: ImpostorPairs) -> None:
    similarity = fit_plain(pairs).similarity(pairs.cosines)
    report = fmr_report(pairs, [similarity], (60.0, 70.0), n_boot=300)
    for level, row in report.items():
        hits = int(np.sum(similarity >= float(level)))
        assert row["false_matches"] == hits and row["pairs"] == len(similarity)
        lo, hi = row["bootstrap"]
        assert lo <= row["fmr"] <= hi
        lo, hi = row["clopper_pearson"]
        assert lo < row["fmr"] < hi
        # whole people resampled: wider than pairs treated as independent
        assert row["bootstrap"][1] - row["bootstrap"][0] > hi - lo


def test_clopper_pearson_matches_the_exact_binomial_interval() -> None:
    lo, hi = clopper_pearson(0, 1000)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 1000), rel=1e-6)
    lo, hi = clopper_pearson(5, 100)
    assert lo == pytest.approx(0.01643188, rel=1e-5) and hi == pytest.approx(0.11283491, rel=1e-5)


def test_users_are_never_compared_with_their_own_person() -> None:
    vectors, labels = population(4, people=20, photos=5)
    users = ImpostorPairs.users_from_vectors(vectors, labels, 3, subsets=2)
    assert np.all(users.person_a != users.person_b)
    assert len(users.cosines) == 20 * 2 * (19 * 5)  # two users per person, every photo of the 19 others
    assert np.all(np.bincount(users.person_b) == 2 * 19 * 5)


@pytest.mark.parametrize("family", ["dlib_resnet_v1", "facenet_casia"])
def test_committed_maps_record_the_current_procedure(family: str) -> None:
    committed = json.loads((CALIBRATIONS / f"{family}.json").read_text())
    for mode in ("single", "flip"):
        reports = [committed["fitted_on"][mode]["report"]] + [
            committed["fitted_on"][mode][f"users of {n}"]["report"] for n in USER_FACES]
        for report in reports:
            margin = report["margin"]
            assert (margin["folds"], margin["repeats"], margin["seed"]) == (CV_FOLDS, CV_REPEATS, CV_SEED)
            assert margin["similarity"] == knot_similarities().tolist()
            deeper = knot_similarities() > margin["measured_up_to"]  # beyond the data, the spread's margin
            modelled = np.round(CutOffSpread(**margin["spread"]).margin(knot_similarities()[deeper]), 2)
            assert np.all(np.array(margin["points"])[deeper] >= modelled)
        if family == "dlib_resnet_v1":  # measured for the default embedder; FaceNet's user maps do not show it
            maps = [committed[mode]] + [committed["users"][mode][str(n)] for n in USER_FACES]
            cut_offs = [SimilarityCalibration.from_dict(m).min_cosine(80.0) for m in maps]
            assert cut_offs[0] < min(cut_offs[1:])  # a centroid needs a higher cosine than one face for 80


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dlib_resnet_v1", "facenet_casia"])
def test_committed_maps_are_what_edge_face_calibrate_makes_of_faces_dev(family: str, faces_dev: Path,
                                                                        tmp_path: Path) -> None:
    """The committed procedure (embed every photo, cross-validate by person, fit) run again from scratch."""
    from edge.cli import main

    out = tmp_path / f"{family}.json"
    assert main(["calibrate", "--data", str(faces_dev), "--family", family, "--out", str(out)]) == 0
    fresh = json.loads(out.read_text())
    committed = json.loads((CALIBRATIONS / f"{family}.json").read_text())
    for mode in ("single", "flip"):
        pairs = [(fresh[mode], committed[mode])] + [
            (fresh["users"][mode][str(n)], committed["users"][mode][str(n)]) for n in USER_FACES]
        for new, old in pairs:
            a, b = SimilarityCalibration.from_dict(new), SimilarityCalibration.from_dict(old)
            # Equal but for float rounding of the embeddings (one margin grid step moves a knot < 1e-4).
            np.testing.assert_allclose(a.similarities, b.similarities, atol=0.06)
            np.testing.assert_allclose(a.cosines, b.cosines, atol=2e-4)
