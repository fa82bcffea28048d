"""1:N identification through the Rekognition operations, as a door would use them.

Protocol: the first 80% of people by name are enrolled with one photo each (the first by
file name) through IndexFaces; every other photo is searched with SearchFacesByImage.
Enrolled people: rank-1 identification rate (threshold 0, top match) and the rate at the
default threshold 80. People never enrolled: how often they match anyone at the default.
"""

from __future__ import annotations

import base64
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Settings
from edge.errors import InvalidParameterException
from edge.evaluation.dataset import FaceSet
from edge.rekognition.operations import Rekognition
from edge.rekognition.tokens import token_secret
from edge.store import open_store
from edge.vision.pipeline import FacePipeline

ENROLLED_FRACTION = 0.8
COLLECTION = "identify-eval"


def split(faceset: FaceSet) -> tuple[dict[str, int], list[int], list[int]]:
    """(person -> enrolment photo index, probe photos of enrolled people, photos of strangers)."""
    names = sorted(faceset.names)
    enrolled_names = set(names[: int(len(names) * ENROLLED_FRACTION)])
    photos: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(faceset.labels):
        photos[faceset.names[label]].append(i)
    gallery = {name: min(idx, key=lambda i: faceset.paths[i].name) for name, idx in photos.items()
               if name in enrolled_names}
    probes = [i for name, idx in photos.items() if name in enrolled_names for i in idx if i != gallery[name]]
    strangers = [i for name, idx in photos.items() if name not in enrolled_names for i in idx]
    return gallery, sorted(probes), sorted(strangers)


def evaluate_identification(settings: Settings, faceset: FaceSet) -> dict[str, Any]:
    gallery, probes, strangers = split(faceset)
    with tempfile.TemporaryDirectory() as state:
        store = open_store(Path(state), settings.store, autosave=False)
        pipeline = FacePipeline.from_settings(settings.pipeline)
        try:
            ops = Rekognition(store, pipeline, settings.service, secret=token_secret(Path(state)))
            ops.call("CreateCollection", {"CollectionId": COLLECTION})
            not_enrolled = 0
            for name, index in gallery.items():
                result = ops.call("IndexFaces", {"CollectionId": COLLECTION, "Image": _image(faceset, index),
                                                 "ExternalImageId": name, "MaxFaces": 1, "QualityFilter": "NONE"})
                not_enrolled += not result["FaceRecords"]

            def top(index: int, threshold: float) -> str | None:
                try:
                    matches = ops.call("SearchFacesByImage", {"CollectionId": COLLECTION, "MaxFaces": 1,
                                                              "Image": _image(faceset, index),
                                                              "FaceMatchThreshold": threshold})["FaceMatches"]
                except InvalidParameterException:  # no face found in the photo
                    return None
                return matches[0]["Face"]["ExternalImageId"] if matches else None

            truth = [faceset.names[faceset.labels[i]] for i in probes]
            rank1 = [top(i, 0.0) for i in probes]
            at80 = [top(i, 80.0) for i in probes]
            stranger_hits = [top(i, 80.0) for i in strangers]
        finally:
            pipeline.close()
            store.close()
    return {
        "enrolled_people": len(gallery), "not_enrolled_no_face": not_enrolled,
        "probes": len(probes), "stranger_photos": len(strangers),
        "rank1": float(np.mean([t == p for t, p in zip(truth, rank1, strict=True)])),
        "identified_at_80": float(np.mean([t == p for t, p in zip(truth, at80, strict=True)])),
        "wrong_person_at_80": float(np.mean([p is not None and t != p for t, p in zip(truth, at80, strict=True)])),
        "strangers_matched_at_80": float(np.mean([p is not None for p in stranger_hits])),
    }


def evaluate_peer_identification(faceset: FaceSet, embeddings: np.ndarray, tolerance: float = 0.6) -> dict[str, Any]:
    """face_recognition on the same protocol: nearest enrolled face by Euclidean distance."""
    gallery, probes, strangers = split(faceset)
    names = list(gallery)
    enrolled = np.stack([embeddings[gallery[n]] for n in names])
    usable = np.isfinite(enrolled).all(axis=1)

    def nearest(index: int) -> tuple[str | None, float]:
        if not np.isfinite(embeddings[index]).all():
            return None, np.inf
        dist = np.linalg.norm(enrolled - embeddings[index], axis=1)
        dist[~usable] = np.inf
        best = int(np.argmin(dist))
        return names[best], float(dist[best])

    truth = [faceset.names[faceset.labels[i]] for i in probes]
    probe_hits = [nearest(i) for i in probes]
    stranger_hits = [nearest(i) for i in strangers]
    return {
        "rank1": float(np.mean([t == n for t, (n, _) in zip(truth, probe_hits, strict=True)])),
        "identified_at_tolerance": float(np.mean([t == n and d <= tolerance
                                                  for t, (n, d) in zip(truth, probe_hits, strict=True)])),
        "strangers_matched_at_tolerance": float(np.mean([d <= tolerance for _, d in stranger_hits])),
    }


def _image(faceset: FaceSet, index: int) -> dict[str, str]:
    return {"Bytes": base64.b64encode(faceset.paths[index].read_bytes()).decode()}
