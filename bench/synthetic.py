"""Clustered synthetic embeddings for the store's tests and benchmarks (test data, not product code).

Uniform random vectors are nearly orthogonal and make ANN search look easier than it is.  Real face
embeddings cluster by identity (same person ~0.9 cosine) and share a common component (different
people ~0.1-0.5), so near-ties between one person's faces are what recall is measured on.
"""

from __future__ import annotations

import numpy as np

from edge.store.models import BoundingBox, NewFace, Vector

SAME_PERSON_COSINE = 0.9
SHARED_COMPONENT = 0.3
"""Expected cosine between two identity centres."""


class SyntheticFaces:
    """Identity centres plus per-sample noise; sampling is deterministic given the seed."""

    def __init__(self, dim: int, identities: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        shared = _unit(rng.standard_normal((1, dim)))
        own = _unit(rng.standard_normal((identities, dim)))
        self.centres = _unit(np.sqrt(SHARED_COMPONENT) * shared + np.sqrt(1 - SHARED_COMPONENT) * own)
        # Two samples c + e1, c + e2 with |e|^2 = dim * sigma^2 have cosine ~ 1 / (1 + dim * sigma^2).
        self._sigma = float(np.sqrt((1 / SAME_PERSON_COSINE - 1) / dim))
        self._seed = seed

    def sample(self, identities: np.ndarray, stream: int) -> Vector:
        """One unit vector per identity index; `stream` picks an independent, repeatable noise draw."""
        rng = np.random.default_rng((self._seed, stream))
        noise = rng.standard_normal((len(identities), self.centres.shape[1])) * self._sigma
        return _unit(self.centres[identities] + noise)


def new_faces(vectors: Vector, image_id: str = "image", external_image_id: str | None = None) -> list[NewFace]:
    """Wrap vectors as faces of one image, with a fixed box and confidence."""
    box = BoundingBox(width=0.25, height=0.3, left=0.4, top=0.2)
    return [NewFace(vector, image_id, box, 99.5, external_image_id) for vector in vectors]


def _unit(rows: np.ndarray) -> Vector:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
