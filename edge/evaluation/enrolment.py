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


#: The adaptive cohort: a user's this many most similar photos of other people.
COHORT_TOP = 50


def cohort_statistics(cosines: np.ndarray, person: np.ndarray, owner: int,
                      n_people: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A user's cohort mean and sd, for a probe of each person (indexed by person): its centroid's
    `cosines` to every photo (of `person`), leaving out the user's own person and the probe's, so an
    impostor is never scored against statistics that contain it.  "all": every other photo (Z-norm);
    "top": the COHORT_TOP most similar (adaptive, as in AS-norm), which describe the tail where false
    matches happen."""
    others = person != owner
    s0 = np.bincount(person[others], minlength=n_people).astype(np.float64)
    s1 = np.bincount(person[others], weights=cosines[others], minlength=n_people)
    s2 = np.bincount(person[others], weights=cosines[others] ** 2, minlength=n_people)
    n, mean = s0.sum() - s0, s1.sum() - s1
    mean = mean / n
    sd = np.sqrt((s2.sum() - s2) / n - mean**2)
    order = np.flatnonzero(others)[np.argsort(-cosines[others])][: COHORT_TOP + int(s0.max())]
    keep = person[order][None, :] != np.arange(n_people)[:, None]  # drop the probe's person
    top = keep & (np.cumsum(keep, axis=1) <= COHORT_TOP)
    top_mean = (top * cosines[order]).sum(axis=1) / top.sum(axis=1)
    top_sd = np.sqrt((top * cosines[order] ** 2).sum(axis=1) / top.sum(axis=1) - top_mean**2)
    return {"all": (mean, sd), "top": (top_mean, top_sd)}


def compare_user_scores(vectors: np.ndarray, labels: np.ndarray, n_faces: int) -> dict[str, dict[str, float]]:
    """TAR at per-comparison FMR of each way to score a user of `n_faces` photos, the centroid, and the
    centroid calibrated per user by its cohort (`cohort_statistics`), as the daemon could from the
    other people's faces in its own collection: (cosine - mean) / sd."""
    found = np.flatnonzero(np.isfinite(vectors).all(axis=1))
    people, person = np.unique(labels[found], return_inverse=True)
    names = [*SCORES, "centroid", "centroid, Z-norm", f"centroid, top-{COHORT_TOP} cohort norm"]
    genuine: dict[str, list[np.ndarray]] = {k: [] for k in names}
    impostor: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for owner in range(len(people)):
        mine = found[person == owner]
        for subset in itertools.combinations(mine, n_faces):
            faces = vectors[list(subset)]
            centre = centroid(faces)
            cohort = cohort_statistics(vectors[found] @ centre, person, owner, len(people))
            rest = np.isin(found, mine) & ~np.isin(found, subset)
            for probes, out in ((person != owner, impostor), (rest, genuine)):
                if not probes.any():
                    continue
                cos = vectors[found[probes]] @ faces.T
                for name, score in SCORES.items():
                    out[name].append(score(cos))
                centred = vectors[found[probes]] @ centre
                out["centroid"].append(centred)
                for name, (mean, sd) in zip(names[-2:], cohort.values(), strict=True):
                    who = person[probes]
                    out[name].append((centred - mean[who]) / sd[who])
    return {name: {f"{far:g}": tar_at_far(np.concatenate(genuine[name]), np.concatenate(impostor[name]), far).tar
                   for far in FARS} | {"genuine": float(sum(map(len, genuine[name]))),
                                       "impostor": float(sum(map(len, impostor[name])))}
            for name in names}
