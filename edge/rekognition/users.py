"""How SearchUsers and SearchUsersByImage score a user: the probe against the centroid of its faces.

Measured on faces-dev (README, "Several photos per person"), the centroid (the normalised sum of
a user's unit face vectors) tells people apart better than the best face, the mean of the top k
or the mean cosine, at every false-match rate. Its cosines also run higher for strangers, the
more so the more faces it averages, so a user's Similarity comes from the map fitted for users
with that many faces (`edge-face calibrate`), and Similarity 80 keeps meaning FMR 1e-5 per
comparison of a photo with a user.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge.similarity import SimilarityCalibration
from edge.store import Store

#: Users are found through their faces. A user whose centroid reaches a cosine c has a face at
#: c * |mean of its unit faces| or more; that norm is above this unless the user's own faces are
#: less alike than strangers' typically are, which AssociateFaces' UserMatchThreshold refuses.
COHESION = 0.95
#: The most faces one query looks at to find candidate users (as many as Rekognition's MaxFaces).
CANDIDATE_FACES = 4096


def centroid(vectors: np.ndarray) -> np.ndarray:
    """The unit vector along the sum of a user's unit face vectors."""
    total = np.asarray(vectors, dtype=np.float64).sum(axis=0)
    return (total / np.linalg.norm(total)).astype(np.float32)


def user_similarity(maps: Mapping[int, SimilarityCalibration], faces: np.ndarray, queries: np.ndarray) -> float:
    """How well the best of `queries` matches a user of `faces`: its cosine to their centroid on the map
    for users of that many faces (`maps[n]`; more faces than any key use the largest).  SearchUsers
    ranks users by it and AssociateFaces compares it with UserMatchThreshold."""
    cosine = float(np.max(np.atleast_2d(queries) @ centroid(faces)))
    return float(maps[min(len(faces), max(maps))].similarity(cosine))


@dataclass(frozen=True)
class UserMatch:
    user_id: str
    similarity: float


def search_users(store: Store, collection_id: str, queries: Sequence[np.ndarray], *, model_version: str,
                 maps: Mapping[int, SimilarityCalibration], threshold: float, max_users: int,
                 max_faces_per_user: int, exclude: str | None = None) -> list[UserMatch]:
    """Users whose centroid reaches `threshold` for at least one query vector, best first.

    `maps[n]` is the Similarity map for users of n faces (a user of more faces than any key uses
    the largest). Candidates are taken best face first; once `max_users` are kept, a user whose
    best face could not lift its centroid above the last kept one ends the search.
    """
    def ceiling(best_face: float) -> float:
        """The highest Similarity any user with this best face could reach."""
        return max(m.similarity(min(best_face / COHESION, 1.0)) for m in maps.values())

    floor = COHESION * min(m.min_cosine(threshold) for m in maps.values())
    k = max(1, min(CANDIDATE_FACES, store.face_count(collection_id)))
    best_face: dict[str, float] = {}
    for vector in queries:
        for hit in store.search(collection_id, vector, model_version=model_version, k=k, min_similarity=floor):
            user = hit.face.user_id
            if user is not None and user != exclude:
                best_face[user] = max(best_face.get(user, -1.0), hit.similarity)
    query_matrix = np.stack(queries)
    kept: list[UserMatch] = []
    for user, face_cosine in sorted(best_face.items(), key=lambda item: -item[1]):
        if len(kept) >= max_users and ceiling(face_cosine) < kept[max_users - 1].similarity:
            break
        faces = store.list_faces(collection_id, user_id=user, limit=max_faces_per_user)[0]
        vectors = np.stack([store.get_face_vector(collection_id, f.face_id) for f in faces])
        similarity = user_similarity(maps, vectors, query_matrix)
        if similarity >= threshold:
            kept.append(UserMatch(user, similarity))
            kept.sort(key=lambda m: -m.similarity)
    return kept[:max_users]
