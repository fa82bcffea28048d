"""Erasure: once deleted and checkpointed, a face's vector, UserId or ExternalImageId is in no file under the
state directory; and every file there is private."""

from __future__ import annotations

import logging
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


#: Enough rows for SQLite's b-trees to split and move rows between pages, leaving copies in free space.
PEOPLE = 200


def _files_holding_text(state_dir: Path, text: str) -> list[str]:
    needle = text.encode()
    return [p.name for p in state_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _people(store: Store, count: int) -> tuple[list[str], list[str], list[str]]:
    """Collection "a": one face per person, each with an ExternalImageId and a user of its own, made in a
    shuffled order so that SQLite's b-trees split and move rows between pages as they grow."""
    store.create_collection("a", face_model_version=MODEL, dim=DIM, arn="arn:a")
    order = np.random.default_rng(3).permutation(count)
    users = [f"staff-{i:05d}-Given-Family" for i in range(count)]
    externals = [f"badge-{i:05d}-Given-Family.jpg" for i in range(count)]
    vectors = SyntheticFaces(DIM, count, seed=9).sample(np.arange(count), stream=0)
    faces: list[str] = [""] * count
    for i in order:
        (face,) = store.add_faces("a", new_faces(vectors[i:i + 1], external_image_id=externals[i]),
                                  model_version=MODEL)
        faces[i] = face.face_id
        store.create_user("a", users[i])
        store.associate_faces("a", users[i], [face.face_id])
    store.checkpoint()
    return users, externals, faces


@pytest.mark.sqlite_only
def test_deleted_users_and_external_image_ids_leave_no_byte_on_disk(open_store: OpenStore, state_dir: Path) -> None:
    store = open_store(exact_max=0)
    users, externals, faces = _people(store, PEOPLE)
    assert _files_holding_text(state_dir, users[0]) == ["store.sqlite3"]  # the scan can see them
    assert _files_holding_text(state_dir, externals[0]) == ["store.sqlite3"]
    victims = range(0, PEOPLE, 5)
    for i in victims:
        store.delete_user("a", users[i])
    store.delete_faces("a", [faces[i] for i in victims])
    store.checkpoint()

    leaked = [text for i in victims for text in (users[i], externals[i]) if _files_holding_text(state_dir, text)]
    assert leaked == []
    assert {u.user_id for u in store.list_users("a", limit=1000)[0]} == {users[i] for i in range(PEOPLE)} - {
        users[i] for i in victims}
    assert _files_holding_text(state_dir, users[1]) == ["store.sqlite3"]  # survivors untouched
    assert _files_holding_text(state_dir, externals[1]) == ["store.sqlite3"]


def test_deleted_collection_leaves_no_user_or_external_image_id_on_disk(open_store: OpenStore,
                                                                       state_dir: Path) -> None:
    store = open_store(exact_max=0)
    users, externals, _ = _people(store, 200)
    store.delete_collection("a")
    store.checkpoint()
    assert [text for text in users + externals if _files_holding_text(state_dir, text)] == []


@pytest.mark.sqlite_only
def test_rows_sqlite_moved_between_pages_leave_no_copy(open_store: OpenStore, state_dir: Path) -> None:
    """secure_delete zeroes a deleted row where it lies, not the copy a b-tree split left in the free space of
    the page the row moved from. Inserted in this (seeded) order, 3,000 ExternalImageIds leave such copies of
    rows deleted later; the checkpoint's scrub must remove them too."""
    store = open_store(exact_max=0)
    store.create_collection("a", face_model_version=MODEL, dim=DIM, arn="arn:a")
    count = 3000
    rng = np.random.default_rng(3)
    externals = [f"badge-{i:05d}-yyyyyyyyyy" for i in range(count)]
    vectors = SyntheticFaces(DIM, count, seed=1).sample(np.arange(count), stream=0)
    order = rng.permutation(count)
    added = store.add_faces("a", [new_faces(vectors[i:i + 1], external_image_id=externals[i])[0] for i in order],
                            model_version=MODEL)
    ids = dict(zip(order.tolist(), [f.face_id for f in added], strict=True))
    store.checkpoint()
    victims = rng.choice(count, count // 5, replace=False)
    store.delete_faces("a", [ids[i] for i in victims])
    store.checkpoint()
    files = b"".join(p.read_bytes() for p in state_dir.rglob("*") if p.is_file())
    assert [externals[i] for i in victims if externals[i].encode() in files] == []
    survivors = set(range(count)) - set(victims.tolist())
    assert all(externals[i].encode() in files for i in survivors)


def test_a_state_directory_found_open_is_made_private(open_store: OpenStore, state_dir: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Files an older version left under umask 022 (0644 in a 0755 directory) are tightened at open."""
    store = open_store(exact_max=0, reserve_bytes=4096)
    store.create_collection("a", face_model_version=MODEL, dim=DIM, arn="arn:a")
    store.add_faces("a", new_faces(SyntheticFaces(DIM, 4, seed=1).sample(np.arange(4), stream=0)),
                    model_version=MODEL)
    store.close()
    for path in [state_dir, *state_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    with caplog.at_level(logging.WARNING):
        open_store(exact_max=0, reserve_bytes=4096)
    assert {oct(p.stat().st_mode & 0o777) for p in [state_dir, *state_dir.rglob("*")]} == {"0o700", "0o600"}
    assert "made private" in caplog.text and "index.bin" in caplog.text
