"""Runtime Similarity curve properties and the calibration fit on a known impostor distribution."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from edge.evaluation.calibrate import TAIL_MODELS, _norm_isf, _norm_sf, calibration_table, fit_calibration
from edge.similarity import SimilarityCalibration, fmr_to_similarity, similarity_to_fmr

CAL = SimilarityCalibration((0.2, 0.3, 0.45, 0.5, 0.62), (30.0, 50.0, 70.0, 80.0, 100.0))
MU, SD = 0.1, 0.1


def true_fmr(cos: float) -> float:
    """FMR of the synthetic impostor distribution N(MU, SD)."""
    return float(_norm_sf(np.array((cos - MU) / SD)))


@pytest.fixture(scope="module")
def fitted() -> tuple[SimilarityCalibration, dict[str, Any]]:
    rng = np.random.default_rng(20251125)
    return fit_calibration(rng.normal(MU, SD, 1_000_000))


def test_definition_anchor_points() -> None:
    for s, f in ((60, 1e-3), (70, 1e-4), (80, 1e-5), (90, 1e-6)):
        assert fmr_to_similarity(f) == pytest.approx(s)
        assert similarity_to_fmr(s) == pytest.approx(f)
    assert fmr_to_similarity(1.0) == 30.0
    assert fmr_to_similarity(1e-12) == 100.0
    assert fmr_to_similarity(0.0) == 100.0


def test_similarity_monotone_and_clipped() -> None:
    c = np.linspace(-1.0, 1.0, 10_001)
    s = CAL.similarity(c)
    assert np.all(np.diff(s) >= 0)
    assert s.min() == 30.0 and s.max() == 100.0
    assert CAL.similarity(-1.0) == 30.0 and CAL.similarity(1.0) == 100.0
    assert CAL.similarity(0.475) == pytest.approx(75.0)
    assert isinstance(CAL.similarity(0.4), float)
    assert math.isnan(CAL.similarity(float("nan")))


def test_min_cosine_inverts_similarity() -> None:
    for t in np.linspace(30.0, 100.0, 141):
        c = CAL.min_cosine(float(t))
        assert CAL.similarity(c) == pytest.approx(t, abs=1e-9)
    # The cut-off is exact for the search: similarity >= t  <=>  cos >= min_cosine(t).
    cos = np.linspace(-1.0, 1.0, 2001)
    for t in (35.0, 50.0, 61.3, 80.0, 99.9):
        s = CAL.similarity(cos)
        c = CAL.min_cosine(t)
        off = np.abs(cos - c) > 1e-9
        assert np.array_equal((s >= t)[off], (cos >= c)[off])


def test_min_cosine_out_of_curve() -> None:
    assert CAL.min_cosine(0.0) == -1.0
    assert CAL.min_cosine(30.0) == -1.0
    short = SimilarityCalibration((0.1, 1.0), (30.0, 95.0))
    assert short.min_cosine(96.0) == math.inf
    with pytest.raises(ValueError):
        CAL.min_cosine(101.0)
    with pytest.raises(ValueError):
        CAL.min_cosine(-1.0)


def test_round_trip_json() -> None:
    back = SimilarityCalibration.from_dict(json.loads(json.dumps(CAL.to_dict())))
    assert back == CAL
    assert np.array_equal(back.similarity(np.linspace(-1, 1, 101)), CAL.similarity(np.linspace(-1, 1, 101)))
    with pytest.raises(ValueError, match="definition"):
        SimilarityCalibration.from_dict({**CAL.to_dict(), "definition": "something else"})


@pytest.mark.parametrize(
    ("cosines", "similarities"),
    [
        ((0.1, 0.1, 0.3), (30.0, 40.0, 50.0)),  # flat cosine
        ((0.1, 0.2, 0.3), (30.0, 30.0, 50.0)),  # flat similarity
        ((0.3, 0.2), (30.0, 40.0)),  # descending
        ((0.1, 1.2), (30.0, 40.0)),  # cosine out of range
        ((0.1, 0.2), (30.0, 140.0)),  # similarity out of range
        ((0.1,), (30.0,)),  # one knot
        ((0.1, float("nan")), (30.0, 40.0)),
    ],
)
def test_rejects_bad_knots(cosines: tuple[float, ...], similarities: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        SimilarityCalibration(cosines, similarities)


def test_norm_isf_inverts_sf() -> None:
    p = np.array([0.999, 0.5, 1e-2, 1e-5, 1e-7, 1e-9])
    assert np.allclose(_norm_sf(_norm_isf(p)), p, rtol=1e-9)
    assert _norm_isf(np.array([0.5]))[0] == pytest.approx(0.0, abs=1e-12)


def test_fit_recovers_known_fmr(fitted: tuple[SimilarityCalibration, dict[str, Any]]) -> None:
    cal, report = fitted
    rows = {s: (c, f) for s, c, f in calibration_table(cal, (60, 70, 80, 90))}
    for s in (60, 70):  # empirical region
        c, f = rows[s]
        assert 1 / 1.5 < true_fmr(c) / f < 1.5, s
    c, f = rows[80]  # below the empirical floor (2e-5): tail model
    assert report["empirical_floor"]["fmr"] > f
    assert 1 / 3 < true_fmr(c) / f < 3
    c, f = rows[90]  # two decades past the data: looser, but the right order of magnitude
    assert 1 / 10 < true_fmr(c) / f < 10


def test_fit_is_a_valid_monotone_curve(fitted: tuple[SimilarityCalibration, dict[str, Any]]) -> None:
    cal, report = fitted
    assert len(cal.cosines) == report["n_knots"] == 36
    assert cal.similarities[0] == 30.0 and cal.similarities[-1] == 100.0
    assert report["tail_model"]["name"] in TAIL_MODELS
    assert report["empirical_floor"]["fmr"] == pytest.approx(20 / 1_000_000)
    assert report["tail_start"]["cosine"] < report["empirical_floor"]["cosine"]
    assert report["in_sample_error"]["rms_similarity"] < 1.0
    for err in report["selection"]["heldout_error"].values():
        assert set(err) == {"rms_similarity", "max_abs_similarity", "bias_similarity"}
    assert SimilarityCalibration.from_dict(cal.to_dict()) == cal


def test_fit_ends_at_cosine_one_when_tail_is_heavy() -> None:
    # Impostors crowded near 1 (as with un-centred descriptors): Similarity 100 lies beyond cos 1.
    rng = np.random.default_rng(7)
    cal, report = fit_calibration(1 - rng.exponential(0.05, 200_000))
    assert cal.cosines[-1] == 1.0
    assert 50.0 < report["similarity_at_cosine_1"] < 100.0
    assert np.all(np.diff(cal.cosines) > 0)


def test_fit_needs_enough_impostors() -> None:
    with pytest.raises(ValueError, match="impostor"):
        fit_calibration(np.random.default_rng(0).normal(size=10_000))
