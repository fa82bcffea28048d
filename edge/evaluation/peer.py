"""The peer baseline: `face_recognition` (dlib HOG + ResNet-128) used the way Python users use it.

`edge-face eval --peer` prints its numbers beside edge-face's; `bench/pipeline.py` times it (pinned
to the same cores as edge-face, so ms/photo compares like for like).
"""

from __future__ import annotations

import json
import os
import time
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.evaluation.calibrate import calibration_table, fit_calibration
from edge.evaluation.dataset import FaceSet
from edge.evaluation.metrics import all_pair_scores, fmr_at, tar_at_far, ten_fold_accuracy

FACE_RECOGNITION_TOLERANCE = 0.6  # face_recognition.compare_faces default
FARS = (1e-3, 1e-4)


def import_face_recognition() -> types.ModuleType:
    """Import lazily: thread settings must come first.

    face_recognition_models 0.3.0 still imports pkg_resources (the `peer` extra pins
    setuptools < 81 for it) and warns about it on import.
    """
    with warnings.catch_warnings():  # the models package's own pkg_resources deprecation notice
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import face_recognition

    return face_recognition


def embed_with_face_recognition(
    paths: Sequence[str | Path], *, model: Literal["small", "large"] = "small"
) -> tuple[np.ndarray, dict[str, Any]]:
    """128-D descriptor of the largest HOG-detected face per photo; NaN rows where none is found.

    Library defaults throughout (upsample 1, num_jitters 1, 5-point landmarks for "small").
    Timings are per-photo medians in ms, split into decode, detect and encode.
    """
    fr = import_face_recognition()
    emb = np.full((len(paths), 128), np.nan, dtype=np.float32)
    decode: list[float] = []
    detect: list[float] = []
    encode: list[float] = []
    total: list[float] = []
    no_face: list[str] = []
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        img = fr.load_image_file(str(path))
        t1 = time.perf_counter()
        boxes = fr.face_locations(img)  # (top, right, bottom, left), HOG, upsample 1
        t2 = time.perf_counter()
        decode.append(t1 - t0)
        detect.append(t2 - t1)
        if not boxes:
            no_face.append(str(path))
            total.append(t2 - t0)
            continue
        largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        emb[i] = fr.face_encodings(img, known_face_locations=[largest], model=model)[0]
        t3 = time.perf_counter()
        encode.append(t3 - t2)
        total.append(t3 - t0)

    def median_ms(xs: list[float]) -> float:
        return float(np.median(xs) * 1e3) if xs else float("nan")

    timings = {
        "decode_ms": median_ms(decode),
        "detect_ms": median_ms(detect),
        "encode_ms": median_ms(encode),
        "total_ms": median_ms(total),
        "n_photos": len(paths),
        "no_face": len(no_face),
        "no_face_paths": no_face,
        "cpus": len(os.sched_getaffinity(0)),
    }
    return emb, timings


def euclidean_scores(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """face_recognition's own rule: score = -Euclidean distance (match when distance <= 0.6)."""
    return -np.linalg.norm(emb[pairs[:, 0]] - emb[pairs[:, 1]], axis=1)


def cosine_scores(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine of the same descriptors, the rule our engine uses."""
    a, b = emb[pairs[:, 0]], emb[pairs[:, 1]]
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def cached_embeddings(
    faceset: FaceSet, cache: Path | None, *, model: Literal["small", "large"] = "small"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed the set, or reuse `cache` (an .npz) when it holds exactly these paths and model."""
    key = [str(p) for p in faceset.paths]
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if z["paths"].tolist() == key and str(z["model"]) == model:
                return z["emb"], json.loads(str(z["timings"]))
    emb, timings = embed_with_face_recognition(faceset.paths, model=model)
    if cache is not None:
        np.savez(cache, emb=emb, paths=np.array(key), model=model, timings=json.dumps(timings))
    return emb, timings


def evaluate_peer(
    faceset: FaceSet, *, cache: Path | None = None, model: Literal["small", "large"] = "small"
) -> dict[str, Any]:
    """Peer numbers on a face set: 10-fold pair accuracy, TAR@FAR over all pairs, speed, calibration.

    A pair with a photo where no face was found scores -inf (the user gets no match, so it counts);
    accuracy on the pairs with both faces found is reported beside it.  All-pairs TAR/FAR use the
    photos with a face only, as `verify.verification_report` does for our engine.
    """
    emb, timings = cached_embeddings(faceset, cache, model=model)
    found = np.isfinite(emb).all(axis=1)
    pair_ok = found[faceset.pairs].all(axis=1)
    result: dict[str, Any] = {
        "model": model,
        "timings": timings,
        "pairs": {"n": len(faceset.same), "with_missing_face": int((~pair_ok).sum())},
        "all_pairs": {},
    }
    rules: dict[Literal["euclidean", "cosine"], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "euclidean": euclidean_scores, "cosine": cosine_scores}
    for name, rule in rules.items():
        s = np.full(len(faceset.same), -np.inf)
        s[pair_ok] = rule(emb, faceset.pairs[pair_ok])
        mean, std = ten_fold_accuracy(s, faceset.same)
        mean_found, std_found = ten_fold_accuracy(s[pair_ok], faceset.same[pair_ok])
        result["pairs"][name] = {
            "ten_fold_accuracy": mean,
            "ten_fold_std": std,
            "ten_fold_accuracy_faces_found": mean_found,  # pairs with a face in both photos only
            "ten_fold_std_faces_found": std_found,
        }

    all_scores = {}
    for name in rules:
        genuine, impostor = all_pair_scores(emb, faceset.labels, found, metric=name)
        all_scores[name] = (genuine, impostor)
        result["all_pairs"][name] = {f"far={far:g}": tar_at_far(genuine, impostor, far)._asdict() for far in FARS}
    genuine, impostor = all_scores["euclidean"]
    result["all_pairs"]["n_genuine"] = len(genuine)
    result["all_pairs"]["n_impostor"] = len(impostor)
    result["all_pairs"]["euclidean"]["tolerance=0.6"] = {
        "tar": float(np.mean(genuine >= -FACE_RECOGNITION_TOLERANCE)),
        "fmr": fmr_at(impostor, -FACE_RECOGNITION_TOLERANCE),
    }

    genuine, impostor = all_scores["cosine"]
    cal, report = fit_calibration(impostor)
    result["calibration"] = {
        "report": report,
        "table": [
            {
                "similarity": s,
                "cosine": c,
                "fmr_nominal": f,
                "fmr_empirical": fmr_at(impostor, c),
                "tar": float(np.mean(genuine >= c)),
            }
            for s, c, f in calibration_table(cal, (60, 70, 80, 90))
        ],
    }
    return result
