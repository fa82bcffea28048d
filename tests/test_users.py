"""How a user is scored: its centroid, the map for its number of faces, the candidate search (real Store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.rekognition.users import centroid, search_users
from edge.similarity import SimilarityCalibration
from edge.store import BoundingBox, NewFace, Store

DIM = 8
VERSION = "test-model"
BOX = BoundingBox(width=0.5, height=0.5, left=0.25, top=0.25)
# Toy maps: users of more faces need a higher cosine for the same Similarity, as centroids do.
MAPS = {n: SimilarityCalibration((0.0, 0.5 + 0.02 * n, 1.0), (30.0, 70.0, 100.0)) for n in (1, 2, 3)}


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def towards(query: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector at exactly `cosine` to the unit `query`."""
    other = np.random.default_rng(seed).normal(size=DIM)
    other = unit(other - (other @ query) * query)
    return unit(cosine * query + np.sqrt(1 - cosine**2) * other)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state", checkpoint_interval_s=None)
    s.create_collection("door", face_model_version=VERSION, dim=DIM, arn="arn:door")
    yield s
    s.close()


def enrol(store: Store, user: str, vectors: list[np.ndarray]) -> None:
    faces = store.add_faces("door", [NewFace(vector=v, image_id=f"{user}-{i}", bounding_box=BOX, confidence=99.0)
                                     for i, v in enumerate(vectors)], model_version=VERSION)
    store.create_user("door", user)
    store.associate_faces("door", user, [f.face_id for f in faces])


def search(store: Store, query: np.ndarray, **options: object) -> list[tuple[str, float]]:
    params = {"threshold": 0.0, "max_users": 10, "exclude": None, **options}
    found = search_users(store, "door", [query], model_version=VERSION, maps=MAPS, max_faces_per_user=100,
                         **params)  # type: ignore[arg-type]
    return [(m.user_id, m.similarity) for m in found]


def test_centroid_is_the_unit_mean_direction() -> None:
    a, b = unit(np.eye(DIM)[0]), unit(np.eye(DIM)[1])
    c = centroid(np.stack([a, b]))
    assert np.linalg.norm(c) == pytest.approx(1.0)
    assert c @ a == pytest.approx(c @ b) == pytest.approx(np.sqrt(0.5))


def test_a_consistent_user_outranks_one_lucky_face(store: Store) -> None:
    q = unit(np.arange(1, DIM + 1, dtype=np.float64))
    # "lucky": one face very close, two far; "steady": three faces all close.
    enrol(store, "lucky", [towards(q, 0.97, 1), towards(q, 0.55, 2), towards(q, 0.50, 3)])
    enrol(store, "steady", [towards(q, 0.93, 4), towards(q, 0.93, 5), towards(q, 0.93, 6)])
    ranked = search(store, q)
    assert [u for u, _ in ranked] == ["steady", "lucky"]
    steady = centroid(np.stack([store.get_face_vector("door", f.face_id)
                                for f in store.list_faces("door", user_id="steady")[0]]))
    assert ranked[0][1] == pytest.approx(MAPS[3].similarity(float(q @ steady)))


def test_the_map_follows_the_number_of_faces(store: Store) -> None:
    q = unit(np.ones(DIM))
    enrol(store, "one", [towards(q, 0.9, 7)])
    enrol(store, "five", [towards(q, 0.9, s) for s in range(8, 13)])  # more faces than any map: the last
    found = dict(search(store, q))
    assert found["one"] == pytest.approx(MAPS[1].similarity(0.9), abs=1e-4)
    five = centroid(np.stack([store.get_face_vector("door", f.face_id)
                              for f in store.list_faces("door", user_id="five")[0]]))
    assert found["five"] == pytest.approx(MAPS[3].similarity(float(q @ five)), abs=1e-4)


def test_threshold_max_users_and_exclude(store: Store) -> None:
    q = unit(np.ones(DIM))
    for i, cos in enumerate((0.95, 0.9, 0.8, 0.3)):  # two nearly identical photos each
        face = towards(q, cos, 20 + i)
        enrol(store, f"u{i}", [face, unit(face + 0.01 * towards(q, 0.0, 30 + i))])
    everyone = search(store, q)
    assert [u for u, _ in everyone] == ["u0", "u1", "u2", "u3"]
    assert [s for _, s in everyone] == sorted((s for _, s in everyone), reverse=True)
    cut = everyone[1][1]
    assert [u for u, _ in search(store, q, threshold=cut)] == ["u0", "u1"]
    assert [u for u, _ in search(store, q, max_users=2)] == ["u0", "u1"]
    assert [u for u, _ in search(store, q, exclude="u0")] == ["u1", "u2", "u3"]


def test_faces_without_a_user_are_not_users(store: Store) -> None:
    q = unit(np.ones(DIM))
    store.add_faces("door", [NewFace(vector=q, image_id="loose", bounding_box=BOX, confidence=99.0)],
                    model_version=VERSION)
    assert search(store, q) == []
