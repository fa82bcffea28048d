"""Cosine -> Rekognition-style Similarity (0-100), calibrated so the number means a false-match rate.

Similarity = 30 - 10*log10(FMR), clipped to [0, 100], where FMR(c) is the fraction of different-person
pairs with cosine >= c.  Hence 60 <-> 1e-3, 70 <-> 1e-4, 80 <-> 1e-5 (the default FaceMatchThreshold),
90 <-> 1e-6, and anything at or below every impostor scores 30 (FMR = 1).  The curve itself comes
from `edge.evaluation.calibrate` and ships as knots in the model manifest; this module only
interpolates, because it runs on every search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

DEFINITION = "similarity = 30 - 10*log10(FMR), clipped to [0, 100]"


def fmr_to_similarity(fmr: float) -> float:
    """Similarity that a per-comparison false-match rate maps to."""
    if fmr <= 0:
        return 100.0
    return min(max(30.0 - 10.0 * math.log10(fmr), 0.0), 100.0)


def similarity_to_fmr(similarity: float) -> float:
    """Nominal false-match rate at a Similarity (inverse of `fmr_to_similarity` inside the clip)."""
    return 10.0 ** ((30.0 - similarity) / 10.0)


@dataclass(frozen=True)
class SimilarityCalibration:
    """Monotone piecewise-linear map between cosine and Similarity, given by strictly ascending knots.

    Below the first knot Similarity stays at the first knot's value, above the last at the last's:
    the curve is never extrapolated at runtime (the calibration fit already extended the tail).
    """

    cosines: tuple[float, ...]
    similarities: tuple[float, ...]
    _x: np.ndarray = field(init=False, repr=False, compare=False)
    _y: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        x = np.asarray(self.cosines, dtype=np.float64)
        y = np.asarray(self.similarities, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
            raise ValueError("need at least two (cosine, similarity) knots of equal count")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("knots must be finite")
        if not (np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)):
            raise ValueError("knots must be strictly ascending in both cosine and similarity")
        if x[0] < -1 or x[-1] > 1 or y[0] < 0 or y[-1] > 100:
            raise ValueError("cosines must lie in [-1, 1] and similarities in [0, 100]")
        object.__setattr__(self, "cosines", tuple(float(v) for v in x))
        object.__setattr__(self, "similarities", tuple(float(v) for v in y))
        object.__setattr__(self, "_x", x)
        object.__setattr__(self, "_y", y)

    @overload
    def similarity(self, cos: float) -> float: ...
    @overload
    def similarity(self, cos: np.ndarray) -> np.ndarray: ...
    def similarity(self, cos: float | np.ndarray) -> float | np.ndarray:
        """Similarity (0-100) of cosine score(s); NaN stays NaN."""
        s = np.interp(cos, self._x, self._y)
        return float(s) if np.ndim(s) == 0 else s

    def min_cosine(self, similarity_threshold: float) -> float:
        """Smallest cosine whose Similarity reaches the threshold: FaceMatchThreshold -> cosine cut-off.

        -1.0 when every cosine qualifies; +inf when the threshold is above what this curve reaches.
        """
        if not 0 <= similarity_threshold <= 100:
            raise ValueError(f"similarity threshold {similarity_threshold} outside [0, 100]")
        if similarity_threshold <= self._y[0]:
            return -1.0
        if similarity_threshold > self._y[-1]:
            return math.inf
        return float(np.interp(similarity_threshold, self._y, self._x))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for model manifests."""
        return {"definition": DEFINITION, "cosines": list(self.cosines), "similarities": list(self.similarities)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimilarityCalibration:
        """Inverse of `to_dict`; refuses a curve made for a different Similarity definition."""
        if d.get("definition", DEFINITION) != DEFINITION:
            raise ValueError(f"calibration definition {d['definition']!r} is not {DEFINITION!r}")
        return cls(tuple(d["cosines"]), tuple(d["similarities"]))
