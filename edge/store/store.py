"""The storage facade the Rekognition operations call: SQLite for truth, one vector index per collection.

Every mutation commits to SQLite first and is applied to the in-memory index before it returns, both
under one store-wide write lock, so the index always reflects a prefix of the change log.  Index files
are only a cache: saved periodically and at close, verified at open, replayed forward from the change
log or rebuilt from SQLite.
"""

from __future__ import annotations

import fcntl
import hmac
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from edge.config import StoreSettings
from edge.files import FILE_MODE, make_private, private_directory
from edge.store.access_log import LOG_FILE, AccessLog
from edge.store.access_log import STAMP as LOG_STAMP
from edge.store.db import BUSY_TIMEOUT_MS, ERASED, Database, Tx, page
from edge.store.db import STAMP as DB_STAMP
from edge.store.errors import (
    CheckpointBlocked,
    CollectionExists,
    CollectionNotFound,
    CollectionReadOnly,
    CollectionStale,
    FaceModelMismatch,
    FaceNotFound,
    FeedOutOfOrder,
    IndexInvalid,
    RequestMismatch,
    StoreLocked,
    StoreUnwritable,
    TooManyTags,
    UserExists,
    UserNotFound,
    storage_error,
)
from edge.store.formats import require_readable, sqlite_file_stamp
from edge.store.index import (
    HNSWLIB_VERSION,
    ExactIndex,
    HnswIndex,
    HnswParams,
    Labels,
    VectorIndex,
    normalize,
    projection_for,
    projection_name,
)
from edge.store.models import (
    CollectionRecord,
    FaceAssociation,
    FaceDeletion,
    FaceRecord,
    FeedRead,
    FeedSlice,
    FeedUpdate,
    NewFace,
    Recovery,
    SearchHit,
    SyncState,
    UserRecord,
    Vector,
)
from edge.store.rwlock import RWLock

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_FILE = "store.sqlite3"
LOCK_FILE = "LOCK"
COLLECTIONS_DIR = "collections"
#: Zeros held on the disk so that an erasure can still commit when writes have filled it.
RESERVE_FILE = "reserve"
#: Candidates beyond k that a graph of projected vectors hands over for exact re-scoring: its ranking errs
#: between faces whose cosines lie close together, so the best k by the full vectors are among a few more.
RESCORED_EXTRA = 32
#: How long an erasure inside a request waits for a reader in another process before leaving the rest
#: to the background checkpoint (the deletion itself is committed either way).
ERASE_BUSY_TIMEOUT_MS = 1000
#: A pending erasure is retried after this, doubling up to the checkpoint interval.
ERASE_RETRY_S = 2.0


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
    sync: SyncState | None = None
    """Set when the collection follows a central's feed: read-only here, searchable until it expires."""
    promoting: bool = False
    """Its HNSW graph is being built in the background (the exact index serves meanwhile)."""


class _Replay(NamedTuple):
    changes: int
    removed: int
    seq: int


_DEFAULTS = StoreSettings()


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What /readyz reports about the store: whether writes can succeed, and what erasure is still owed."""

    writable: bool
    reason: str
    free_bytes: int
    erasure_pending: bool


class Engine(Protocol):
    """The database under the store: SQLite (`Database`, this process only) or PostgreSQL (`edge.store.pg`,
    `shared` with other instances, whose changes each instance replays into its own index)."""

    shared: bool

    def read(self) -> AbstractContextManager[Tx]: ...

    def write(self, collection_id: str | None = None) -> AbstractContextManager[Tx]: ...

    def checkpoint(self, *, scrub: bool = False, busy_timeout_ms: int = ...) -> None: ...

    def close(self) -> None: ...


def open_store(state_dir: Path, settings: StoreSettings, *, autosave: bool = True) -> Store:
    """A store configured from the `store` settings section (SQLite in the state directory, or PostgreSQL)."""
    database: Engine | None = None
    if settings.backend == "postgres":
        from edge.store.pg import PgDatabase

        assert settings.postgres_dsn is not None
        database = PgDatabase(settings.postgres_dsn, pool_size=settings.postgres_pool_size)
    return Store(state_dir, exact_max=settings.exact_max, hnsw=HnswParams.from_settings(settings),
                 checkpoint_interval_s=settings.checkpoint_interval_s if autosave else None,
                 compact_ratio=settings.compact_ratio, change_log_retention_s=settings.change_log_retention_s,
                 reserve_bytes=settings.reserve_bytes, access_log_days=settings.access_log_days, database=database)


class Store:
    """Durable face collections for one process (an flock on the state directory enforces that).

    The options are `StoreSettings`' (which holds their defaults); checkpoint_interval_s None saves
    only at close or on `checkpoint()`. The interval bounds how long erased vectors stay on disk.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        exact_max: int = _DEFAULTS.exact_max,
        hnsw: HnswParams = HnswParams(),  # noqa: B008 - frozen dataclass
        checkpoint_interval_s: float | None = _DEFAULTS.checkpoint_interval_s,
        compact_ratio: float = _DEFAULTS.compact_ratio,
        change_log_retention_s: float = _DEFAULTS.change_log_retention_s,
        reserve_bytes: int = _DEFAULTS.reserve_bytes,
        access_log_days: float = _DEFAULTS.access_log_days,
        database: Engine | None = None,
    ) -> None:
        self._state_dir = state_dir
        self._exact_max = exact_max
        self._hnsw = hnsw
        self._compact_ratio = compact_ratio
        self._access_log_s = access_log_days * 86400
        self._retention_s = change_log_retention_s
        self._reserve_bytes = reserve_bytes
        self._failure: str | None = None
        """Why the last write failed, for a failure that freeing space does not cure; None after a success."""
        self._erasure_due = False
        """Deletions committed but not yet scrubbed from every file."""
        self._requests_lock = threading.Lock()
        private_directory(state_dir)
        self._lock_fd = lock_directory(state_dir / LOCK_FILE)
        try:  # both databases, before either is migrated: a refusal changes nothing
            for path, build in ((state_dir / DB_FILE, DB_STAMP), (state_dir / LOG_FILE, LOG_STAMP)):
                if (found := sqlite_file_stamp(path)) is not None:
                    require_readable(str(path), found, build)
        except BaseException:
            os.close(self._lock_fd)
            raise
        opened = _make_private(state_dir)
        if opened:
            log.warning("made private (they were open to other users): %s", ", ".join(opened))
        self._write_lock = threading.RLock()
        self._checkpoint_lock = threading.Lock()
        self._collections: dict[str, _Collection] = {}
        self._builders: list[threading.Thread] = []
        try:
            self._db: Engine = database if database is not None else Database(state_dir / DB_FILE)
            try:
                self.access_log = AccessLog(state_dir / LOG_FILE)
                if not self._db.shared:
                    # A crash between a deletion's commit and its log erasure leaves rows of people the store
                    # no longer holds: they go now.
                    self.access_log.forget_absent(state_dir / DB_FILE)
                self._open_collections()
                with self._db.read() as tx:  # a crash may have come between a deletion and its scrub
                    self._erasure_due = tx.last_deletion_seq() > tx.scrubbed_seq()
                self.checkpoint()  # persist what recovery changed and drop erased vectors from the WAL
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._stop = threading.Event()
        self._nudge = threading.Event()
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
        self._nudge.set()
        if self._autosave is not None:
            self._autosave.join()
        for builder in self._builders:
            builder.join()
        try:
            self.checkpoint()
        finally:
            self._db.close()
            self.access_log.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    @property
    def recovery(self) -> dict[str, Recovery]:
        """What opening the store did to each collection's index."""
        return {cid: state.recovery for cid, state in dict(self._collections).items()}

    # collections

    def create_collection(self, collection_id: str, *, face_model_version: str, dim: int, arn: str,
                          tags: Mapping[str, str] | None = None, max_tags: int | None = None) -> CollectionRecord:
        """Create the collection with its tags in one transaction; more than `max_tags` is refused (TooManyTags)."""
        if max_tags is not None and tags is not None and len(tags) > max_tags:
            raise TooManyTags(collection_id, max_tags)
        record = CollectionRecord(
            collection_id=collection_id,
            arn=arn,
            face_model_version=face_model_version,
            dim=dim,
            created_at=time.time(),
            uid=uuid.uuid4().hex,
        )
        with self._write_lock:
            with self._write(collection_id) as tx:
                if tx.get_collection(collection_id) is not None:
                    raise CollectionExists(collection_id)
                tx.insert_collection(record)
                tx.put_tags(record.uid, dict(tags or {}))
                tx.record_changes(collection_id, "collection_created", [collection_id])
            self._collections[collection_id] = _Collection(
                record, ExactIndex(dim), RWLock(), applied_seq=0, saved_seq=-1, recovery=Recovery("exact")
            )
        return record

    def delete_collection(self, collection_id: str) -> None:
        """Delete the collection with all its faces and users, vectors included (rows, index, files)."""
        with self._write_lock:
            self._drop(self._writable(collection_id))

    def get_collection(self, collection_id: str) -> CollectionRecord:
        return self._state(collection_id).record

    def tags(self, collection_id: str) -> dict[str, str]:
        """The collection's tags. They are this store's own: a synced collection's are not the central's."""
        record = self._state(collection_id).record
        with self._db.read() as tx:
            return tx.tags(record.uid)

    def tag_collection(self, collection_id: str, tags: Mapping[str, str], *, max_tags: int) -> None:
        """Add tags (a key already there takes the new value); refused whole (TooManyTags) if the collection
        would have more than `max_tags`."""
        self._change_tags(collection_id, lambda tx, uid: tx.put_tags(uid, dict(tags)), max_tags)

    def untag_collection(self, collection_id: str, keys: Sequence[str]) -> None:
        """Remove tags by key; a key the collection does not have is no error (as in Rekognition)."""
        self._change_tags(collection_id, lambda tx, uid: tx.remove_tags(uid, list(keys)), None)

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
            state = self._writable(collection_id)
            vectors = self._pinned(state.record, model_version, [face.vector for face in faces])
            with self._write(collection_id) as tx:
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
            state = self._writable(collection_id)

            def delete(tx: Tx) -> tuple[dict[str, tuple[int, FaceRecord]], list[str], Labels, int]:
                found = tx.faces_by_ids(collection_id, wanted)
                doomed = [fid for fid in wanted if fid in found and found[fid][1].user_id is None]
                labels = np.asarray([found[fid][0] for fid in doomed], dtype=np.int64)
                seq = 0
                if doomed:
                    tx.delete_faces(labels.tolist())
                    seq = tx.record_changes(collection_id, "face_deleted", doomed, labels.tolist())
                return found, doomed, labels, seq

            found, doomed, labels, seq = self._erasing(delete, collection_id)
            if doomed:
                self._erasure_due = True
                self._mutate(state, seq, lambda index: index.remove(labels))
                state.unpurged = isinstance(state.index, HnswIndex)
                self.access_log.erase_faces(collection_id, doomed)
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
        if state.sync is not None and state.sync.valid_until < time.time():
            raise CollectionStale(collection_id, state.sync.valid_until)
        if self._db.shared:
            self._catch_up(state)
        query = self._pinned(state.record, model_version, [vector])
        with state.lock.read():
            exact = state.index.exact_scores
            labels, scores = state.index.search(query, k if exact else k + RESCORED_EXTRA)
        with self._db.read() as tx:
            if not exact:
                labels, vectors = tx.vectors_by_labels(collection_id, labels.tolist(), state.record.dim)
                scores = np.einsum("ij,j->i", vectors, query.reshape(-1))
                best = np.argsort(-scores, kind="stable")[:k]
                labels, scores = labels[best], scores[best]
            keep = scores >= min_similarity
            labels, scores = labels[keep], scores[keep]
            if not len(labels):
                return []
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
            self._writable(collection_id)
            with self._write(collection_id) as tx:
                if tx.get_user(collection_id, user_id) is not None:
                    raise UserExists(collection_id, user_id)
                tx.insert_user(user)
                tx.record_changes(collection_id, "user_created", [user_id])
        return user

    def delete_user(self, collection_id: str, user_id: str) -> None:
        """Delete the user; its faces stay in the collection, disassociated."""
        with self._write_lock:
            self._writable(collection_id)

            def delete(tx: Tx) -> None:
                self._user(tx, collection_id, user_id)
                tx.delete_user(collection_id, user_id)
                tx.record_changes(collection_id, "user_deleted", [ERASED])

            self._erasing(delete, collection_id)
            self._erasure_due = True
            self.access_log.erase_user(collection_id, user_id)

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

    def checkpoint(self, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        """Compact heavily-deleted indexes, save changed ones (deleted vectors replaced by stand-ins), prune the
        change log and the access log, scrub the database if anything was deleted since the last scrub, truncate
        the WAL.

        After it returns, no file under the state directory holds a vector, a UserId or an
        ExternalImageId of anything deleted. Raises `CheckpointBlocked` (a reader in another process
        holds the WAL) or `StoreUnwritable` (no room), after doing all it could.
        """
        self.access_log.prune(self._access_log_s)
        with self._checkpoint_lock:
            for state in list(self._collections.values()):
                index = state.index
                if isinstance(index, HnswIndex) and index.deleted > self._compact_ratio * index.element_count:
                    self._compact(state)
            with self._write_lock:
                failures: list[Exception] = []
                for state in self._collections.values():
                    try:
                        self._persist(state)
                    except OSError as exc:  # the other collections and the database still get their turn
                        failures.append(storage_error(exc) or exc)
                try:
                    self._prune()
                except StoreUnwritable as exc:
                    failures.append(exc)
                self._db.checkpoint(scrub=self._erasure_due, busy_timeout_ms=busy_timeout_ms)
                if failures:
                    raise failures[0]
                self._erasure_due = False
                self._hold_reserve()

    def erase(self) -> bool:
        """Scrub what was deleted from every file now (a checkpoint); True once done.

        A reader in another process or a full disk cannot stop a deletion that is committed: the rest
        is left to the background checkpoint, which retries until it is done (`health()` reports it).
        """
        try:
            self.checkpoint(busy_timeout_ms=ERASE_BUSY_TIMEOUT_MS)
        except (CheckpointBlocked, StoreUnwritable) as exc:
            log.warning("erasure not finished (%s): it is retried in the background", exc)
            self._nudge.set()
            return False
        return True

    def health(self) -> StoreHealth:
        """Whether a write can succeed now; below `reserve_bytes` of free space it cannot be counted on."""
        usage = os.statvfs(self._state_dir)
        free = usage.f_bavail * usage.f_frsize
        reason = self._failure or ""
        if not reason and free < self._reserve_bytes:
            reason = f"the disk is full: {free} bytes free"
        return StoreHealth(not reason, reason, free, self._erasure_due)

    def run_once(self, key: str, fingerprint: str, collection_id: str, ttl_s: float,
                 action: Callable[[], str]) -> str:
        """The answer of an idempotent request: the one remembered under `key`, or `action`'s, remembered.

        `RequestMismatch` if `key` was remembered with another `fingerprint` (other parameters). Requests
        are serialised here, so a retry arriving while the first call runs waits for its answer.
        """
        with self._requests_lock:
            with self._db.read() as tx:
                known = tx.recall(key, time.time())
            if known is not None:
                if not hmac.compare_digest(known[0], fingerprint):
                    raise RequestMismatch(key)
                return known[1]
            answer = action()
            with self._write() as tx:
                tx.remember(key, fingerprint, collection_id, answer, time.time() + ttl_s)
            return answer

    # fleet sync

    def check_writable(self, collection_id: str) -> None:
        """Refuse, before any work, a write to a collection that is synced from a central."""
        self._writable(collection_id)

    def read_feed(
        self, collection_id: str, after: int | None, *, export: Literal["never", "on_delete", "always"]
    ) -> FeedRead:
        """The collection's head and, in one consistent read, what changed since `after` (current state of
        every face and user touched, tombstones for those gone) and, when asked, all of it.

        "on_delete" exports only when something was deleted: the feed then replaces every published
        file that may still hold the deleted data.
        """
        state = self._state(collection_id)
        dim = state.record.dim
        with self._db.read() as tx:
            head = tx.collection_head(collection_id)
            delta = _delta(tx, collection_id, after, head, dim) if after is not None and head > after else None
            # A user deletion names nobody (erasure) but lists the users left: a deletion all the same, so the
            # snapshot that still holds the deleted user is replaced.
            deleted = delta is not None and bool(delta.deleted_faces or delta.deleted_users
                                                 or delta.all_users is not None)
            wanted = export == "always" or (export == "on_delete" and deleted)
            snapshot = _export(tx, collection_id, head, dim) if wanted else None
        return FeedRead(state.record, head, delta, snapshot)

    def index_kind(self, collection_id: str) -> Literal["exact", "hnsw"]:
        """Which index answers the collection's searches now (a large synced copy is exact until its graph is in)."""
        return "hnsw" if isinstance(self._state(collection_id).index, HnswIndex) else "exact"

    def sync_states(self) -> dict[str, SyncState]:
        """The collections this device follows, by id."""
        return {cid: state.sync for cid, state in dict(self._collections).items() if state.sync is not None}

    def apply_feed(self, update: FeedUpdate) -> None:
        """Apply a verified batch or snapshot; the sequence it reaches is committed in the same transaction.

        A batch must start exactly at the applied sequence (FeedOutOfOrder otherwise); a snapshot replaces
        the whole content, and a snapshot of another central collection (recreated there) the whole
        collection. Deleted faces leave no vector in any file once this returns.
        """
        cid, changes = update.collection_id, update.changes
        with self._write_lock:
            state = self._collections.get(cid)
            if state is not None and state.sync is None:
                raise CollectionExists(cid)  # a local collection of that name is never overwritten
            if state is not None and update.snapshot and (
                (state.sync is not None and state.sync.source_uid != update.source_uid)
                or (state.record.face_model_version, state.record.dim) != (update.face_model_version, update.dim)
            ):
                self._drop(state)
                state = None
            record = state.record if state is not None else CollectionRecord(
                cid, update.arn, update.face_model_version, update.dim, time.time(), uuid.uuid4().hex)
            vectors = (normalize(changes.vectors, record.dim) if changes.faces
                       else np.zeros((0, record.dim), dtype=np.float32))
            sync = SyncState(cid, update.source, update.source_uid, changes.to_seq, update.valid_until, time.time(),
                             update.head_seq)
            with self._write(cid) as tx:
                current = tx.get_sync(cid)
                if not update.snapshot and (current is None or current.source_uid != update.source_uid
                                            or current.applied_seq != changes.from_seq):
                    at = "nothing" if current is None else f"{current.source_uid} at {current.applied_seq}"
                    raise FeedOutOfOrder(f"{cid}: batch from {update.source_uid} at {changes.from_seq}, copy is {at}")
                if state is None:
                    tx.insert_collection(record)
                    tx.record_changes(cid, "collection_created", [cid])
                if update.snapshot:
                    keep = {face.face_id for face in changes.faces}
                    removed = {fid: label for fid, label in tx.face_labels(cid).items() if fid not in keep}
                    gone_users = tx.user_ids(cid) - {user.user_id for user in changes.users}
                else:
                    found = tx.faces_by_ids_chunked(cid, changes.deleted_faces)
                    removed = {fid: label for fid, (label, _) in found.items()}
                    gone_users = set(changes.deleted_users) & tx.user_ids(cid)
                    if changes.all_users is not None:
                        gone_users |= tx.user_ids(cid) - set(changes.all_users)
                for user_id in gone_users:
                    tx.delete_user(cid, user_id)
                seq = state.applied_seq if state is not None else 0
                labels = list(removed.values())
                for i in range(0, len(labels), FEED_CHUNK):
                    tx.delete_faces(labels[i : i + FEED_CHUNK])
                if removed:
                    seq = tx.record_changes(cid, "face_deleted", list(removed), labels)
                inserted = tx.upsert_faces(changes.faces, vectors)
                if inserted:
                    seq = tx.record_changes(cid, "face_added", [face.face_id for _, face in inserted],
                                            [label for label, _ in inserted])
                tx.upsert_users(changes.users)
                tx.put_sync(sync)
            if state is None or (update.snapshot and (removed or inserted)):
                # The shipped graph, or exact at once (so the copy answers searches now) and a graph built behind.
                shipped = self._shipped(record, update, inserted) if state is None else None
                index, seq = (shipped, seq) if shipped is not None else self._build(record, only_exact=True)
                if state is None:
                    state = _Collection(record, index, RWLock(), applied_seq=seq, saved_seq=-1,
                                        recovery=Recovery("exact"))
                    self._collections[cid] = state
                else:
                    with state.lock.write():
                        state.index = index
                    state.applied_seq, state.saved_seq = seq, -1
            else:
                if removed:
                    gone = np.asarray(labels, dtype=np.int64)
                    self._mutate(state, seq, lambda index: index.remove(gone))
                    state.unpurged = isinstance(state.index, HnswIndex)
                if inserted:
                    added = np.asarray([label for label, _ in inserted], dtype=np.int64)
                    new_ids = {face.face_id for _, face in inserted}
                    rows = vectors[[i for i, face in enumerate(changes.faces) if face.face_id in new_ids]]
                    self._mutate(state, seq, lambda index: index.add(added, rows))
            state.sync = sync
            if isinstance(state.index, ExactIndex) and len(state.index) > self._exact_max and not state.promoting:
                state.promoting = True
                builder = threading.Thread(target=self._promote_behind, args=(state,), name="store-promote")
                self._builders.append(builder)
                builder.start()
        if removed or gone_users:
            self._erasure_due = True
            self.access_log.erase_faces(cid, list(removed))
            for user_id in gone_users:
                self.access_log.erase_user(cid, user_id)
            self.checkpoint()  # the erased vectors and ids leave the write-ahead log and index files now

    def note_sync(self, collection_id: str, *, valid_until: float, head_seq: int) -> None:
        """Record a verified feed that brought nothing new: the copy is current and valid until then."""
        with self._write_lock:
            state = self._state(collection_id)
            if state.sync is None:
                raise CollectionExists(collection_id)
            sync = SyncState(collection_id, state.sync.source, state.sync.source_uid, state.sync.applied_seq,
                             valid_until, time.time(), head_seq)
            with self._write(collection_id) as tx:
                tx.put_sync(sync)
            state.sync = sync

    def drop_synced(self, collection_id: str) -> None:
        """Delete a synced collection the central deleted (or this device no longer follows), vectors included."""
        with self._write_lock:
            state = self._state(collection_id)
            if state.sync is None:
                raise CollectionExists(collection_id)
            self._drop(state)
        self.checkpoint()

    # internals

    def _writable(self, collection_id: str) -> _Collection:
        state = self._state(collection_id)
        if state.sync is not None:
            raise CollectionReadOnly(collection_id, state.sync.source)
        return state

    def _drop(self, state: _Collection) -> None:
        """Delete a collection's rows, sync state, index and files (caller holds the write lock)."""
        collection_id = state.record.collection_id

        def delete(tx: Tx) -> None:
            tx.delete_collection(collection_id)
            tx.delete_sync(collection_id)
            tx.record_changes(collection_id, "collection_deleted", [collection_id])

        self._erasing(delete, collection_id)
        self._erasure_due = True
        del self._collections[collection_id]
        with state.lock.write():
            state.index = ExactIndex(state.record.dim)
        shutil.rmtree(self._directory(state.record), ignore_errors=True)
        self.access_log.erase_collection(collection_id)

    def _change_tags(self, collection_id: str, change: Callable[[Tx, str], None], max_tags: int | None) -> None:
        """Change the tags of the collection as it is when the write begins (a namesake created meanwhile by
        another instance is not this one), within the limit."""
        uid = self._state(collection_id).record.uid
        with self._write_lock, self._write(collection_id) as tx:
            record = tx.get_collection(collection_id)
            if record is None or record.uid != uid:
                raise CollectionNotFound(collection_id)
            change(tx, uid)
            if max_tags is not None and len(tx.tags(uid)) > max_tags:
                raise TooManyTags(collection_id, max_tags)  # rolls the change back

    def _state(self, collection_id: str) -> _Collection:
        state = self._collections.get(collection_id)
        if self._db.shared:
            state = self._shared_state(collection_id, state)
        if state is None:
            raise CollectionNotFound(collection_id)
        return state

    @contextmanager
    def _write(self, collection_id: str | None = None) -> Iterator[Tx]:
        """A write transaction (holding the collection's write lock on a shared database) that keeps track
        of whether writes are failing (for `health`)."""
        try:
            with self._db.write(collection_id) as tx:
                yield tx
        except StoreUnwritable as exc:
            if not exc.full:
                self._failure = exc.reason
            raise
        self._failure = None

    def _erasing(self, delete: Callable[[Tx], T], collection_id: str | None = None) -> T:
        """Run a deletion; if the disk is too full even for that, give up the reserve and run it again."""
        try:
            with self._write(collection_id) as tx:
                result = delete(tx)
        except StoreUnwritable as exc:
            if not exc.full or not self._release_reserve():
                raise
            log.warning("%s: released the reserve to erase", exc.reason)
            with self._write(collection_id) as tx:
                result = delete(tx)
        return result

    def _hold_reserve(self) -> None:
        """Keep `reserve_bytes` of real disk blocks in the reserve file, if there is room for them."""
        path = self._state_dir / RESERVE_FILE
        if self._reserve_bytes <= 0 or (path.exists() and path.stat().st_size >= self._reserve_bytes):
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        try:
            os.posix_fallocate(fd, 0, self._reserve_bytes)
        except OSError as exc:
            path.unlink(missing_ok=True)
            log.warning("no room for the %d-byte reserve kept for erasures (%s)", self._reserve_bytes, exc)
        finally:
            os.close(fd)

    def _release_reserve(self) -> bool:
        path = self._state_dir / RESERVE_FILE
        if not path.exists():
            return False
        path.unlink()
        return True

    def _prune(self) -> None:
        """Drop the change log's rows older than the retention that recovery does not need, and expired
        remembered answers (caller holds the write lock)."""
        now = time.time()
        before = now - self._retention_s
        with self._write() as tx:
            for cid, state in self._collections.items():
                # Replay starts from an index file's change; an exact index has no file to replay into.
                replayed_to = state.saved_seq if isinstance(state.index, HnswIndex) else state.applied_seq
                tx.prune_changes(cid, before, replayed_to)
            tx.prune_orphan_changes(before, list(self._collections))
            tx.prune_requests(now)
            tx.prune_orphan_tags()  # a version 2 build deletes a collection but not its tags

    def _shared_state(self, collection_id: str, state: _Collection | None) -> _Collection | None:
        """On a database other instances write too, the collection as the database has it now."""
        with self._db.read() as tx:
            record = tx.get_collection(collection_id)
        if state is not None and record is not None and record.uid == state.record.uid:
            return state
        with self._write_lock:
            current = self._collections.get(collection_id)
            if current is not None and (record is None or record.uid != current.record.uid):
                del self._collections[collection_id]  # deleted (and maybe recreated) by another instance
                shutil.rmtree(self._directory(current.record), ignore_errors=True)
                current = None
            if current is None and record is not None:
                current = self._collections[collection_id] = self._recover(record)
            return current

    def _catch_up(self, state: _Collection, *, promote: bool = True) -> None:
        """Replay into this instance's index the face changes other instances logged since it was current.

        `promote`: also start the HNSW build if the exact index outgrew itself; a writer that holds the
        write lock passes False and promotes once it has let go (a build under the lock stalls every write).
        """
        snapshot = None
        with self._write_lock:
            with self._db.read() as tx:
                last = tx.last_face_seq(state.record.collection_id)
            if last <= state.applied_seq:
                return
            try:
                with state.lock.write():
                    replay = self._replay(state.record, state.index, state.applied_seq)
            except Exception:
                log.exception("replaying %s failed; rebuilding it from the database", state.record.collection_id)
                index, seq = self._build(state.record)
                with state.lock.write():
                    state.index = index
                state.applied_seq, state.saved_seq = seq, -1
                return
            state.applied_seq = replay.seq
            state.unpurged = state.unpurged or (replay.removed > 0 and isinstance(state.index, HnswIndex))
            if promote and isinstance(state.index, ExactIndex) and len(state.index) > self._exact_max \
                    and not state.promoting:
                state.promoting = True
                snapshot = (*state.index.items(), state.applied_seq)
        if snapshot is not None:
            self._promote(state, *snapshot)

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
            self._writable(collection_id)
            with self._write(collection_id) as tx:
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
        """Apply a committed change to the index; if that fails, rebuild it from SQLite instead.

        On a shared database other instances' changes may precede this one: replay the log instead.
        """
        if self._db.shared:
            self._catch_up(state, promote=False)
            return
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

    def _build(self, record: CollectionRecord, *, only_exact: bool = False) -> tuple[VectorIndex, int]:
        """A fresh index of the collection from SQLite (exact if asked), and the change sequence it reflects."""
        with self._db.read() as tx:
            exact = only_exact or tx.face_count(record.collection_id) <= self._exact_max
            # A graph of projected vectors gets them projected slice by slice as they are read.
            projection = None if exact else projection_for(record.dim)
            labels, vectors = tx.vectors(record.collection_id, record.dim, transform=projection)
            seq = tx.last_face_seq(record.collection_id)
        if exact:
            index = ExactIndex(record.dim)
            index.add(labels, vectors)
            return index, seq
        return HnswIndex.build(record.dim, self._hnsw, labels, vectors, projected=projection is not None), seq

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
        with self._db.read() as tx:
            for sync in tx.list_sync():
                if sync.collection_id in self._collections:
                    self._collections[sync.collection_id].sync = sync
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
                loaded, manifest = HnswIndex.load(self._directory(record), record, self._hnsw)
                if manifest.change_seq > last_seq:
                    raise IndexInvalid(f"index covers change {manifest.change_seq}, database only {last_seq}")
                replay = self._replay(record, loaded, manifest.change_seq)
                if len(loaded) != count:
                    raise IndexInvalid(f"index holds {len(loaded)} faces, database {count}")
                recovery = Recovery("replayed", f"{replay.changes} changes") if replay.changes else Recovery("loaded")
                # Saved again at the first checkpoint where it has deleted slots: an earlier build's file has
                # zeros in them, which cut the search's paths through them, and the save gives them stand-ins.
                return _Collection(
                    record, loaded, RWLock(), replay.seq, manifest.change_seq, recovery, unpurged=loaded.deleted > 0
                )
            except (IndexInvalid, OSError) as exc:
                log.warning("index of %s not usable (%s); rebuilding from SQLite", record.collection_id, exc)
                recovery = Recovery("rebuilt", str(exc))
        else:
            recovery = Recovery("exact")
        index, seq = self._build(record)
        return _Collection(record, index, RWLock(), applied_seq=seq, saved_seq=-1, recovery=recovery)

    def _shipped(self, record: CollectionRecord, update: FeedUpdate,
                 inserted: list[tuple[int, FaceRecord]]) -> HnswIndex | None:
        """The central's graph for a fresh copy, when it fits: this store's parameters, and labels given in
        the snapshot's order (one transaction on a fresh copy gives consecutive ones)."""
        shipped = update.index
        if shipped is None or not inserted or len(inserted) != shipped.count:
            return None
        wanted = (self._hnsw.m, self._hnsw.ef_construction, HNSWLIB_VERSION, projection_name(record.dim))
        if (shipped.m, shipped.ef_construction, shipped.hnswlib_version, shipped.projection) != wanted:
            log.info("shipped index of %s built with other parameters; building one here", record.collection_id)
            return None
        first = inserted[0][0]
        if [label for label, _ in inserted] != list(range(first, first + len(inserted))):
            return None
        try:
            return HnswIndex.relabelled(shipped.data, record.dim, self._hnsw, shipped.count, first,
                                        self._directory(record))
        except IndexInvalid as exc:
            log.warning("shipped index of %s refused (%s); building one here", record.collection_id, exc)
            return None

    def _promote_behind(self, state: _Collection) -> None:
        """Build the graph of a large synced copy while its exact index serves, then swap it in."""
        try:
            self._compact(state)
        except Exception:
            log.exception("building the index of %s failed; it stays exact until the store reopens",
                          state.record.collection_id)
        finally:
            state.promoting = False

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
        wait = interval_s
        while not self._stop.is_set():
            if self._nudge.wait(wait):  # an erasure was left unfinished: retry it soon, not at the interval
                self._nudge.clear()
                wait = ERASE_RETRY_S
                continue
            try:
                self.checkpoint()
            except (CheckpointBlocked, StoreUnwritable) as exc:
                log.warning("checkpoint not finished: %s", exc)
            except Exception:
                log.exception("periodic checkpoint failed")
            # An erasure still owed is retried, backing off while whatever blocks it lasts.
            if not self._erasure_due:
                wait = interval_s
            else:
                wait = ERASE_RETRY_S if wait >= interval_s else min(interval_s, 2 * wait)


def _make_private(state_dir: Path) -> list[str]:
    """Tighten the store's own files and directories (0600/0700) where an older version or a umask left
    them open; returns what was changed. Secrets beside them (keys) are refused instead, by their owner."""
    ours = [state_dir, state_dir / RESERVE_FILE,
            *(state_dir / f"{name}{suffix}" for name in (DB_FILE, LOG_FILE)
              for suffix in ("", "-wal", "-shm", "-journal"))]
    collections = state_dir / COLLECTIONS_DIR
    if collections.is_dir():
        ours += [collections, *collections.rglob("*")]
    return [str(path.relative_to(state_dir)) for path in ours if path.exists() and make_private(path)]


FEED_CHUNK = 500
"""Rows per DELETE ... IN (...) when a feed removes many faces at once."""

_FACE_KINDS = ("face_added", "face_deleted", "face_associated", "face_disassociated")


def _vectors(blobs: list[bytes], dim: int) -> Vector:
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def _delta(tx: Tx, collection_id: str, after: int, head: int, dim: int) -> FeedSlice:
    """The current state of every face and user changed in (after, head], and tombstones for those gone."""
    changes = tx.changes_between(collection_id, after, head)
    face_ids = list(dict.fromkeys(oid for kind, oid, _ in changes if kind in _FACE_KINDS))
    user_ids = list(dict.fromkeys(
        user for kind, oid, user_id in changes
        for user in ((oid,) if kind in ("user_created", "user_deleted") else (user_id,) if user_id else ())))
    faces, blobs = tx.faces_with_vectors(collection_id, face_ids)
    users = tx.users_by_ids(collection_id, user_ids)
    present_faces = {face.face_id for face in faces}
    present_users = {user.user_id for user in users}
    erased = any(kind == "user_deleted" for kind, _, _ in changes)
    return FeedSlice(after, head, faces, _vectors(blobs, dim), users,
                     [fid for fid in face_ids if fid not in present_faces],
                     [uid for uid in user_ids if uid and uid not in present_users],
                     sorted(tx.user_ids(collection_id)) if erased else None)


def _export(tx: Tx, collection_id: str, head: int, dim: int) -> FeedSlice:
    """Every face (with its vector) and user of the collection, as of `head`."""
    faces, blobs = tx.faces_with_vectors(collection_id, None)
    return FeedSlice(0, head, faces, _vectors(blobs, dim), tx.users_by_ids(collection_id, None), [], [])


def lock_directory(path: Path) -> int:
    """Hold the state directory for this process (StoreLocked while another holds it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StoreLocked(f"{path.parent} is in use by another process") from exc
    return fd
