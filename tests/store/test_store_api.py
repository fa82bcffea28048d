"""Store operations against real SQLite and hnswlib: collections, faces, users, pinning, recovery."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from store_support import DIM, MODEL, OpenStore

from bench.synthetic import SyntheticFaces, new_faces
from edge.store import (
    CollectionExists,
    CollectionNotFound,
    FaceModelMismatch,
    FaceNotFound,
    InvalidVector,
    Store,
    StoreLocked,
    UserExists,
    UserNotFound,
)
from edge.store.index import INDEX_FILE, MANIFEST_FILE
from edge.store.store import COLLECTIONS_DIR, DB_FILE

SYN = SyntheticFaces(DIM, 200, seed=11)


def _vectors(n: int, stream: int = 0) -> np.ndarray:
    return SYN.sample(np.arange(n) % 200, stream)


def _store_with_faces(open_store: OpenStore, n: int, **options: object) -> tuple[Store, list[str], np.ndarray]:
    store = open_store(**options)
    store.create_collection("c", face_model_version=MODEL, dim=DIM, arn="arn:aws:rekognition:x:1:collection/c")
    vectors = _vectors(n)
    ids = [face.face_id for face in store.add_faces("c", new_faces(vectors), model_version=MODEL)]
    return store, ids, vectors


def _top1(store: Store, vector: np.ndarray) -> str:
    return store.search("c", vector, model_version=MODEL, k=1)[0].face.face_id


def _max_seq(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / DB_FILE) as conn:
        return int(conn.execute("SELECT max(seq) FROM changes").fetchone()[0])


def test_collections_lifecycle_and_keyset_pages(open_store: OpenStore) -> None:
    store = open_store()
    for cid in ["b", "a", "d", "c"]:
        store.create_collection(cid, face_model_version=MODEL, dim=DIM, arn=f"arn:{cid}")
    with pytest.raises(CollectionExists):
        store.create_collection("a", face_model_version=MODEL, dim=DIM, arn="arn:a")
    first, after = store.list_collections(limit=3)
    rest, end = store.list_collections(after=after, limit=3)
    assert [c.collection_id for c in first + rest] == ["a", "b", "c", "d"] and end is None
    assert store.get_collection("b").arn == "arn:b"
    store.delete_collection("b")
    with pytest.raises(CollectionNotFound):
        store.get_collection("b")
    with pytest.raises(CollectionNotFound):
        store.delete_collection("b")
    with pytest.raises(CollectionNotFound):
        store.search("b", _vectors(1)[0], model_version=MODEL, k=1)


def test_faces_are_listed_found_and_searched(open_store: OpenStore) -> None:
    store = open_store()
    store.create_collection("c", face_model_version=MODEL, dim=DIM, arn="arn:c")
    vectors = _vectors(30)
    added = store.add_faces("c", new_faces(vectors[:20], "img-1", "photo.jpg"), model_version=MODEL)
    added += store.add_faces("c", new_faces(vectors[20:], "img-2"), model_version=MODEL)
    assert added[0].index_faces_model_version == MODEL and added[0].bounding_box.width == 0.25
    assert store.face_count("c") == 30 and store.get_face("c", added[3].face_id) == added[3]
    np.testing.assert_allclose(store.get_face_vector("c", added[3].face_id), vectors[3], atol=1e-6)

    listed, after = [], None
    while True:
        chunk, after = store.list_faces("c", after=after, limit=7)
        listed += chunk
        if after is None:
            break
    assert [f.face_id for f in listed] == sorted(f.face_id for f in added)
    some = [added[1].face_id, added[25].face_id, "missing"]
    assert {f.face_id for f in store.list_faces("c", face_ids=some)[0]} == set(some[:2])
    assert len(store.find_faces_by_image("c", image_id="img-2")) == 10
    assert len(store.find_faces_by_image("c", external_image_id="photo.jpg")) == 20

    hits = store.search("c", vectors[5], model_version=MODEL, k=50)
    assert hits[0].face == added[5] and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 30 and all(a.similarity >= b.similarity for a, b in itertools.pairwise(hits))
    close = store.search("c", vectors[5], model_version=MODEL, k=50, min_similarity=0.8)
    assert close == [hit for hit in hits if hit.similarity >= 0.8]


def test_delete_faces_reports_missing_and_user_associated(open_store: OpenStore) -> None:
    store, ids, vectors = _store_with_faces(open_store, 10)
    store.create_user("c", "u1")
    store.associate_faces("c", "u1", [ids[0]])
    result = store.delete_faces("c", [ids[0], ids[1], ids[1], "nope"])
    assert (result.deleted, result.not_found, result.user_associated) == ([ids[1]], ["nope"], [ids[0]])
    assert store.face_count("c") == 9
    assert ids[1] not in {h.face.face_id for h in store.search("c", vectors[1], model_version=MODEL, k=10)}
    with pytest.raises(FaceNotFound):
        store.get_face("c", ids[1])


def test_users_associate_disassociate_and_delete(open_store: OpenStore) -> None:
    store, ids, _ = _store_with_faces(open_store, 6)
    assert store.create_user("c", "u1").status == "CREATED"
    store.create_user("c", "u2")
    with pytest.raises(UserExists):
        store.create_user("c", "u1")
    with pytest.raises(UserNotFound):
        store.associate_faces("c", "ghost", ids[:1])

    first = store.associate_faces("c", "u1", [ids[0], ids[1], "nope"])
    assert (first.succeeded, first.not_found, first.user_status) == ([ids[0], ids[1]], ["nope"], "ACTIVE")
    clash = store.associate_faces("c", "u2", [ids[1], ids[2]])
    assert (clash.succeeded, clash.other_user) == ([ids[2]], [ids[1]])
    assert {f.face_id for f in store.list_faces("c", user_id="u1")[0]} == {ids[0], ids[1]}
    assert store.get_face("c", ids[0]).user_id == "u1"

    undo = store.disassociate_faces("c", "u1", [ids[0], ids[1], ids[2]])
    assert (undo.succeeded, undo.other_user, undo.user_status) == ([ids[0], ids[1]], [ids[2]], "CREATED")
    assert store.get_user("c", "u1").status == "CREATED" and store.get_user("c", "u2").status == "ACTIVE"
    users, after = store.list_users("c", limit=1)
    assert [u.user_id for u in users] == ["u1"] and store.list_users("c", after=after)[0][0].user_id == "u2"

    store.delete_user("c", "u2")
    assert store.get_face("c", ids[2]).user_id is None and store.user_count("c") == 1
    with pytest.raises(UserNotFound):
        store.get_user("c", "u2")


@pytest.mark.sqlite_only
@pytest.mark.parametrize("exact_max", [0, 1000], ids=["hnsw", "exact"])
def test_collection_is_pinned_to_its_face_model(open_store: OpenStore, state_dir: Path, exact_max: int) -> None:
    store, _, vectors = _store_with_faces(open_store, 20, exact_max=exact_max)
    store.checkpoint()
    index_files = {p: p.read_bytes() for p in (state_dir / COLLECTIONS_DIR).rglob("*") if p.is_file()}
    seq = _max_seq(state_dir)
    wide = SyntheticFaces(512, 2, seed=1).sample(np.arange(2), 0)
    with pytest.raises(FaceModelMismatch) as wrong_dim:
        store.add_faces("c", new_faces(vectors[:1]) + new_faces(wide), model_version=MODEL)
    assert wrong_dim.value.expected == (MODEL, DIM) and wrong_dim.value.got == (MODEL, 512)
    with pytest.raises(FaceModelMismatch):
        store.add_faces("c", new_faces(vectors[:2]), model_version="edge-test-2")
    with pytest.raises(FaceModelMismatch):
        store.search("c", wide[0], model_version=MODEL, k=1)
    with pytest.raises(InvalidVector):
        store.add_faces("c", new_faces(np.zeros((1, DIM), np.float32)), model_version=MODEL)
    store.checkpoint()
    assert store.face_count("c") == 20 and _max_seq(state_dir) == seq
    assert {p: p.read_bytes() for p in (state_dir / COLLECTIONS_DIR).rglob("*") if p.is_file()} == index_files


def test_growing_past_exact_max_switches_to_hnsw_without_losing_faces(open_store: OpenStore, state_dir: Path) -> None:
    store, ids, vectors = _store_with_faces(open_store, 40, exact_max=50)
    assert store.recovery["c"].kind == "exact"
    more = _vectors(40, stream=1)
    ids += [f.face_id for f in store.add_faces("c", new_faces(more), model_version=MODEL)]
    everything = np.vstack([vectors, more])
    assert all(_top1(store, v) == fid for v, fid in zip(everything, ids, strict=True))
    store.close()
    reopened = open_store(exact_max=50)
    assert reopened.recovery["c"].kind == "loaded"
    assert all(_top1(reopened, v) == fid for v, fid in zip(everything, ids, strict=True))
    reopened.close()
    assert open_store(exact_max=100).recovery["c"].kind == "exact"
    assert not any((state_dir / COLLECTIONS_DIR).iterdir())


def test_second_process_is_locked_out(open_store: OpenStore, state_dir: Path) -> None:
    open_store()
    with pytest.raises(StoreLocked):
        Store(state_dir, checkpoint_interval_s=None)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("retention_s", [0.0, 86400.0], ids=["pruned", "kept"])
def test_crash_image_is_replayed_from_the_change_log(open_store: OpenStore, tmp_path: Path,
                                                     retention_s: float) -> None:
    """A copy of the state directory taken between checkpoints is what kill -9 leaves behind; a change log
    pruned at the checkpoint still holds what the replay needs."""
    store, ids, vectors = _store_with_faces(open_store, 200, exact_max=0, change_log_retention_s=retention_s)
    store.checkpoint()
    more = _vectors(30, stream=1)
    ids += [f.face_id for f in store.add_faces("c", new_faces(more), model_version=MODEL)]
    store.delete_faces("c", ids[:10])
    crash = tmp_path / "crash"
    shutil.copytree(store._state_dir, crash)
    recovered = open_store(crash, exact_max=0)
    assert recovered.recovery["c"].kind == "replayed" and recovered.face_count("c") == 220
    everything = np.vstack([vectors, more])
    assert all(_top1(recovered, v) == fid for v, fid in zip(everything[10:], ids[10:], strict=True))
    found = {h.face.face_id for v in everything[:10] for h in recovered.search("c", v, model_version=MODEL, k=5)}
    assert not found & set(ids[:10])


@pytest.mark.sqlite_only
def test_the_change_log_keeps_what_recovery_needs_beyond_its_retention(open_store: OpenStore,
                                                                      state_dir: Path) -> None:
    store, ids, _ = _store_with_faces(open_store, 50, exact_max=0, change_log_retention_s=0)
    store.create_user("c", "someone")
    store.delete_faces("c", ids[:5])
    store.checkpoint()
    with sqlite3.connect(state_dir / DB_FILE) as db:
        kinds = db.execute("SELECT kind FROM changes").fetchall()
    assert kinds == [("face_deleted",)]  # the latest face change: it dates the index file
    store.close()
    assert open_store(exact_max=0).recovery["c"].kind == "loaded"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / INDEX_FILE).write_bytes((d / INDEX_FILE).read_bytes()[:1000]),
        lambda d: (d / MANIFEST_FILE).write_text((d / MANIFEST_FILE).read_text().replace('"dim": 128', '"dim": 64')),
        lambda d: (d / MANIFEST_FILE).write_text((d / MANIFEST_FILE).read_text().replace('"ip"', '"l2"')),
    ],
    ids=["truncated", "dim", "space"],
)
def test_damaged_index_is_rebuilt_not_served(open_store: OpenStore, state_dir: Path, damage: object) -> None:
    store, ids, vectors = _store_with_faces(open_store, 300, exact_max=0)
    store.close()
    (directory,) = (state_dir / COLLECTIONS_DIR).iterdir()
    damage(directory)  # type: ignore[operator]
    reopened = open_store(exact_max=0)
    assert reopened.recovery["c"].kind == "rebuilt"
    assert all(_top1(reopened, v) == fid for v, fid in zip(vectors, ids, strict=True))
    reopened.close()
    assert open_store(exact_max=0).recovery["c"].kind == "loaded"


def test_heavy_deletion_compacts_the_index(open_store: OpenStore) -> None:
    store, ids, vectors = _store_with_faces(open_store, 400, exact_max=0, compact_ratio=0.25)
    store.delete_faces("c", ids[:150])
    store.checkpoint()
    index = store._collections["c"].index
    assert (len(index), index.deleted) == (250, 0)  # type: ignore[attr-defined]
    assert all(_top1(store, v) == fid for v, fid in zip(vectors[150:], ids[150:], strict=True))


def test_recreated_collection_starts_empty(open_store: OpenStore, state_dir: Path) -> None:
    store, _, vectors = _store_with_faces(open_store, 50, exact_max=0)
    store.checkpoint()
    old_uid = store.get_collection("c").uid
    store.delete_collection("c")
    store.create_collection("c", face_model_version=MODEL, dim=DIM, arn="arn:c")
    assert store.get_collection("c").uid != old_uid and store.face_count("c") == 0
    assert store.search("c", vectors[0], model_version=MODEL, k=5) == []
    assert not (state_dir / COLLECTIONS_DIR / old_uid).exists()


@pytest.mark.sqlite_only
def test_a_version_1_database_is_upgraded_in_place(open_store: OpenStore, state_dir: Path) -> None:
    store, ids, _ = _store_with_faces(open_store, 5)
    store.close()
    with sqlite3.connect(state_dir / DB_FILE) as db:  # what the previous version made
        db.executescript("DROP TABLE requests; DROP TABLE meta; DROP TABLE collection_tags; PRAGMA user_version = 1;")
    upgraded = open_store()
    assert [f.face_id for f in upgraded.list_faces("c")[0]] == sorted(ids)
    assert upgraded.run_once("key", "fingerprint", "c", 60, lambda: "answer") == "answer"
    assert upgraded.run_once("key", "fingerprint", "c", 60, lambda: "another") == "answer"
