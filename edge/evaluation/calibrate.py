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

A curve fitted on some people promises too much on others: the fitted cut-off is itself an estimate,
and the FMR is convex in the cut-off, so on unseen people it is exceeded more often than it is
undercut, the more so the deeper in the tail.  `cross_validated_calibration` measures that shift by
fitting on some people and scoring the pairs of the others (folds by person, never by pair), and
publishes the curve with the measured margin built in.  The out-of-fold false matches run out a few
decades down; below that the margin follows a model of why it grows (`CutOffSpread`: the spread of a
fitted cut-off, a quadratic in the depth z), fitted where it is measured.  `out_of_fold_similarity` with
`cross_validated_calibration` itself as the fit checks the whole procedure on people it never saw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge.evaluation.metrics import all_pair_scores
from edge.rekognition.users import centroid
from edge.similarity import DEFINITION, SimilarityCalibration, fmr_to_similarity, similarity_to_fmr

TAIL_MODELS = ("gaussian", "gaussian_z", "gpd")
LEVELS_PER_DECADE = 8
N_KNOTS = 36
#: The tail models are fitted to the impostors above this FMR.
TAIL_FRACTION = 1e-2
#: The published procedure: folds of people, repeated with different partitions, from this seed.
CV_FOLDS, CV_REPEATS, CV_SEED = 10, 20, 0
#: The margin is measured where the out-of-fold false matches involve at least this many pairs of
#: people (photos of one pair of people are one event, not many); deeper in the tail it follows
#: `CutOffSpread`, fitted to the measured knots from the tail's start down.
MARGIN_MIN_PEOPLE = 5
#: The check of the whole procedure fits on three fifths of the people and scores the rest.
CHECK_FOLDS = 5
#: Users of this many faces get their own map; more faces use the last, whose cut-offs differ from
#: those of five faces by under a Similarity point, where faces-dev (at most five photos a person)
#: has too few users of five to fit a tail of their own. Each person with enough photos stands for
#: at most USER_SUBSETS users of each size.
USER_FACES = (2, 3, 4)
USER_SUBSETS = 3
#: `edge-face calibrate --check` checks the maps of faces and of users of three faces.
CHECKED_FACES = (1, 3)
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
    n_knots: int = N_KNOTS,
    tail_fraction: float = TAIL_FRACTION,
    floor_count: int = 20,
    margin: np.ndarray | None = None,
) -> tuple[SimilarityCalibration, dict[str, Any]]:
    """Knots evenly spaced in Similarity from 30 to 100 (by default every 2 points, so 50...90 are knots).

    Empirical quantiles where FMR >= floor_count/N, the better tail model (anchored to the empirical
    curve at the floor, so the curve is continuous) below it.  `margin` (Similarity points per knot,
    non-decreasing) puts each knot where the fitted FMR is that much rarer than its nominal one.
    Returns the calibration and a report of where the tail starts, the chosen model and its error on
    the held-out deepest empirical tail.
    """
    x = np.asarray(impostor_cosines, dtype=np.float64).ravel()
    if np.any(x[1:] < x[:-1]):  # cross-validation hands over slices of an already sorted array
        x = np.sort(x)
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

    sims = knot_similarities(n_knots)
    shift = np.zeros(n_knots) if margin is None else np.asarray(margin, dtype=np.float64)
    if shift.shape != sims.shape or np.any(np.diff(shift) < 0) or np.any(shift < 0):
        raise ValueError(f"margin must be {n_knots} non-negative, non-decreasing Similarity points")
    fmrs = np.array([similarity_to_fmr(s) for s in sims + shift])
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


def knot_similarities(n_knots: int = N_KNOTS) -> np.ndarray:
    """Where the curve has its knots: evenly spaced from Similarity 30 to 100."""
    return np.linspace(30.0, 100.0, n_knots)


def calibration_table(
    cal: SimilarityCalibration, similarities: tuple[float, ...] = (50, 60, 70, 80, 90)
) -> list[tuple[float, float, float]]:
    """(similarity, cosine cut-off, nominal FMR) rows for the README."""
    return [(float(s), cal.min_cosine(s), similarity_to_fmr(s)) for s in similarities]


@dataclass(frozen=True)
class ImpostorPairs:
    """Different-person comparisons: each cosine with its two people (the unit of a fold), by cosine."""

    cosines: np.ndarray
    person_a: np.ndarray
    person_b: np.ndarray

    @classmethod
    def sorted(cls, cosines: np.ndarray, person_a: np.ndarray, person_b: np.ndarray) -> ImpostorPairs:
        order = np.argsort(cosines, kind="stable")
        return cls(np.asarray(cosines, dtype=np.float64)[order], np.asarray(person_a)[order],
                   np.asarray(person_b)[order])

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, labels: np.ndarray) -> ImpostorPairs:
        """Pairs of photos with a face (finite rows); `all_pair_scores` lists them in row-major i<j order."""
        found = np.isfinite(vectors).all(axis=1)
        cosines = all_pair_scores(vectors, labels, found)[1]
        rows, cols = np.triu_indices(int(found.sum()), k=1)
        lab = np.asarray(labels)[found]
        different = lab[rows] != lab[cols]
        return cls.sorted(cosines, lab[rows][different], lab[cols][different])

    @classmethod
    def users_from_vectors(cls, vectors: np.ndarray, labels: np.ndarray, n_faces: int, *,
                           subsets: int = USER_SUBSETS, seed: int = 0) -> ImpostorPairs:
        """Users of `n_faces` photos of one person (up to `subsets` per person, drawn by `seed`), each
        scored as SearchUsers scores it against every photo of everyone else."""
        found = np.flatnonzero(np.isfinite(vectors).all(axis=1))
        labels = np.asarray(labels)
        rng = np.random.default_rng(seed)
        centroids, owners = [], []
        for person in np.unique(labels[found]):
            combos = list(itertools.combinations(found[labels[found] == person], n_faces))
            for pick in sorted(rng.permutation(len(combos))[:subsets]):
                centroids.append(centroid(vectors[list(combos[pick])]))
                owners.append(person)
        scores = vectors[found] @ np.array(centroids).T  # (photos, users)
        probe_person, owner = np.meshgrid(labels[found], np.array(owners), indexing="ij")
        different = probe_person != owner
        return cls.sorted(scores[different], probe_person[different], owner[different])

    def select(self, mask: np.ndarray) -> ImpostorPairs:
        return ImpostorPairs(self.cosines[mask], self.person_a[mask], self.person_b[mask])

    def people(self) -> np.ndarray:
        return np.union1d(self.person_a, self.person_b)


def person_folds(pairs: ImpostorPairs, k: int, seed: int) -> np.ndarray:
    """Fold of each person (indexed by label; -1 for people without pairs), shuffled by `seed`."""
    people = pairs.people()
    folds = np.full(int(people.max()) + 1, -1)
    folds[people] = np.random.default_rng(seed).permutation(len(people)) % k
    return folds


def held_out_rounds(pairs: ImpostorPairs, folds: np.ndarray, k: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fit, score) pair masks, leaving two folds of people out at a time.

    A round fits on the pairs of people outside folds a and b and scores the pairs between a and b;
    the pairs within fold a are scored in the round (a, a+1 mod k).  So every pair is scored exactly
    once, by a curve fitted on (k-2)/k of the people and on neither of its two.
    """
    fa, fb = folds[pairs.person_a], folds[pairs.person_b]
    for a, b in itertools.combinations(range(k), 2):
        in_a, in_b = (fa == a) | (fb == a), (fa == b) | (fb == b)
        score = in_a & in_b
        if b == (a + 1) % k:
            score |= (fa == a) & (fb == a)
        if a == (b + 1) % k:
            score |= (fa == b) & (fb == b)
        yield ~(in_a | in_b), score


Fit = Callable[[ImpostorPairs], SimilarityCalibration]


def fit_plain(pairs: ImpostorPairs) -> SimilarityCalibration:
    """The curve fitted on the pairs alone, without a margin."""
    return fit_calibration(pairs.cosines)[0]


def out_of_fold_similarity(pairs: ImpostorPairs, fit: Fit, k: int, seed: int) -> np.ndarray:
    """Every pair's Similarity under a curve fitted (by `fit`) on other people only."""
    similarity = np.full(len(pairs.cosines), np.nan)
    for fit_mask, score_mask in held_out_rounds(pairs, person_folds(pairs, k, seed), k):
        similarity[score_mask] = fit(pairs.select(fit_mask)).similarity(pairs.cosines[score_mask])
    return similarity


def depth(similarity: np.ndarray) -> np.ndarray:
    """A Similarity's nominal FMR as a standard normal quantile z (sf(z) = FMR): how deep in the tail."""
    return _norm_isf(10.0 ** ((30.0 - np.asarray(similarity, dtype=np.float64)) / 10.0))


def _nonnegative_least_squares(columns: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Weighted least squares with every coefficient >= 0, for a few columns: the best of the
    unconstrained fits on every subset of columns whose coefficients come out non-negative."""
    best: tuple[np.ndarray, float] = (np.zeros(columns.shape[1]), float(np.sum(w * y**2)))
    for size in range(1, columns.shape[1] + 1):
        for subset in itertools.combinations(range(columns.shape[1]), size):
            a = columns[:, subset]
            coef = np.linalg.lstsq(a * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
            sse = float(np.sum(w * (y - a @ coef) ** 2))
            if np.all(coef >= 0) and sse < best[1]:
                full = np.zeros(columns.shape[1])
                full[list(subset)] = coef
                best = (full, sse)
    return best


@dataclass(frozen=True)
class CutOffSpread:
    """How far a fitted cut-off strays at depth z: tau(z)^2 = a + b * (z - z0)^2, in units of z.

    A curve fitted on a sample of people puts the cut-off it means for depth z at z + e, where e
    varies from sample to sample; on people it never saw it then delivers on average E[sf(z + e)],
    which for e ~ N(0, tau^2) is exactly sf(z / sqrt(1 + tau^2)).  The tail is fitted as a location
    and a scale (a straight line on normal-probability paper), and the variance of such an estimate
    at z is a quadratic in z that is never negative: the form above, whose minimum lies near the
    middle of the fitted levels.  So the shift grows faster than linearly with depth, and its
    parameters can be fitted where the out-of-fold false matches measure it and carried deeper.
    """

    a: float
    b: float
    z0: float

    def tau2(self, z: np.ndarray) -> np.ndarray:
        return self.a + self.b * (np.asarray(z, dtype=np.float64) - self.z0) ** 2

    @classmethod
    def fit(cls, fitted: np.ndarray, out_of_fold_fmr: np.ndarray, events: np.ndarray) -> CutOffSpread:
        """From fitted curves' Similarity levels, the mean out-of-fold FMR each delivered, and the number
        of independent events (pairs of people) behind each; weighted by the inverse variance of the
        observed tau^2, which is about events * z^4 (Poisson counts, d log sf / dz ~ -z)."""
        z = depth(fitted)
        observed = (z / _norm_isf(out_of_fold_fmr)) ** 2 - 1.0
        weights = events * z**4
        best: tuple[float, CutOffSpread] = (math.inf, cls(0.0, 0.0, 0.0))
        for z0 in np.round(np.arange(0.0, 6.0 + 1e-9, 0.01), 2):
            (a, b), sse = _nonnegative_least_squares(np.stack([np.ones_like(z), (z - z0) ** 2], 1), observed,
                                                     weights)
            if sse < best[0]:
                best = (sse, cls(float(a), float(b), float(z0)))
        return best[1]

    def margin(self, knots: np.ndarray) -> np.ndarray:
        """Per knot t, how much higher the fitted curve's level g must be for its mean FMR on unseen
        people, sf(z_g / sqrt(1 + tau(z_g)^2)), to be t's nominal FMR."""
        z = depth(knots)
        z_g = z.copy()
        for _ in range(100):  # fixed point of z_g = z * sqrt(1 + tau(z_g)^2); tau changes slowly with z
            z_g = z * np.sqrt(1.0 + self.tau2(z_g))
        level = 30.0 - 10.0 * np.log10(np.maximum(_norm_sf(z_g), 1e-300))
        return np.where(z > 0, np.maximum(level - knots, 0.0), 0.0)


@dataclass(frozen=True)
class Margin:
    """How many Similarity points each knot must move to keep its FMR on unseen people."""

    points: np.ndarray  # per knot of `knot_similarities()`, non-negative and non-decreasing
    measured_up_to: float  # deepest knot measured; deeper knots take `modelled`
    spread: CutOffSpread  # fitted to the measured knots from the tail's start down
    modelled: np.ndarray  # per knot, the margin `spread` implies
    out_of_fold_fmr: dict[str, float]  # mean out-of-fold FMR of the plain curve at 60, 70, ...


def estimate_margin(pairs: ImpostorPairs, *, k: int = CV_FOLDS, repeats: int = CV_REPEATS, seed: int = CV_SEED,
                    min_people: int = MARGIN_MIN_PEOPLE, n_knots: int = N_KNOTS, fit: Fit = fit_plain) -> Margin:
    """Fit on some people, score the others, over `repeats` partitions; for each nominal Similarity t,
    the margin is how far up the fitted curves' scale one must go for the mean out-of-fold FMR to be
    at most t's nominal FMR.  Deeper than the out-of-fold false matches measure, the margin is what
    the cut-offs' spread (`CutOffSpread`), fitted to the measured knots, implies."""
    grid = np.round(np.arange(30.0, 100.0 + 1e-9, 0.05), 2)
    exceed, people_pairs = np.zeros(len(grid)), np.zeros(len(grid))
    pair_id = np.minimum(pairs.person_a, pairs.person_b) * (int(pairs.people().max()) + 1) + np.maximum(
        pairs.person_a, pairs.person_b)
    for r in range(repeats):
        similarity = out_of_fold_similarity(pairs, fit, k, seed + r)
        order = np.argsort(-similarity, kind="stable")
        above = np.searchsorted(-similarity[order], -grid, side="right")  # pairs with similarity >= grid
        first_seen = np.sort(np.unique(pair_id[order], return_index=True)[1])
        exceed += above
        people_pairs += np.searchsorted(first_seen, above)  # distinct pairs of people among them
    fmr, people_pairs = exceed / (repeats * len(pairs.cosines)), people_pairs / repeats
    knots = knot_similarities(n_knots)
    nominal = np.array([similarity_to_fmr(t) for t in knots])
    first_kept = np.minimum(np.searchsorted(-fmr, -nominal, side="left"), len(grid) - 1)  # fmr never rises
    measured = people_pairs[first_kept] >= min_people
    last = int(np.flatnonzero(measured)[-1])
    at_knot = np.searchsorted(grid, knots - 1e-6)
    usable = (knots >= fmr_to_similarity(TAIL_FRACTION)) & (people_pairs[at_knot] >= min_people) & (fmr[at_knot] > 0)
    spread = CutOffSpread.fit(knots[usable], fmr[at_knot[usable]], people_pairs[at_knot[usable]])
    modelled = spread.margin(knots)
    points = modelled.copy()
    points[: last + 1] = grid[first_kept[: last + 1]] - knots[: last + 1]
    points = np.maximum.accumulate(np.maximum(points, 0.0))
    at = {f"{t:g}": float(fmr[np.searchsorted(grid, t)]) for t in (60.0, 70.0, 80.0, 90.0)}
    return Margin(np.round(points, 2), float(knots[last]), spread, np.round(modelled, 2), at)


def cross_validated_calibration(pairs: ImpostorPairs, **cv: Any) -> tuple[SimilarityCalibration, dict[str, Any]]:
    """The published curve: fitted on every pair, with the margin measured by person-disjoint CV."""
    margin = estimate_margin(pairs, **cv)
    cal, report = fit_calibration(pairs.cosines, margin=margin.points)
    report["margin"] = {
        "similarity": knot_similarities().tolist(), "points": margin.points.tolist(),
        "measured_up_to": margin.measured_up_to,
        "beyond": "tau(z)^2 = a + b (z - z0)^2 fitted to the measured knots (CutOffSpread)",
        "spread": {"a": margin.spread.a, "b": margin.spread.b, "z0": margin.spread.z0},
        "modelled": margin.modelled.tolist(),
        "plain_curve_out_of_fold_fmr": margin.out_of_fold_fmr,
        "folds": cv.get("k", CV_FOLDS), "repeats": cv.get("repeats", CV_REPEATS), "seed": cv.get("seed", CV_SEED),
    }
    return cal, report


def fit_cross_validated(pairs: ImpostorPairs) -> SimilarityCalibration:
    """`cross_validated_calibration` as a `Fit`, for checking the procedure on people it never saw."""
    return cross_validated_calibration(pairs)[0]


def fmr_report(pairs: ImpostorPairs, similarities: list[np.ndarray],
               levels: tuple[float, ...] = (60.0, 70.0, 80.0, 90.0), *, n_boot: int = 2000,
               seed: int = 0) -> dict[str, dict[str, Any]]:
    """Measured FMR at Similarity levels, averaged over partitions (one Similarity per pair each), with
    two 95% intervals.

    `bootstrap`: people resampled with replacement (pairs of one person are not independent, so this
    is the honest interval); `clopper_pearson`: exact binomial on the mean count per partition, as if
    pairs were independent (narrower; it still bounds a level where no false match was seen).
    """
    people = pairs.people()
    size = int(people.max()) + 1
    flat = pairs.person_a * size + pairs.person_b

    def by_people(weights: np.ndarray) -> np.ndarray:
        m = np.bincount(flat, weights=weights, minlength=size * size).reshape(size, size)
        return m + m.T

    draws = np.random.default_rng(seed).multinomial(len(people), np.full(len(people), 1 / len(people)), size=n_boot)
    weights = np.zeros((n_boot, size))
    weights[:, people] = draws

    def resampled(matrix: np.ndarray) -> np.ndarray:
        return np.einsum("bi,ij,bj->b", weights, matrix, weights)

    denominator = resampled(by_people(np.ones(len(flat))))
    out = {}
    for level in levels:
        hits = np.mean([s >= level for s in similarities], axis=0)
        count, n = float(hits.sum()), len(hits)
        boot = resampled(by_people(hits)) / denominator
        out[f"{level:g}"] = {
            "nominal": similarity_to_fmr(level), "false_matches": count, "pairs": n, "fmr": count / n,
            "bootstrap": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
            "clopper_pearson": list(clopper_pearson(round(count), n)),
        }
    return out


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials (by bisection: no scipy on the device)."""

    def log_cdf(p: float, upto: int) -> float:
        """log P(X <= upto) for X ~ Binomial(n, p)."""
        i = np.arange(upto + 1)
        log_choose = np.concatenate(([0.0], np.cumsum(np.log(n - i[1:] + 1) - np.log(i[1:]))))
        return float(np.logaddexp.reduce(log_choose + i * math.log(p) + (n - i) * math.log1p(-p)))

    def solve(target: Callable[[float], bool]) -> float:
        lo, hi = -40.0, 0.0  # log p
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if target(math.exp(mid)) else (lo, mid)
        return math.exp((lo + hi) / 2)

    half = math.log(alpha / 2)
    lower = 0.0 if k == 0 else solve(lambda p: log_cdf(p, k - 1) > math.log1p(-alpha / 2))  # P(X >= k) < a/2
    upper = 1.0 if k == n else solve(lambda p: log_cdf(p, k) > half)  # P(X <= k) > a/2: p still too small
    return lower, upper
