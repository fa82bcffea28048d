"""Verification accuracy of edge-face's own pipeline on a labelled face folder.

Detection, landmarks and alignment run once per photo; every embedder artifact (each
family and precision) then embeds the same crops, so their numbers differ only by the model.

Which face of a photo stands for its label is the protocol's choice, not the recognizer's:
the API searches with the largest face, as Rekognition does, while a labelled folder (LFW)
names the person nearest the centre. Both rules are measured, named, side by side.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.evaluation.dataset import FaceSet
from edge.evaluation.metrics import all_pair_scores, fmr_at, tar_at_far, ten_fold_accuracy
from edge.similarity import SimilarityCalibration
from edge.vision.embedder import Embedder, FaceGeometry, unit
from edge.vision.image import DecodedImage
from edge.vision.pipeline import Face, FacePipeline

FARS = (1e-3, 1e-4, 1e-5)
SIMILARITIES = (60.0, 70.0, 80.0, 90.0)
#: "labelled": the face nearest the photo's centre, the person a labelled folder names;
#: "largest": the face the API searches with.
FACE_RULES = ("labelled", "largest")


@dataclass
class Embeddings:
    """Per-image unit embeddings by face rule (NaN rows where no face was found), stage times in ms.

    Every embedder appears twice: `name` (one pass) and `name+flip` (the chip and its mirror
    image averaged), so both modes are measured on identical crops.
    """

    vectors: dict[str, dict[str, np.ndarray]]  # rule -> name -> (photos, dim)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)


def labelled_face(image: DecodedImage, faces: list[Face]) -> Face:
    """The face whose box centre is nearest the image centre (how LFW's photos name their person)."""
    h, w = image.rgb.shape[:2]

    def off_centre(face: Face) -> float:
        x, y, bw, bh = (float(v) for v in face.detection.box)
        return math.hypot(x + bw / 2 - w / 2, y + bh / 2 - h / 2)

    return min(faces, key=off_centre)


def embed_faceset(pipeline: FacePipeline, embedders: dict[str, Embedder], faceset: FaceSet) -> Embeddings:
    """Embed each rule's face of every photo with every embedder, with and without the mirror pass."""
    n = len(faceset.paths)
    vectors = {rule: {f"{name}{mode}": np.full((n, e.artifact.embedding_size or 0), np.nan, dtype=np.float32)
                      for name, e in embedders.items() for mode in ("", "+flip")} for rule in FACE_RULES}
    stage_ms: dict[str, list[float]] = {s: [] for s in ("decode", "detect", "landmarks")}
    stage_ms.update({f"embed[{name}]": [] for name in embedders})
    for i, path in enumerate(faceset.paths):
        analysis = pipeline.analyse(path.read_bytes(), embed=False)
        for stage in ("decode", "detect", "landmarks"):
            stage_ms[stage].append(1000 * analysis.timings[stage])
        if not analysis.faces:
            continue
        labelled = labelled_face(analysis.image, analysis.faces)
        for rule, face in (("labelled", labelled), ("largest", analysis.faces[0])):
            if rule == "largest" and face is labelled:
                for name, v in vectors["labelled"].items():
                    vectors[rule][name][i] = v[i]
                continue
            geometry = FaceGeometry(face.detection.box, face.mesh)
            for name, embedder in embedders.items():
                chip = embedder.crop(analysis.image.rgb, geometry)
                start = time.perf_counter()
                single = embedder.raw(chip)
                if rule == "labelled":
                    stage_ms[f"embed[{name}]"].append(1000 * (time.perf_counter() - start))
                vectors[rule][name][i] = unit(single)
                vectors[rule][f"{name}+flip"][i] = unit(single + embedder.raw(chip[:, ::-1]))
    return Embeddings(vectors, stage_ms)


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
