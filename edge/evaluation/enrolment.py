"""How a user of several photos should be scored: the alternatives, measured on embeddings.

Every person with enough photos stands for users of n of them (every n-subset); each user is
compared with that person's other photos (genuine) and with every photo of everyone else
(impostor). TAR at a per-comparison FMR needs no calibration, so the scores compare on equal
terms; the one that separates people best is what SearchUsers uses (edge.rekognition.users).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from edge.evaluation.metrics import tar_at_far
from edge.rekognition.users import centroid

FARS = (1e-3, 1e-4, 1e-5)


#: How a user's score follows from a probe's cosines to each of its faces (probes, n).
SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "best face": lambda cos: cos.max(axis=1),
    "mean of top 2": lambda cos: np.sort(cos, axis=1)[:, -2:].mean(axis=1),
    "mean cosine": lambda cos: cos.mean(axis=1),
}


def compare_user_scores(vectors: np.ndarray, labels: np.ndarray, n_faces: int) -> dict[str, dict[str, float]]:
    """TAR at per-comparison FMR of each way to score a user of `n_faces` photos (and the centroid)."""
    found = np.flatnonzero(np.isfinite(vectors).all(axis=1))
    names = [*SCORES, "centroid"]
    genuine: dict[str, list[np.ndarray]] = {k: [] for k in names}
    impostor: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for person in np.unique(labels[found]):
        mine = found[labels[found] == person]
        others = vectors[found[labels[found] != person]]
        for subset in itertools.combinations(mine, n_faces):
            faces = vectors[list(subset)]
            rest = vectors[[i for i in mine if i not in subset]]
            for probes, out in ((others, impostor), (rest, genuine)):
                if not len(probes):
                    continue
                cos = probes @ faces.T
                for name, score in SCORES.items():
                    out[name].append(score(cos))
                out["centroid"].append(probes @ centroid(faces))
    return {name: {f"{far:g}": tar_at_far(np.concatenate(genuine[name]), np.concatenate(impostor[name]), far).tar
                   for far in FARS} | {"genuine": float(sum(map(len, genuine[name]))),
                                       "impostor": float(sum(map(len, impostor[name])))}
            for name in names}
