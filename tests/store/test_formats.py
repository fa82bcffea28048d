"""Forward-compatible state: a build opens what a newer build wrote when the newer format allows it (an
additive change), refuses it changing nothing when not, and a rollback snapshot puts the state back."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from store_support import DIM, MODEL, OpenStore, saved_graph

from bench.synthetic import SyntheticFaces, new_faces
from edge.store import StateTooNew, Store, StoreError, StoreLocked
from edge.store import index as index_module
from edge.store.access_log import LOG_FILE, Decision
from edge.store.formats import Stamp, previous_reads, sqlite_file_stamp
from edge.store.index import INDEX_FILE, MANIFEST_FILE, HnswParams
from edge.store.state import COMPLETE, found_stamps, restore_snapshot, take_snapshot
from edge.store.store import COLLECTIONS_DIR, DB_FILE

pytestmark = pytest.mark.sqlite_only
SYN = SyntheticFaces(DIM, 300, seed=5)


def _add(store: Store, vectors: np.ndarray) -> list[str]:
    return [face.face_id for face in store.add_faces("c", new_faces(vectors), model_version=MODEL)]


def _enrolled(open_store: OpenStore, n: int = 40, **options: object) -> tuple[Store, list[str], np.ndarray]:
    store = open_store(exact_max=0, **options)  # an HNSW graph, so that there are index files too
    store.create_collection("c", face_model_version=MODEL, dim=DIM, arn="arn:c")
    vectors = SYN.sample(np.arange(n), 0)
    ids = _add(store, vectors)
    store.checkpoint()
    return store, ids, vectors


def _files(state_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(state_dir)): p.read_bytes() for p in sorted(state_dir.rglob("*"))
            if p.is_file() and not p.name.endswith("-shm")}  # -shm: SQLite's shared memory, not the state


def _stamp_as(path: Path, stamp: Stamp, addition: str = "") -> None:
    """What a newer build leaves: its version, its min_reader, and whatever it added."""
    with sqlite3.connect(path) as conn:
        conn.executescript(f"CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                           f"INSERT OR REPLACE INTO meta VALUES ('min_reader', {stamp.min_reader}); {addition}"
                           f"PRAGMA user_version = {stamp.version};")
    conn.close()


def _manifests(state_dir: Path) -> list[Path]:
    return sorted((state_dir / COLLECTIONS_DIR).glob(f"*/{MANIFEST_FILE}"))


def _top1(store: Store, vector: np.ndarray) -> str:
    return store.search("c", vector, model_version=MODEL, k=1)[0].face.face_id


def test_state_from_a_newer_compatible_build_opens_and_serves(open_store: OpenStore, state_dir: Path) -> None:
    store, ids, vectors = _enrolled(open_store)
    store.close()
    _stamp_as(state_dir / DB_FILE, Stamp(4, 2), "CREATE TABLE face_notes (face_id TEXT, note TEXT);")
    _stamp_as(state_dir / LOG_FILE, Stamp(2, 1), "ALTER TABLE decisions ADD COLUMN device TEXT;")
    for manifest in _manifests(state_dir):  # an index format 3 that format 1 may read, with a field it ignores
        fields = json.loads(manifest.read_text()) | {"format": 3, "min_reader": 1, "graph_quality": 0.99}
        manifest.write_text(json.dumps(fields))

    older = open_store(exact_max=0)
    assert older.recovery["c"].kind == "loaded"  # the index files were used as they are, not rebuilt
    assert [_top1(older, v) for v in vectors] == ids
    added = _add(older, SYN.sample(np.arange(1), 1))
    older.access_log.record(Decision(1.0, "SearchFaces", None, "c", ids[0], None, None, 99.0, 80.0))
    older.close()
    # What the newer build added is still there, and still says which builds may read it; the index, a cache
    # this build saved again after the new face, is in this build's format.
    assert found_stamps(state_dir) == {"store": Stamp(4, 2), "access_log": Stamp(2, 1), "index": Stamp(1, 1)}
    with sqlite3.connect(state_dir / DB_FILE) as conn:
        assert conn.execute("SELECT count(*) FROM face_notes").fetchone() == (0,)
    conn.close()
    assert [f.face_id for f in open_store().list_faces("c", limit=100)[0]] == sorted(ids + added)


def test_state_from_an_incompatible_newer_build_is_refused_unchanged(open_store: OpenStore, state_dir: Path) -> None:
    store, _, _ = _enrolled(open_store)
    store.close()
    _stamp_as(state_dir / DB_FILE, Stamp(4, 4), "CREATE TABLE faces_v4 (label INTEGER);")
    before = _files(state_dir)
    with pytest.raises(StateTooNew) as refused:
        open_store()
    message = str(refused.value)
    assert "format version 4" in message and "reads up to version 3" in message
    assert "restore the state saved before the upgrade" in message
    assert _files(state_dir) == before


def test_an_incompatible_access_log_is_refused_before_the_store_is_migrated(open_store: OpenStore,
                                                                            state_dir: Path) -> None:
    store, _, _ = _enrolled(open_store)
    store.close()
    with sqlite3.connect(state_dir / DB_FILE) as conn:  # a version 1 store: this build would migrate it
        conn.executescript("DROP TABLE requests; DROP TABLE meta; DROP TABLE collection_tags; PRAGMA user_version = 1;")
    conn.close()
    _stamp_as(state_dir / LOG_FILE, Stamp(2, 2))
    before = _files(state_dir)
    with pytest.raises(StateTooNew, match=r"access\.sqlite3"):
        open_store()
    assert _files(state_dir) == before


def test_an_index_only_a_newer_build_reads_is_rebuilt_from_the_database(open_store: OpenStore,
                                                                       state_dir: Path) -> None:
    store, ids, vectors = _enrolled(open_store)
    store.close()
    for manifest in _manifests(state_dir):
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format": 3, "min_reader": 3}))
    older = open_store(exact_max=0)
    assert older.recovery["c"].kind == "rebuilt"  # a cache: the database is the truth
    assert [_top1(older, v) for v in vectors] == ids


def test_files_this_build_writes_carry_no_min_reader_when_it_equals_the_version(open_store: OpenStore,
                                                                                state_dir: Path) -> None:
    """So that builds from before stamps, which know nothing of it, read them as they always did."""
    _enrolled(open_store)[0].close()
    assert all("min_reader" not in json.loads(m.read_text()) for m in _manifests(state_dir))
    with sqlite3.connect(state_dir / DB_FILE) as conn:
        # The store's version 3 (tags) is one version 2 may read: its min_reader differs, and is recorded.
        assert conn.execute("SELECT value FROM meta WHERE key = 'min_reader'").fetchone() == (2,)
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
    conn.close()
    assert sqlite_file_stamp(state_dir / LOG_FILE) == Stamp(1, 1)


def test_migrations_keep_or_raise_the_min_reader_as_the_build_says() -> None:
    additive, breaking = Stamp(3, 2), Stamp(3, 3)
    assert Stamp(2, 2).opened_by(additive) == Stamp(3, 2)
    assert Stamp(2, 1).opened_by(additive) == Stamp(3, 2)  # never below what this build's own rows need
    assert Stamp(2, 2).opened_by(breaking) == Stamp(3, 3)
    assert Stamp(4, 2).opened_by(additive) == Stamp(4, 2)  # a newer file is left as it is
    assert Stamp(3, 2).readable_by(2) and not Stamp(3, 3).readable_by(2)


def test_what_the_previous_release_reads() -> None:
    """A release that knows stamps reads up to its version; one from before them, only its own version."""
    assert previous_reads(Stamp(3, 2), previous=2, legacy=2)
    assert not previous_reads(Stamp(3, 3), previous=2, legacy=2)
    assert previous_reads(Stamp(2, 2), previous=None, legacy=2)
    assert not previous_reads(Stamp(3, 2), previous=None, legacy=2)


def test_a_snapshot_taken_while_the_store_writes_restores_the_state_of_its_moment(open_store: OpenStore,
                                                                                   state_dir: Path,
                                                                                   tmp_path: Path) -> None:
    store, ids, vectors = _enrolled(open_store)
    snapshot = state_dir / "rollback-snapshot"
    writing = threading.Thread(target=_add, args=(store, SYN.sample(np.arange(200), 2)))
    writing.start()
    take_snapshot(state_dir, snapshot)  # the daemon runs: it holds the lock, and the snapshot needs none
    writing.join()
    assert snapshot.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600) for p in snapshot.rglob("*"))
    with pytest.raises(StoreLocked):
        restore_snapshot(state_dir, snapshot)  # never under a running daemon

    # The new release enrols, deletes, migrates beyond what this build reads, and is stopped.
    store.delete_faces("c", ids[:5])
    store.close()
    _stamp_as(state_dir / DB_FILE, Stamp(4, 4), "CREATE TABLE faces_v4 (label INTEGER);")
    with pytest.raises(StateTooNew):
        open_store()

    restore_snapshot(state_dir, snapshot)
    restored = open_store()
    faces = {f.face_id for f in restored.list_faces("c", limit=1000)[0]}
    assert set(ids) <= faces  # the five deleted after the snapshot are back: the rollback undoes them
    assert len(faces) in (len(ids), len(ids) + 200)  # the concurrent batch wholly or not at all
    assert [_top1(restored, v) for v in vectors] == ids
    assert sqlite_file_stamp(state_dir / DB_FILE) == Stamp(3, 2)


def test_a_snapshot_cut_short_is_never_restored(open_store: OpenStore, state_dir: Path) -> None:
    _enrolled(open_store)[0].close()
    snapshot = state_dir / "rollback-snapshot"
    take_snapshot(state_dir, snapshot)
    (snapshot / COMPLETE).unlink()
    before = _files(state_dir)
    with pytest.raises(StoreError, match="not a complete snapshot"):
        restore_snapshot(state_dir, snapshot)
    assert _files(state_dir) == before


def test_a_version_2_store_gains_tags_and_a_version_2_build_may_still_open_it(open_store: OpenStore,
                                                                             state_dir: Path) -> None:
    """Tags are additive (min_reader stays 2): a version 2 build opens the file, and a collection it deletes,
    not knowing tags, never hands them on to a namesake."""
    store, ids, _ = _enrolled(open_store)
    store.close()
    with sqlite3.connect(state_dir / DB_FILE) as conn:  # the store as a version 2 build leaves it
        conn.executescript("DROP TABLE collection_tags; PRAGMA user_version = 2;")
    conn.close()
    migrated = open_store(exact_max=0)
    assert [f.face_id for f in migrated.list_faces("c", limit=100)[0]] == sorted(ids)
    migrated.tag_collection("c", {"team": "door"}, max_tags=50)
    migrated.close()
    assert sqlite_file_stamp(state_dir / DB_FILE) == Stamp(3, 2)
    assert Stamp(3, 2).readable_by(2)
    with sqlite3.connect(state_dir / DB_FILE) as conn:  # a version 2 build's DeleteCollection: tags untouched
        for table in ("faces", "users", "collections", "changes", "requests"):
            conn.execute(f"DELETE FROM {table} WHERE collection_id = 'c'")
    conn.close()
    again = open_store()
    again.create_collection("c", face_model_version=MODEL, dim=DIM, arn="arn:c")
    assert again.tags("c") == {}
    again.checkpoint()
    with sqlite3.connect(state_dir / DB_FILE) as conn:
        assert conn.execute("SELECT count(*) FROM collection_tags").fetchone() == (0,)  # the orphans pruned
    conn.close()


def test_an_earlier_builds_zeroed_slots_get_stand_ins_at_the_first_checkpoint(
    open_store: OpenStore, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier build zeroed deleted faces' vectors in the graph's file, which cut the search's paths through
    them: the first checkpoint after a start gives those slots their stand-ins, without another deletion."""
    store, ids, vectors = _enrolled(open_store, n=200)
    store.delete_faces("c", ids[:40])
    scrub = index_module._scrub_deleted

    def zeroing(path: Path, dim: int, params: HnswParams, element_count: int) -> int:
        deleted = scrub(path, dim, params, element_count)
        records, rows, columns = saved_graph(path, dim)
        records[rows, columns] = 0
        records.flush()
        return deleted

    monkeypatch.setattr(index_module, "_scrub_deleted", zeroing)
    store.checkpoint()
    store.close()
    monkeypatch.undo()
    (index_file,) = (state_dir / COLLECTIONS_DIR).glob(f"*/{INDEX_FILE}")
    records, rows, columns = saved_graph(index_file, DIM)
    assert len(rows) == 40 and not records[rows, columns].any()
    del records

    store = open_store(exact_max=0)
    assert all(_top1(store, vector) == face for face, vector in zip(ids[40:], vectors[40:], strict=True))
    store.checkpoint()
    records, rows, columns = saved_graph(index_file, DIM)
    surviving = {store.get_face_vector("c", face).astype("<f4").tobytes() for face in ids[40:]}
    assert len(rows) == 40 and all(row.tobytes() in surviving for row in records[rows, columns])
