"""The storage facade the Rekognition operations call: SQLite for truth, one vector index per collection.

Every mutation commits to SQLite first and is applied to the in-memory index before it returns, both
under one store-wide write lock, so the index always reflects a prefix of the change log.  Index files
are only a cache: saved periodically and at close, verified at open, replayed forward from the change
log or rebuilt from SQLite.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from edge.config import StoreSettings
from edge.store.db import Database, Tx, page
from edge.store.errors import (
    CollectionExists,
    CollectionNotFound,
    FaceModelMismatch,
    FaceNotFound,
    IndexInvalid,
    StoreLocked,
    UserExists,
    UserNotFound,
)
from edge.store.index import ExactIndex, HnswIndex, HnswParams, VectorIndex, normalize
from edge.store.models import (
    CollectionRecord,
    FaceAssociation,
    FaceDeletion,
    FaceRecord,
    NewFace,
    Recovery,
    SearchHit,
    UserRecord,
    Vector,
)
from edge.store.rwlock import RWLock

log = logging.getLogger(__name__)

DB_FILE = "store.sqlite3"
LOCK_FILE = "LOCK"
COLLECTIONS_DIR = "collections"


@dataclass(slots=True)
class _Collection:
    """In-memory state of one collection; `index` is swapped whole, under `lock`, never half-built."""

    record: CollectionRecord
    index: VectorIndex
    lock: RWLock
    applied_seq: int
    """Latest face change of the collection reflected in `index`."""
    saved_seq: int
    """change_seq of the index file on disk; -1 when there is none worth keeping."""
    recovery: Recovery
    unpurged: bool = False
    """hnswlib memory still holds vectors of deleted faces (purged by reloading the scrubbed file)."""
    promoting: bool = False
    """An HNSW index is being built aside to replace the grown exact one."""


class _Replay(NamedTuple):
    changes: int
    removed: int
    seq: int


def open_store(state_dir: Path, settings: StoreSettings, *, autosave: bool = True) -> Store:
    """A store configured from the `store` settings section."""
    return Store(state_dir, exact_max=settings.exact_max,
                 hnsw=HnswParams(m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction, ef=settings.hnsw_ef),
                 checkpoint_interval_s=settings.checkpoint_interval_s if autosave else None)


class Store:
    """Durable face collections for one process (an flock on the state directory enforces that).

    exact_max: collections with at most this many faces use exact search, larger ones HNSW.
    checkpoint_interval_s: how often a background thread saves changed indexes and truncates the
    WAL (None: only at close or on `checkpoint()`); it bounds how long erased vectors stay on disk.
    compact_ratio: rebuild an HNSW index once this fraction of its slots holds deleted faces.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        exact_max: int = 20_000,
        hnsw: HnswParams = HnswParams(),  # noqa: B008 - frozen dataclass
        checkpoint_interval_s: float | None = 300.0,
        compact_ratio: float = 0.25,
    ) -> None:
        self._state_dir = state_dir
        self._exact_max = exact_max
        self._hnsw = hnsw
        self._compact_ratio = compact_ratio
        state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(state_dir / LOCK_FILE)
        self._write_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._collections: dict[str, _Collection] = {}
        try:
            self._db = Database(state_dir / DB_FILE)
            try:
                self._open_collections()
                self.checkpoint()  # persist what recovery changed and drop erased vectors from the WAL
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._stop = threading.Event()
        self._autosave: threading.Thread | None = None
        if checkpoint_interval_s is not None:
            self._autosave = threading.Thread(
                target=self._autosave_loop, args=(checkpoint_interval_s,), name="store-checkpoint", daemon=True
            )
            self._autosave.start()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Save changed indexes and release the state directory."""
        if self._lock_fd < 0:
            return
        self._stop.set()
        if self._autosave is not None:
            self._autosave.join()
        try:
            self.checkpoint()
        finally:
            self._db.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    @property
    def recovery(self) -> dict[str, Recovery]:
        """What opening the store did to each collection's index."""
        return {cid: state.recovery for cid, state in dict(self._collections).items()}

    # collections

    def create_collection(self, collection_id: str, *, face_model_version: str, dim: int, arn: str) -> CollectionRecord:
        record = CollectionRecord(
            collection_id=collection_id,
            arn=arn,
            face_model_version=face_model_version,
            dim=dim,
            created_at=time.time(),
            uid=uuid.uuid4().hex,
        )
        with self._write_lock:
            with self._db.write() as tx:
                if tx.get_collection(collection_id) is not None:
                    raise CollectionExists(collection_id)
                tx.insert_collection(record)
                tx.record_changes(collection_id, "collection_created", [collection_id])
            self._collections[collection_id] = _Collection(
                record, ExactIndex(dim), RWLock(), applied_seq=0, saved_seq=-1, recovery=Recovery("exact")
            )
        return record

    def delete_collection(self, collection_id: str) -> None:
        """Delete the collection with all its faces and users, vectors included (rows, index, files)."""
        with self._write_lock:
            state = self._state(collection_id)
            with self._db.write() as tx:
                tx.delete_collection(collection_id)
                tx.record_changes(collection_id, "collection_deleted", [collection_id])
            del self._collections[collection_id]
            with state.lock.write():
                state.index = ExactIndex(state.record.dim)
            shutil.rmtree(self._directory(state.record), ignore_errors=True)

    def get_collection(self, collection_id: str) -> CollectionRecord:
        return self._state(collection_id).record

    def list_collections(
        self, after: str | None = None, limit: int = 1000
    ) -> tuple[list[CollectionRecord], str | None]:
        with self._db.read() as tx:
            return page(tx.list_collections(after, limit + 1), limit, "collection_id")

    def face_count(self, collection_id: str) -> int:
        self._state(collection_id)
        with self._db.read() as tx:
            return tx.face_count(collection_id)

    def user_count(self, collection_id: str) -> int:
        self._state(collection_id)
        with self._db.read() as tx:
            return tx.user_count(collection_id)

    # faces

    def add_faces(self, collection_id: str, faces: Sequence[NewFace], *, model_version: str) -> list[FaceRecord]:
        """Index faces in one transaction; once this returns they are durable and searchable."""
        if not faces:
            return []
        with self._write_lock:
            state = self._state(collection_id)
            vectors = self._pinned(state.record, model_version, [face.vector for face in faces])
            with self._db.write() as tx:
                inserted = tx.insert_faces(collection_id, faces, vectors, model_version)
                labels = np.asarray([label for label, _ in inserted], dtype=np.int64)
                seq = tx.record_changes(
                    collection_id, "face_added", [face.face_id for _, face in inserted], labels.tolist()
                )
            self._mutate(state, seq, lambda index: index.add(labels, vectors))
            snapshot = None
            if isinstance(state.index, ExactIndex) and len(state.index) > self._exact_max and not state.promoting:
                state.promoting = True
                snapshot = (*state.index.items(), state.applied_seq)
        if snapshot is not None:
            self._promote(state, *snapshot)
        return [face for _, face in inserted]

    def delete_faces(self, collection_id: str, face_ids: Sequence[str]) -> FaceDeletion:
        """Delete faces and erase their vectors; faces associated with a user are refused."""
        wanted = list(dict.fromkeys(face_ids))
        with self._write_lock:
            state = self._state(collection_id)
            with self._db.write() as tx:
                found = tx.faces_by_ids(collection_id, wanted)
                doomed = [fid for fid in wanted if fid in found and found[fid][1].user_id is None]
                labels = np.asarray([found[fid][0] for fid in doomed], dtype=np.int64)
                seq = 0
                if doomed:
                    tx.delete_faces(labels.tolist())
                    seq = tx.record_changes(collection_id, "face_deleted", doomed, labels.tolist())
            if doomed:
                self._mutate(state, seq, lambda index: index.remove(labels))
                state.unpurged = isinstance(state.index, HnswIndex)
        return FaceDeletion(
            deleted=doomed,
            not_found=[fid for fid in wanted if fid not in found],
            user_associated=[fid for fid in wanted if fid in found and found[fid][1].user_id is not None],
        )

    def get_face(self, collection_id: str, face_id: str) -> FaceRecord:
        self._state(collection_id)
        with self._db.read() as tx:
            found = tx.faces_by_ids(collection_id, [face_id])
        if face_id not in found:
            raise FaceNotFound(collection_id, face_id)
        return found[face_id][1]

    def get_face_vector(self, collection_id: str, face_id: str) -> Vector:
        """The stored (unit-length) vector, e.g. to search with an indexed face."""
        state = self._state(collection_id)
        with self._db.read() as tx:
            blob = tx.face_vector(collection_id, face_id)
        if blob is None:
            raise FaceNotFound(collection_id, face_id)
        return np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(state.record.dim)

    def list_faces(
        self,
        collection_id: str,
        *,
        after: str | None = None,
        limit: int = 1000,
        user_id: str | None = None,
        face_ids: Sequence[str] | None = None,
    ) -> tuple[list[FaceRecord], str | None]:
        """Faces ordered by face id; pass the returned key as `after` for the next page."""
        self._state(collection_id)
        with self._db.read() as tx:
            return page(tx.list_faces(collection_id, after, limit + 1, user_id, face_ids), limit, "face_id")

    def find_faces_by_image(
        self, collection_id: str, *, image_id: str | None = None, external_image_id: str | None = None
    ) -> list[FaceRecord]:
        """Faces indexed from an image, to spot an image that is being indexed again."""
        column: Literal["image_id", "external_image_id"]
        if image_id is not None and external_image_id is None:
            column, value = "image_id", image_id
        elif external_image_id is not None and image_id is None:
            column, value = "external_image_id", external_image_id
        else:
            raise ValueError("give exactly one of image_id and external_image_id")
        self._state(collection_id)
        with self._db.read() as tx:
            return tx.faces_by_image(collection_id, column, value)

    def search(
        self,
        collection_id: str,
        vector: npt.ArrayLike,
        *,
        model_version: str,
        k: int,
        min_similarity: float = -1.0,
    ) -> list[SearchHit]:
        """The k most similar faces with cosine similarity >= min_similarity, best first."""
        state = self._state(collection_id)
        query = self._pinned(state.record, model_version, [vector])
        with state.lock.read():
            labels, scores = state.index.search(query, k)
        keep = scores >= min_similarity
        labels, scores = labels[keep], scores[keep]
        if not len(labels):
            return []
        with self._db.read() as tx:
            faces = tx.faces_by_labels(collection_id, labels.tolist())
        # A face deleted since the index was read has no row any more and is left out.
        return [
            SearchHit(faces[label], float(score))
            for label, score in zip(labels.tolist(), scores.tolist(), strict=True)
            if label in faces
        ]

    # users

    def create_user(self, collection_id: str, user_id: str) -> UserRecord:
        user = UserRecord(collection_id, user_id, "CREATED", time.time())
        with self._write_lock:
            self._state(collection_id)
            with self._db.write() as tx:
                if tx.get_user(collection_id, user_id) is not None:
                    raise UserExists(collection_id, user_id)
                tx.insert_user(user)
                tx.record_changes(collection_id, "user_created", [user_id])
        return user

    def delete_user(self, collection_id: str, user_id: str) -> None:
        """Delete the user; its faces stay in the collection, disassociated."""
        with self._write_lock:
            self._state(collection_id)
            with self._db.write() as tx:
                self._user(tx, collection_id, user_id)
                tx.delete_user(collection_id, user_id)
                tx.record_changes(collection_id, "user_deleted", [user_id])

    def get_user(self, collection_id: str, user_id: str) -> UserRecord:
        self._state(collection_id)
        with self._db.read() as tx:
            return self._user(tx, collection_id, user_id)

    def list_users(
        self, collection_id: str, *, after: str | None = None, limit: int = 1000
    ) -> tuple[list[UserRecord], str | None]:
        self._state(collection_id)
        with self._db.read() as tx:
            return page(tx.list_users(collection_id, after, limit + 1), limit, "user_id")

    def associate_faces(self, collection_id: str, user_id: str, face_ids: Sequence[str]) -> FaceAssociation:
        """Associate faces with the user; a face of another user is refused."""
        return self._associate(collection_id, user_id, face_ids, associate=True)

    def disassociate_faces(self, collection_id: str, user_id: str, face_ids: Sequence[str]) -> FaceAssociation:
        """Disassociate faces from the user; a face not associated with it is refused."""
        return self._associate(collection_id, user_id, face_ids, associate=False)

    # durability

    def checkpoint(self) -> None:
        """Compact heavily-deleted indexes, save changed ones (deleted vectors zeroed), truncate the WAL.

        After it returns, no file under the state directory holds a vector of a deleted face.
        """
        with self._checkpoint_lock:
            for state in list(self._collections.values()):
                index = state.index
                if isinstance(index, HnswIndex) and index.deleted > self._compact_ratio * index.element_count:
                    self._compact(state)
            with self._write_lock:
                for state in self._collections.values():
                    self._persist(state)
                self._db.checkpoint()

    # internals

    def _state(self, collection_id: str) -> _Collection:
        state = self._collections.get(collection_id)
        if state is None:
            raise CollectionNotFound(collection_id)
        return state

    @staticmethod
    def _user(tx: Tx, collection_id: str, user_id: str) -> UserRecord:
        user = tx.get_user(collection_id, user_id)
        if user is None:
            raise UserNotFound(collection_id, user_id)
        return user

    @staticmethod
    def _pinned(record: CollectionRecord, model_version: str, vectors: Sequence[npt.ArrayLike]) -> Vector:
        """Unit vectors, refused unless they come from the face model the collection is pinned to."""
        rows = [np.asarray(vector, dtype=np.float32).reshape(-1) for vector in vectors]
        for row in rows:
            if model_version != record.face_model_version or row.size != record.dim:
                raise FaceModelMismatch(
                    record.collection_id, (record.face_model_version, record.dim), (model_version, row.size)
                )
        return normalize(np.stack(rows), record.dim)

    def _associate(
        self, collection_id: str, user_id: str, face_ids: Sequence[str], *, associate: bool
    ) -> FaceAssociation:
        wanted = list(dict.fromkeys(face_ids))
        with self._write_lock:
            self._state(collection_id)
            with self._db.write() as tx:
                self._user(tx, collection_id, user_id)
                found = tx.faces_by_ids(collection_id, wanted)
                allowed = (None, user_id) if associate else (user_id,)
                succeeded = [fid for fid in wanted if fid in found and found[fid][1].user_id in allowed]
                if succeeded:
                    tx.set_face_user([found[fid][0] for fid in succeeded], user_id if associate else None)
                    kind: Literal["face_associated", "face_disassociated"] = (
                        "face_associated" if associate else "face_disassociated"
                    )
                    tx.record_changes(collection_id, kind, succeeded, user_id=user_id)
                status = tx.refresh_user_status(collection_id, user_id)
        return FaceAssociation(
            succeeded=succeeded,
            not_found=[fid for fid in wanted if fid not in found],
            other_user=[fid for fid in wanted if fid in found and fid not in succeeded],
            user_status=status,
        )

    def _directory(self, record: CollectionRecord) -> Path:
        """Named by the collection's uid: safe whatever the id, and never shared with a deleted namesake."""
        return self._state_dir / COLLECTIONS_DIR / record.uid

    def _mutate(self, state: _Collection, seq: int, change: Callable[[VectorIndex], None]) -> None:
        """Apply a committed change to the index; if that fails, rebuild it from SQLite instead."""
        try:
            with state.lock.write():
                change(state.index)
        except Exception:
            log.exception("index update of %s failed; rebuilding it from SQLite", state.record.collection_id)
            index, seq = self._build(state.record)
            with state.lock.write():
                state.index = index
            state.saved_seq = -1
        state.applied_seq = seq

    def _promote(self, state: _Collection, labels: npt.NDArray[np.int64], vectors: Vector, seq: int) -> None:
        """Swap a grown exact index for HNSW built aside from its snapshot at change `seq`: until it is
        ready, searches and writes go on against the exact one. The faces are already committed, so a
        failed build only defers the switch to a later addition."""
        try:
            self._swap_in(state, HnswIndex.build(state.record.dim, self._hnsw, labels, vectors), seq)
        except Exception:
            log.exception("building the HNSW index of %s failed; it stays exact for now", state.record.collection_id)
        finally:
            state.promoting = False

    def _build(self, record: CollectionRecord) -> tuple[VectorIndex, int]:
        """A fresh index of the collection from SQLite, and the change sequence it reflects."""
        with self._db.read() as tx:
            labels, vectors = tx.vectors(record.collection_id, record.dim)
            seq = tx.last_face_seq(record.collection_id)
        if len(labels) <= self._exact_max:
            exact = ExactIndex(record.dim)
            exact.add(labels, vectors)
            return exact, seq
        return HnswIndex.build(record.dim, self._hnsw, labels, vectors), seq

    def _replay(self, record: CollectionRecord, index: VectorIndex, after_seq: int) -> _Replay:
        """Apply the face changes logged after `after_seq` to `index`.

        Labels grow with the sequence, so the faces added since are exactly the surviving rows with a
        label at or above the smallest added one; a face both added and deleted since is skipped.
        """
        with self._db.read() as tx:
            changes = tx.face_changes_since(record.collection_id, after_seq)
            seq = tx.last_face_seq(record.collection_id)
            added = {label for kind, label in changes if kind == "face_added"}
            if added:
                labels, vectors = tx.vectors(record.collection_id, record.dim, min_label=min(added))
        removed = [label for kind, label in changes if kind == "face_deleted" and label not in added]
        if removed:
            index.remove(np.asarray(removed, dtype=np.int64))
        if added:
            index.add(labels, vectors)
        return _Replay(changes=len(changes), removed=len(removed), seq=seq)

    def _open_collections(self) -> None:
        with self._db.read() as tx:
            records = tx.list_collections(None, limit=-1)
        for record in records:
            self._collections[record.collection_id] = self._recover(record)
        collections_dir = self._state_dir / COLLECTIONS_DIR
        live = {record.uid for record in records}
        for directory in collections_dir.iterdir() if collections_dir.is_dir() else ():
            if directory.name not in live:  # left by a crash after delete_collection committed
                shutil.rmtree(directory)

    def _recover(self, record: CollectionRecord) -> _Collection:
        """Load the saved index if it checks out and replay what it misses; otherwise rebuild it."""
        with self._db.read() as tx:
            count = tx.face_count(record.collection_id)
            last_seq = tx.last_face_seq(record.collection_id)
        if count > self._exact_max:
            try:
                index, manifest = HnswIndex.load(self._directory(record), record, self._hnsw)
                if manifest.change_seq > last_seq:
                    raise IndexInvalid(f"index covers change {manifest.change_seq}, database only {last_seq}")
                replay = self._replay(record, index, manifest.change_seq)
                if len(index) != count:
                    raise IndexInvalid(f"index holds {len(index)} faces, database {count}")
                recovery = Recovery("replayed", f"{replay.changes} changes") if replay.changes else Recovery("loaded")
                return _Collection(
                    record, index, RWLock(), replay.seq, manifest.change_seq, recovery, unpurged=replay.removed > 0
                )
            except (IndexInvalid, OSError) as exc:
                log.warning("index of %s not usable (%s); rebuilding from SQLite", record.collection_id, exc)
                recovery = Recovery("rebuilt", str(exc))
        else:
            recovery = Recovery("exact")
        index, seq = self._build(record)
        return _Collection(record, index, RWLock(), applied_seq=seq, saved_seq=-1, recovery=recovery)

    def _compact(self, state: _Collection) -> None:
        """Rebuild an index without its deleted slots, from SQLite and without the write lock."""
        self._swap_in(state, *self._build(state.record))

    def _swap_in(self, state: _Collection, index: VectorIndex, seq: int) -> None:
        """Replace the collection's index with one built aside up to change `seq`; writes are held only
        while the changes made since are replayed onto it."""
        with self._write_lock:
            if self._collections.get(state.record.collection_id) is not state:
                return
            replay = self._replay(state.record, index, seq)
            with state.lock.write():
                state.index = index
            state.applied_seq = replay.seq
            state.saved_seq = -1
            state.unpurged = replay.removed > 0 and isinstance(index, HnswIndex)

    def _persist(self, state: _Collection) -> None:
        """Bring the collection's files in line with its index (caller holds the write lock)."""
        directory = self._directory(state.record)
        if not isinstance(state.index, HnswIndex):
            shutil.rmtree(directory, ignore_errors=True)  # exact indexes are rebuilt from SQLite
            return
        if state.saved_seq == state.applied_seq and not state.unpurged:
            return
        with state.lock.read():
            state.index.save(directory, state.record, state.applied_seq)
        state.saved_seq = state.applied_seq
        if state.unpurged:
            purged, _ = HnswIndex.load(directory, state.record, self._hnsw)
            with state.lock.write():
                state.index = purged
            state.unpurged = False

    def _autosave_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.checkpoint()
            except Exception:
                log.exception("periodic checkpoint failed")


def _lock_directory(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StoreLocked(f"{path.parent} is in use by another process") from exc
    return fd
