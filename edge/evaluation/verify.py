"""Verification accuracy of edge-face's own pipeline on a labelled face folder.

Detection, landmarks and alignment run once per photo; every embedder artifact (each
family and precision) then embeds the same crops, so their numbers differ only by the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.evaluation.dataset import FaceSet
from edge.evaluation.metrics import all_pair_scores, fmr_at, tar_at_far, ten_fold_accuracy
from edge.similarity import SimilarityCalibration
from edge.vision.embedder import Embedder, FaceGeometry, unit
from edge.vision.pipeline import FacePipeline

FARS = (1e-3, 1e-4, 1e-5)
SIMILARITIES = (60.0, 70.0, 80.0, 90.0)


@dataclass
class Embeddings:
    """Per-image unit embeddings (NaN rows where no face was found) and per-stage times in ms.

    Every embedder appears twice: `name` (one pass) and `name+flip` (the chip and its mirror
    image averaged), so both modes are measured on identical crops.
    """

    vectors: dict[str, np.ndarray]
    found: np.ndarray
    stage_ms: dict[str, list[float]] = field(default_factory=dict)


def embed_faceset(pipeline: FacePipeline, embedders: dict[str, Embedder], faceset: FaceSet) -> Embeddings:
    """Embed the largest face of every photo with every embedder, with and without the mirror pass."""
    n = len(faceset.paths)
    vectors = {f"{name}{mode}": np.full((n, e.artifact.embedding_size or 0), np.nan, dtype=np.float32)
               for name, e in embedders.items() for mode in ("", "+flip")}
    found = np.zeros(n, dtype=bool)
    stage_ms: dict[str, list[float]] = {s: [] for s in ("decode", "detect", "landmarks")}
    stage_ms.update({f"embed[{name}]": [] for name in embedders})
    for i, path in enumerate(faceset.paths):
        analysis = pipeline.analyse(path.read_bytes(), embed=False)
        for stage in ("decode", "detect", "landmarks"):
            stage_ms[stage].append(1000 * analysis.timings[stage])
        if not analysis.faces:
            continue
        found[i] = True
        face = analysis.faces[0]
        geometry = FaceGeometry(face.detection.box, face.mesh)
        for name, embedder in embedders.items():
            chip = embedder.crop(analysis.image.rgb, geometry)
            start = time.perf_counter()
            single = embedder.raw(chip)
            stage_ms[f"embed[{name}]"].append(1000 * (time.perf_counter() - start))
            vectors[name][i] = unit(single)
            vectors[f"{name}+flip"][i] = unit(single + embedder.raw(chip[:, ::-1]))
    return Embeddings(vectors, found, stage_ms)


def fuse(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    """Concatenate two unit embeddings so that their dot product is the weighted sum of cosines.

    weight*cos_a + (1-weight)*cos_b, divided by nothing: both parts are unit vectors, so
    the fused vector is unit too and an inner-product index searches the fused score.
    """
    return np.concatenate([np.sqrt(weight) * a, np.sqrt(1 - weight) * b], axis=1).astype(np.float32)


def verification_report(vectors: np.ndarray, faceset: FaceSet,
                        calibration: SimilarityCalibration | None = None) -> dict[str, Any]:
    """10-fold accuracy on the pairs, TAR at FAR over all pairs, FMR at Similarity cut-offs."""
    found = np.isfinite(vectors).all(axis=1)
    pair_ok = found[faceset.pairs].all(axis=1)
    scores = np.full(len(faceset.same), -np.inf)
    a, b = vectors[faceset.pairs[pair_ok, 0]], vectors[faceset.pairs[pair_ok, 1]]
    scores[pair_ok] = np.einsum("ij,ij->i", a, b)
    mean, std = ten_fold_accuracy(scores, faceset.same)
    genuine, impostor = all_pair_scores(vectors, faceset.labels, found)
    report: dict[str, Any] = {
        "photos_without_face": int((~found).sum()),
        "ten_fold_accuracy": mean, "ten_fold_std": std,
        "n_genuine": len(genuine), "n_impostor": len(impostor),
        "tar_at_far": {f"{far:g}": tar_at_far(genuine, impostor, far)._asdict() for far in FARS},
    }
    if calibration is not None:
        report["at_similarity"] = {
            f"{s:g}": {"cosine": (c := calibration.min_cosine(s)), "fmr": fmr_at(impostor, c),
                       "tar": float(np.mean(genuine >= c))}
            for s in SIMILARITIES
        }
    return report


def impostor_scores(vectors: np.ndarray, faceset: FaceSet) -> np.ndarray:
    """Cosines of every different-person pair of photos with a face (what calibration fits)."""
    found = np.isfinite(vectors).all(axis=1)
    return all_pair_scores(vectors, faceset.labels, found)[1]
