"""Erasure: once deleted and checkpointed, a face's vector is in no file under the state directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from store_support import DIM, MODEL, OpenStore

from bench.synthetic import SyntheticFaces, new_faces
from edge.store import FaceNotFound, Store
from edge.store.store import COLLECTIONS_DIR


def _files_holding(state_dir: Path, vector: np.ndarray) -> list[str]:
    needle = vector.astype("<f4").tobytes()
    return [p.name for p in state_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _populate(store: Store) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Collection "a" with 300 faces and "b" with 50; returns a's ids and vectors, and b's vectors."""
    syn = SyntheticFaces(DIM, 100, seed=5)
    a, b = syn.sample(np.arange(300) % 100, stream=0), syn.sample(np.arange(50), stream=1)
    for cid in "ab":
        store.create_collection(cid, face_model_version=MODEL, dim=DIM, arn=f"arn:{cid}")
    ids = [f.face_id for f in store.add_faces("a", new_faces(a), model_version=MODEL)]
    store.add_faces("b", new_faces(b), model_version=MODEL)
    store.checkpoint()
    return ids, a, b


@pytest.mark.sqlite_only
@pytest.mark.parametrize("exact_max", [0, 100_000], ids=["hnsw", "exact"])
def test_deleted_faces_leave_no_vector_on_disk(open_store: OpenStore, state_dir: Path, exact_max: int) -> None:
    store = open_store(exact_max=exact_max)
    ids, vectors, _ = _populate(store)
    victims = [0, 7, 150, 299]
    expected_before = {"store.sqlite3", "index.bin"} if exact_max == 0 else {"store.sqlite3"}
    assert set(_files_holding(state_dir, vectors[0])) == expected_before  # the scan can see them

    result = store.delete_faces("a", [ids[i] for i in victims])
    assert len(result.deleted) == len(victims)
    store.checkpoint()

    for i in victims:
        assert _files_holding(state_dir, vectors[i]) == []
        with pytest.raises(FaceNotFound):
            store.get_face("a", ids[i])
        assert ids[i] not in {h.face.face_id for h in store.search("a", vectors[i], model_version=MODEL, k=20)}
    assert not {ids[i] for i in victims} & {f.face_id for f in store.list_faces("a", limit=1000)[0]}
    assert set(_files_holding(state_dir, vectors[1])) == expected_before  # survivors untouched


@pytest.mark.sqlite_only
def test_deleted_collection_leaves_no_vector_on_disk(open_store: OpenStore, state_dir: Path) -> None:
    store = open_store(exact_max=0)
    _, a, b = _populate(store)
    uid = store.get_collection("a").uid
    assert (state_dir / COLLECTIONS_DIR / uid / "index.bin").is_file()

    store.delete_collection("a")
    store.checkpoint()

    assert not (state_dir / COLLECTIONS_DIR / uid).exists()
    assert all(_files_holding(state_dir, vector) == [] for vector in a)
    assert set(_files_holding(state_dir, b[0])) == {"store.sqlite3", "index.bin"}
