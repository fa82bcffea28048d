"""1:N identification through the Rekognition operations, as a door would use them.

Faces protocol: the first 80% of people by name are enrolled with one photo each (the first by
file name) through IndexFaces; every other photo is searched with SearchFacesByImage.
Enrolled people: rank-1 identification rate (threshold 0, top match) and the rate at the
default threshold 80. People never enrolled: how often they match anyone at the default.

Users protocol: the same people, each with at least n+1 photos, become users of their first n
photos (IndexFaces, CreateUser, AssociateFaces with its default UserMatchThreshold); their other
photos and every photo of the people never enrolled are searched with SearchUsersByImage.
"""

from __future__ import annotations

import base64
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
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
USER_PHOTOS = (1, 3, 5)
THRESHOLDS = (70.0, 75.0, 80.0)
#: A search's best answer: who (None: nobody, or no face in the photo) and at what Similarity.
Top = tuple[str | None, float]


def photos_by_person(faceset: FaceSet) -> tuple[dict[str, list[int]], set[str]]:
    """(person -> photo indices by file name, the first 80% of names: the people who are enrolled)."""
    names = sorted(faceset.names)
    photos: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(faceset.paths)), key=lambda i: faceset.paths[i].name):
        photos[faceset.names[faceset.labels[i]]].append(i)
    return photos, set(names[: int(len(names) * ENROLLED_FRACTION)])


def split(faceset: FaceSet) -> tuple[dict[str, int], list[int], list[int]]:
    """(person -> enrolment photo index, probe photos of enrolled people, photos of strangers)."""
    photos, enrolled_names = photos_by_person(faceset)
    gallery = {name: idx[0] for name, idx in photos.items() if name in enrolled_names}
    probes = [i for name, idx in photos.items() if name in enrolled_names for i in idx[1:]]
    strangers = [i for name, idx in photos.items() if name not in enrolled_names for i in idx]
    return gallery, sorted(probes), sorted(strangers)


@contextmanager
def operations(settings: Settings) -> Iterator[Rekognition]:
    """The operations over a fresh store in a temporary directory, with one collection."""
    with tempfile.TemporaryDirectory() as state:
        store = open_store(Path(state), settings.store, autosave=False)
        pipeline = FacePipeline.from_settings(settings.pipeline)
        try:
            ops = Rekognition(store, pipeline, settings.service, secret=token_secret(Path(state)))
            ops.call("CreateCollection", {"CollectionId": COLLECTION})
            yield ops
        finally:
            pipeline.close()
            store.close()


def rates(faceset: FaceSet, probes: list[int], probe_tops: list[Top], stranger_tops: list[Top]) -> dict[str, Any]:
    """Rank-1, and at Similarity 70, 75 and 80 (the default): enrolled people's photos identified or
    taken for someone else, strangers' photos matched to anyone."""
    truth = [faceset.names[faceset.labels[i]] for i in probes]
    right = np.array([t == who for t, (who, _) in zip(truth, probe_tops, strict=True)])
    probe_sim = np.array([sim for _, sim in probe_tops])
    stranger_sim = np.array([sim for _, sim in stranger_tops])
    out: dict[str, Any] = {"probes": len(probes), "stranger_photos": len(stranger_tops), "rank1": float(right.mean())}
    for t in THRESHOLDS:
        out[f"identified_at_{t:g}"] = float(np.mean(right & (probe_sim >= t)))
        out[f"wrong_person_at_{t:g}"] = float(np.mean(~right & (probe_sim >= t)))
        out[f"strangers_matched_at_{t:g}"] = float(np.mean(stranger_sim >= t))
    return out


def evaluate_identification(settings: Settings, faceset: FaceSet) -> dict[str, Any]:
    """The faces protocol: one photo per person through IndexFaces, SearchFacesByImage."""
    gallery, probes, strangers = split(faceset)
    with operations(settings) as ops:
        not_enrolled = 0
        for name, index in gallery.items():
            result = ops.call("IndexFaces", {"CollectionId": COLLECTION, "Image": _image(faceset, index),
                                             "ExternalImageId": name, "MaxFaces": 1, "QualityFilter": "NONE"})
            not_enrolled += not result["FaceRecords"]

        def top(index: int) -> Top:
            try:
                matches = ops.call("SearchFacesByImage", {"CollectionId": COLLECTION, "MaxFaces": 1,
                                                          "Image": _image(faceset, index),
                                                          "FaceMatchThreshold": 0.0})["FaceMatches"]
            except InvalidParameterException:  # no face found in the photo
                return None, 0.0
            return (matches[0]["Face"]["ExternalImageId"], matches[0]["Similarity"]) if matches else (None, 0.0)

        result = rates(faceset, probes, [top(i) for i in probes], [top(i) for i in strangers])
    return {"enrolled_people": len(gallery), "not_enrolled_no_face": not_enrolled, **result}


def evaluate_users(settings: Settings, faceset: FaceSet, n_photos: int) -> dict[str, Any]:
    """The users protocol with n enrolment photos per person (people with at least n+1 photos)."""
    photos, enrolled_names = photos_by_person(faceset)
    users = {name: idx[:n_photos] for name, idx in photos.items()
             if name in enrolled_names and len(idx) > n_photos}
    if not users:
        return {"enrolled_people": 0, "note": f"no enrolled person has {n_photos + 1} photos"}
    probes = sorted(i for name, idx in users.items() for i in photos[name][n_photos:])
    strangers = sorted(i for name, idx in photos.items() if name not in enrolled_names for i in idx)
    not_indexed, faces = 0, []
    refused: defaultdict[str, int] = defaultdict(int)
    with operations(settings) as ops:
        for name, indices in users.items():
            ops.call("CreateUser", {"CollectionId": COLLECTION, "UserId": name})
            face_ids = []
            for i in indices:
                result = ops.call("IndexFaces", {"CollectionId": COLLECTION, "Image": _image(faceset, i),
                                                 "ExternalImageId": name, "MaxFaces": 1})
                face_ids += [r["Face"]["FaceId"] for r in result["FaceRecords"]]
                not_indexed += not result["FaceRecords"]
            if face_ids:
                result = ops.call("AssociateFaces", {"CollectionId": COLLECTION, "UserId": name, "FaceIds": face_ids})
                faces.append(len(result["AssociatedFaces"]))
                for face in result["UnsuccessfulFaceAssociations"]:
                    refused["/".join(face["Reasons"])] += 1

        def top(index: int) -> Top:
            matches = ops.call("SearchUsersByImage", {"CollectionId": COLLECTION, "MaxUsers": 1,
                                                      "Image": _image(faceset, index),
                                                      "UserMatchThreshold": 0.0})["UserMatches"]
            return (matches[0]["User"]["UserId"], matches[0]["Similarity"]) if matches else (None, 0.0)

        result = rates(faceset, probes, [top(i) for i in probes], [top(i) for i in strangers])
    return {"enrolled_people": len(users), "photos_per_person": n_photos, "photos_without_face": not_indexed,
            "association_refused": dict(refused), "mean_faces_per_user": float(np.mean(faces)), **result}


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
