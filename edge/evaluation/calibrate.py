"""Fit the cosine -> Similarity curve from impostor (different-person) cosines.

Empirical FMR is trusted only while at least `floor_count` impostors lie above the cosine (relative
error ~1/sqrt(count)); below that floor a parametric tail model, fitted to the top `tail_fraction`
of impostors, carries the curve down to FMR 1e-7 (Similarity 100).  Three tail models compete and the
one that best predicts the deepest, held-out part of the empirical tail wins:

- "gaussian": a Gaussian on the cosines (a straight line on normal-probability paper).
- "gaussian_z": a Gaussian on Fisher-z cosines, z = atanh(c); bounded cosines get unbounded z.
- "gpd": a Generalised Pareto on exceedances over the tail start (peaks over threshold).

All are fitted by least squares on the empirical quantile curve at FMR levels spaced evenly in
log10, so each decade counts equally and no single pair steers the fit.  Only impostor scores are
used: the curve must hold for people never seen, and genuine pairs say nothing about false matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge.similarity import DEFINITION, SimilarityCalibration, fmr_to_similarity, similarity_to_fmr

TAIL_MODELS = ("gaussian", "gaussian_z", "gpd")
LEVELS_PER_DECADE = 8
_SQRT2 = math.sqrt(2.0)
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _norm_sf(q: np.ndarray) -> np.ndarray:
    """Standard normal upper tail, accurate far out (no scipy on the device)."""
    return 0.5 * _erfc(np.asarray(q, dtype=np.float64) / _SQRT2)


def _norm_isf(p: np.ndarray) -> np.ndarray:
    """Inverse of `_norm_sf` by bisection in log space: exact enough and only ever run on ~100 points."""
    logp = np.log(np.asarray(p, dtype=np.float64))
    lo, hi = np.full(logp.shape, -12.0), np.full(logp.shape, 12.0)
    for _ in range(64):
        mid = (lo + hi) / 2
        above = np.log(np.maximum(_norm_sf(mid), 1e-300)) > logp  # sf too large -> go right
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return (lo + hi) / 2


class TailModel(Protocol):
    """A fitted upper-tail model of the impostor cosine distribution."""

    @property
    def name(self) -> str:
        """Model family, as listed in TAIL_MODELS."""
        ...

    def fmr(self, cos: np.ndarray) -> np.ndarray:
        """Modelled fraction of impostors at or above `cos`."""
        ...

    def cosine(self, fmr: np.ndarray) -> np.ndarray:
        """Inverse of `fmr`: the cosine where the modelled FMR equals `fmr`."""
        ...

    def params(self) -> dict[str, float]:
        """Parameters for the report."""
        ...


@dataclass(frozen=True)
class GaussianTail:
    """t(cos) ~ N(mu, sd) in the tail, with t = atanh (Fisher z) or the identity."""

    mu: float
    sd: float
    fisher_z: bool

    @property
    def name(self) -> str:
        return "gaussian_z" if self.fisher_z else "gaussian"

    def fmr(self, cos: np.ndarray) -> np.ndarray:
        return _norm_sf((_transform(np.asarray(cos, dtype=np.float64), self.fisher_z) - self.mu) / self.sd)

    def cosine(self, fmr: np.ndarray) -> np.ndarray:
        t = self.mu + self.sd * _norm_isf(fmr)
        return np.tanh(t) if self.fisher_z else t

    def params(self) -> dict[str, float]:
        return {"mu": self.mu, "sd": self.sd}


def _transform(cos: np.ndarray, fisher_z: bool) -> np.ndarray:
    """Fisher z (clipped off +-1) or the cosine itself."""
    return np.arctanh(np.clip(cos, -1 + 1e-12, 1 - 1e-12)) if fisher_z else cos


@dataclass(frozen=True)
class GeneralisedPareto:
    """P(cos >= u + y) = p_u * (1 + xi*y/sigma)^(-1/xi); xi < 0 means a bounded tail."""

    u: float
    p_u: float
    xi: float
    sigma: float
    name: str = "gpd"

    def fmr(self, cos: np.ndarray) -> np.ndarray:
        y = np.maximum(np.asarray(cos, dtype=np.float64) - self.u, 0.0)
        if abs(self.xi) < 1e-9:
            return self.p_u * np.exp(-y / self.sigma)
        base = np.maximum(1 + self.xi * y / self.sigma, 0.0)
        with np.errstate(divide="ignore"):
            return self.p_u * base ** (-1 / self.xi)

    def cosine(self, fmr: np.ndarray) -> np.ndarray:
        return self.u + self.sigma * _gpd_unit_quantile(np.asarray(fmr) / self.p_u, self.xi)

    def params(self) -> dict[str, float]:
        return {"u": self.u, "p_u": self.p_u, "xi": self.xi, "sigma": self.sigma}


def _gpd_unit_quantile(ratio: np.ndarray, xi: float) -> np.ndarray:
    """Exceedance at survival ratio p/p_u for sigma = 1 (the log limit at xi = 0)."""
    if abs(xi) < 1e-9:
        return -np.log(ratio)
    return (ratio ** (-xi) - 1) / xi


def _fit_gaussian(levels: np.ndarray, cosines: np.ndarray, fisher_z: bool) -> GaussianTail:
    """Least squares t(cos) = mu + sd * isf(level): a straight line on normal-probability paper."""
    sd, mu = np.polyfit(_norm_isf(levels), _transform(cosines, fisher_z), 1)
    return GaussianTail(mu=float(mu), sd=float(sd), fisher_z=fisher_z)


def _fit_gpd(levels: np.ndarray, cosines: np.ndarray, u: float, p_u: float) -> GeneralisedPareto:
    """Least squares on exceedances; for fixed xi the quantile is linear in sigma, so scan xi."""
    y = cosines - u
    best: tuple[float, float, float] = (math.inf, 0.0, 1.0)
    for xi in np.linspace(-1.0, 0.95, 391):  # xi = -1: uniform density up to an end point
        g = _gpd_unit_quantile(levels / p_u, float(xi))
        sigma = float(g @ y / (g @ g))
        sse = float(np.sum((y - sigma * g) ** 2))
        if sigma > 0 and sse < best[0]:
            best = (sse, float(xi), sigma)
    return GeneralisedPareto(u=u, p_u=p_u, xi=best[1], sigma=best[2])


def _log_levels(hi: float, lo: float) -> np.ndarray:
    """FMR levels from hi down to lo, evenly spaced in log10."""
    n = max(2, math.ceil(math.log10(hi / lo) * LEVELS_PER_DECADE) + 1)
    return np.logspace(math.log10(hi), math.log10(lo), n)


def _error(model: TailModel, levels: np.ndarray, cosines: np.ndarray) -> dict[str, float]:
    """Model minus empirical Similarity at the empirical cosines (>0: model claims rarer false matches)."""
    modelled = np.array([fmr_to_similarity(float(f)) for f in model.fmr(cosines)])
    d = modelled - (30 - 10 * np.log10(levels))
    return {
        "rms_similarity": float(np.sqrt(np.mean(d**2))),
        "max_abs_similarity": float(np.max(np.abs(d))),
        "bias_similarity": float(np.mean(d)),
    }


def fit_calibration(
    impostor_cosines: np.ndarray,
    *,
    n_knots: int = 36,
    tail_fraction: float = 1e-2,
    floor_count: int = 20,
) -> tuple[SimilarityCalibration, dict[str, Any]]:
    """Knots evenly spaced in Similarity from 30 to 100 (by default every 2 points, so 50...90 are knots).

    Empirical quantiles where FMR >= floor_count/N, the better tail model (anchored to the empirical
    curve at the floor, so the curve is continuous) below it.  Returns the calibration and a report
    of where the tail starts, the chosen model and its error on the held-out deepest empirical tail.
    """
    x = np.sort(np.asarray(impostor_cosines, dtype=np.float64).ravel())
    x = np.clip(x[np.isfinite(x)], -1.0, 1.0)  # float32 dot products of unit vectors can overshoot 1
    n = len(x)
    f_floor = floor_count / max(n, 1)
    if f_floor > tail_fraction / 10:
        raise ValueError(f"{n} impostor scores: need >= {math.ceil(10 * floor_count / tail_fraction)}")

    def empirical_cosine(fmr: float | np.ndarray) -> np.ndarray:
        """Cosine with a fraction `fmr` of impostors at or above it (x[i] has FMR (n - i)/n)."""
        return np.interp(n * (1 - np.asarray(fmr)), np.arange(n), x)

    u = float(empirical_cosine(tail_fraction))
    f_split = math.sqrt(tail_fraction * f_floor)
    fit_levels, held_levels = _log_levels(tail_fraction, f_split), _log_levels(f_split, f_floor)[1:]
    all_levels = _log_levels(tail_fraction, f_floor)

    def fit(name: str, levels: np.ndarray) -> TailModel:
        c = empirical_cosine(levels)
        if name == "gpd":
            return _fit_gpd(levels, c, u, tail_fraction)
        return _fit_gaussian(levels, c, fisher_z=name == "gaussian_z")

    held_cos = empirical_cosine(held_levels)
    candidates = {name: _error(fit(name, fit_levels), held_levels, held_cos) for name in TAIL_MODELS}
    chosen = min(candidates, key=lambda k: candidates[k]["rms_similarity"])
    model = fit(chosen, all_levels)

    sims = np.linspace(30.0, 100.0, n_knots)
    fmrs = np.array([similarity_to_fmr(s) for s in sims])
    c_floor = float(empirical_cosine(f_floor))
    tail = fmrs < f_floor
    cos = empirical_cosine(fmrs)
    cos[tail] = c_floor + model.cosine(fmrs[tail]) - model.cosine(np.array([f_floor]))[0]
    cos = np.maximum.accumulate(cos) + np.arange(n_knots) * 1e-9  # ties in the data -> strictly up
    if cos[-1] >= 1.0:  # curve leaves the cosine range before Similarity 100: end it exactly at 1
        k = int(np.argmax(cos >= 1.0))
        s_one = float(np.interp(1.0, cos[k - 1 : k + 1], sims[k - 1 : k + 1]))
        cos, sims = np.append(cos[:k], 1.0), np.append(sims[:k], s_one)
    cal = SimilarityCalibration(tuple(cos), tuple(sims))

    report = {
        "definition": DEFINITION,
        "n_impostors": n,
        "empirical_floor": {"fmr": f_floor, "cosine": c_floor, "similarity": fmr_to_similarity(f_floor)},
        "tail_start": {"fmr": tail_fraction, "cosine": u, "similarity": fmr_to_similarity(tail_fraction)},
        "tail_model": {"name": chosen, **model.params()},
        "in_sample_error": _error(model, all_levels, empirical_cosine(all_levels)),
        "selection": {
            "fit_fmr_range": [f_split, tail_fraction],
            "heldout_fmr_range": [f_floor, f_split],
            "heldout_error": candidates,
        },
        "n_knots": len(cal.cosines),
        "similarity_at_cosine_1": cal.similarity(1.0),
    }
    return cal, report


def calibration_table(
    cal: SimilarityCalibration, similarities: tuple[float, ...] = (50, 60, 70, 80, 90)
) -> list[tuple[float, float, float]]:
    """(similarity, cosine cut-off, nominal FMR) rows for the README."""
    return [(float(s), cal.min_cosine(s), similarity_to_fmr(s)) for s in similarities]
