"""SQLite schema and queries: the source of truth for collections, faces, users and the change log.

WAL lets searches read while enrolment writes; synchronous=FULL makes an acknowledged commit survive
power loss, not only kill -9; secure_delete=ON overwrites deleted rows (face vectors) in the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from edge.files import FILE_MODE
from edge.store.errors import CheckpointBlocked, storage_error
from edge.store.formats import Stamp, opened_stamp, stamp_sql
from edge.store.index import Labels
from edge.store.models import BoundingBox, CollectionRecord, FaceRecord, NewFace, SyncState, UserRecord, Vector

SCHEMA_VERSION = 3
MIN_READER = 2
"""The oldest schema version whose builds may open what this build writes (`edge.store.formats`). Version 2's
remembered answers must be erased with the users they name, which a version 1 build would not do. Version 3's
tags may be ignored by a version 2 build: they are keyed by the collection's uid, so tags of a collection that
build deleted name no live collection (and are pruned here), and never reappear on a namesake."""
STAMP = Stamp(SCHEMA_VERSION, MIN_READER)
BUSY_TIMEOUT_MS = 30_000
#: How much of the vectors' bytes a scan of them fetches at once.
FETCH_BYTES = 8 * 2**20

ChangeKind = Literal[
    "collection_created",
    "collection_deleted",
    "face_added",
    "face_deleted",
    "user_created",
    "user_deleted",
    "face_associated",
    "face_disassociated",
]
FACE_CHANGES: tuple[ChangeKind, ChangeKind] = ("face_added", "face_deleted")
#: object_id of a change whose subject was erased (a deleted user is named nowhere any more).
ERASED = ""

# Version 2: answers of idempotent calls by ClientRequestToken. key and fingerprint are keyed hashes
# of the token and of the parameters; the answer is kept as given and forgotten, with the rest, when a
# user it names or its collection is deleted.
# meta holds scrubbed_seq: the change up to which deletions have been scrubbed from the files (VACUUM).
_REQUESTS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE requests (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    answer TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Version 3: Rekognition's tags of a collection (TagResource), keyed by the collection's uid (see MIN_READER).
_TAGS = """
CREATE TABLE collection_tags (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
"""

_SCHEMA = f"""
CREATE TABLE collections (
    collection_id TEXT PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    arn TEXT NOT NULL,
    face_model_version TEXT NOT NULL,
    dim INTEGER NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;

-- label is the vector index label: AUTOINCREMENT so it is never reused, even after deletes.
CREATE TABLE faces (
    label INTEGER PRIMARY KEY AUTOINCREMENT,
    face_id TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    image_id TEXT NOT NULL,
    external_image_id TEXT,
    bbox_width REAL NOT NULL,
    bbox_height REAL NOT NULL,
    bbox_left REAL NOT NULL,
    bbox_top REAL NOT NULL,
    confidence REAL NOT NULL,
    index_faces_model_version TEXT NOT NULL,
    user_id TEXT,
    vector BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX faces_by_id ON faces (collection_id, face_id);
CREATE INDEX faces_by_image ON faces (collection_id, image_id);
CREATE INDEX faces_by_external_image ON faces (collection_id, external_image_id)
    WHERE external_image_id IS NOT NULL;
CREATE INDEX faces_by_user ON faces (collection_id, user_id, face_id) WHERE user_id IS NOT NULL;

CREATE TABLE users (
    collection_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (collection_id, user_id)
) WITHOUT ROWID;

-- label: for face changes, so a deletion can be replayed into an index after its row is gone.
-- user_id: for (dis)association changes. Rows naming a user go when the user does (object_id of the
-- user_deleted row is empty); a deleted collection leaves only its collection_deleted row.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    label INTEGER,
    user_id TEXT,
    at REAL NOT NULL
);
CREATE INDEX changes_by_collection ON changes (collection_id, seq);
{_REQUESTS}
{_TAGS}
"""
#: The script that takes a database from version k to k + 1.
_MIGRATIONS = {1: _REQUESTS, 2: _TAGS}

# Collections this device follows from a central (edge/sync). Created where missing, so a state
# directory from before fleet sync opens unchanged.
_SYNC_SCHEMA = """
CREATE TABLE IF NOT EXISTS synced_collections (
    collection_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    source_uid TEXT NOT NULL,
    applied_seq INTEGER NOT NULL,
    valid_until REAL NOT NULL,
    synced_at REAL NOT NULL,
    head_seq INTEGER NOT NULL
) WITHOUT ROWID;
"""
#: Face ids per IN (...) query: SQLite allows 32766 variables; fewer keep each statement small.
ID_CHUNK = 500

_FACE_COLUMNS = (
    "label, face_id, collection_id, image_id, external_image_id, bbox_width, bbox_height, bbox_left,"
    " bbox_top, confidence, index_faces_model_version, user_id, created_at"
)
_COLLECTION_COLUMNS = "collection_id, arn, face_model_version, dim, created_at, uid"
_USER_COLUMNS = "collection_id, user_id, status, created_at"
_SYNC_COLUMNS = "collection_id, source, source_uid, applied_seq, valid_until, synced_at, head_seq"

T = TypeVar("T")


def page(rows: list[T], limit: int, key: str) -> tuple[list[T], str | None]:
    """Cut a keyset page fetched with limit + 1 rows; the key of its last item resumes the listing."""
    if limit < 1:
        raise ValueError(f"page limit must be positive, got {limit}")
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, getattr(rows[-1], key)


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _label_vectors(rows: Sequence[tuple[int, bytes]], dim: int) -> tuple[Labels, Vector]:
    """(label, vector blob) rows as arrays; the vectors a read-only view of the joined blobs."""
    vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4").reshape(len(rows), dim)
    return np.fromiter((label for label, _ in rows), dtype=np.int64, count=len(rows)), vectors


def _face(row: tuple[Any, ...]) -> tuple[int, FaceRecord]:
    return row[0], FaceRecord(
        face_id=row[1],
        collection_id=row[2],
        image_id=row[3],
        external_image_id=row[4],
        bounding_box=BoundingBox(width=row[5], height=row[6], left=row[7], top=row[8]),
        confidence=row[9],
        index_faces_model_version=row[10],
        user_id=row[11],
        created_at=row[12],
    )


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchmany(self, size: int = ...) -> list[Any]: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the queries need of a connection: sqlite3's, or the PostgreSQL adapter in `edge.store.pg`."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> object: ...


class Tx:
    """Queries run inside one transaction of one connection (see Database.read / Database.write)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # collections

    def insert_collection(self, record: CollectionRecord) -> None:
        self._conn.execute(
            f"INSERT INTO collections ({_COLLECTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (record.collection_id, record.arn, record.face_model_version, record.dim, record.created_at, record.uid),
        )

    def get_collection(self, collection_id: str) -> CollectionRecord | None:
        row = self._conn.execute(
            f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE collection_id = ?", (collection_id,)
        ).fetchone()
        return CollectionRecord(*row) if row else None

    def list_collections(self, after: str | None, limit: int) -> list[CollectionRecord]:
        """Collections ordered by id after `after`; limit -1 lists them all."""
        rows = self._conn.execute(
            f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE collection_id > ? ORDER BY collection_id LIMIT ?",
            (after or "", limit),
        )
        return [CollectionRecord(*row) for row in rows]

    def delete_collection(self, collection_id: str) -> None:
        """Delete the collection's rows everywhere, its change log, remembered answers and tags too."""
        self._conn.execute(
            "DELETE FROM collection_tags WHERE uid IN (SELECT uid FROM collections WHERE collection_id = ?)",
            (collection_id,),
        )
        for table in ("faces", "users", "collections", "changes", "requests"):
            self._conn.execute(f"DELETE FROM {table} WHERE collection_id = ?", (collection_id,))

    def tags(self, uid: str) -> dict[str, str]:
        rows = self._conn.execute("SELECT key, value FROM collection_tags WHERE uid = ? ORDER BY key", (uid,))
        return dict(rows.fetchall())

    def put_tags(self, uid: str, tags: dict[str, str]) -> None:
        """Add tags, replacing the value of a key already there."""
        self._conn.executemany(
            "INSERT INTO collection_tags (uid, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (uid, key) DO UPDATE SET value = excluded.value",
            [(uid, key, value) for key, value in tags.items()],
        )

    def remove_tags(self, uid: str, keys: Sequence[str]) -> None:
        self._conn.execute(f"DELETE FROM collection_tags WHERE uid = ? AND key IN ({_marks(keys)})", (uid, *keys))

    def prune_orphan_tags(self) -> int:
        """Drop tags of collections that no longer exist (a version 2 build deleted them)."""
        return self._conn.execute("DELETE FROM collection_tags WHERE uid NOT IN (SELECT uid FROM collections)").rowcount

    # faces

    def insert_faces(
        self,
        collection_id: str,
        faces: Sequence[NewFace],
        vectors: Vector,
        model_version: str,
    ) -> list[tuple[int, FaceRecord]]:
        """Insert the rows under fresh face ids; returns (label, record) pairs in input order."""
        inserted = []
        at = time.time()
        for face, vector in zip(faces, vectors, strict=True):
            record = FaceRecord(
                face_id=str(uuid.uuid4()),
                collection_id=collection_id,
                image_id=face.image_id,
                external_image_id=face.external_image_id,
                bounding_box=face.bounding_box,
                confidence=face.confidence,
                index_faces_model_version=model_version,
                user_id=None,
                created_at=at,
            )
            box = record.bounding_box
            cur = self._conn.execute(
                "INSERT INTO faces (face_id, collection_id, image_id, external_image_id, bbox_width,"
                " bbox_height, bbox_left, bbox_top, confidence, index_faces_model_version, vector,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING label",
                (
                    record.face_id,
                    collection_id,
                    record.image_id,
                    record.external_image_id,
                    box.width,
                    box.height,
                    box.left,
                    box.top,
                    record.confidence,
                    model_version,
                    vector.astype("<f4").tobytes(),
                    at,
                ),
            )
            inserted.append((int(cur.fetchone()[0]), record))
        return inserted

    def faces_by_ids(self, collection_id: str, face_ids: Sequence[str]) -> dict[str, tuple[int, FaceRecord]]:
        rows = self._conn.execute(
            f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_id = ? AND face_id IN ({_marks(face_ids)})",
            (collection_id, *face_ids),
        )
        return {face.face_id: (label, face) for label, face in map(_face, rows)}

    def faces_by_labels(self, collection_id: str, labels: Sequence[int]) -> dict[int, FaceRecord]:
        rows = self._conn.execute(
            # NOT INDEXED: rowid lookups, where the planner would otherwise scan a collection index.
            f"SELECT {_FACE_COLUMNS} FROM faces NOT INDEXED WHERE label IN ({_marks(labels)}) AND collection_id = ?",
            (*labels, collection_id),
        )
        return dict(map(_face, rows))

    def vectors_by_labels(self, collection_id: str, labels: Sequence[int], dim: int) -> tuple[Labels, Vector]:
        """The stored vectors of those of `labels` that are still faces of the collection."""
        if not labels:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        rows = self._conn.execute(
            f"SELECT label, vector FROM faces NOT INDEXED WHERE label IN ({_marks(labels)}) AND collection_id = ?",
            (*labels, collection_id),
        ).fetchall()
        return _label_vectors(rows, dim)

    def delete_faces(self, labels: Sequence[int]) -> None:
        self._conn.execute(f"DELETE FROM faces WHERE label IN ({_marks(labels)})", tuple(labels))

    def set_face_user(self, labels: Sequence[int], user_id: str | None) -> None:
        self._conn.execute(f"UPDATE faces SET user_id = ? WHERE label IN ({_marks(labels)})", (user_id, *labels))

    def list_faces(
        self,
        collection_id: str,
        after: str | None,
        limit: int,
        user_id: str | None,
        face_ids: Sequence[str] | None,
    ) -> list[FaceRecord]:
        sql = f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_id = ? AND face_id > ?"
        args: list[object] = [collection_id, after or ""]
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        if face_ids is not None:
            sql += f" AND face_id IN ({_marks(face_ids)})"
            args.extend(face_ids)
        rows = self._conn.execute(sql + " ORDER BY face_id LIMIT ?", (*args, limit))
        return [face for _, face in map(_face, rows)]

    def faces_by_image(
        self, collection_id: str, column: Literal["image_id", "external_image_id"], value: str
    ) -> list[FaceRecord]:
        rows = self._conn.execute(
            f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_id = ? AND {column} = ? ORDER BY face_id",
            (collection_id, value),
        )
        return [face for _, face in map(_face, rows)]

    def face_vector(self, collection_id: str, face_id: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT vector FROM faces WHERE collection_id = ? AND face_id = ?", (collection_id, face_id)
        ).fetchone()
        return row[0] if row else None

    def vectors(self, collection_id: str, dim: int, min_label: int = 0,
                transform: Callable[[Vector], Vector] | None = None) -> tuple[Labels, Vector]:
        """The collection's vectors with label >= min_label (labels grow with the change sequence), each slice
        passed through `transform` as it is read where one is given (a graph's projection: the full vectors are
        then never all held at once)."""
        cur = self._conn.execute(
            "SELECT label, vector FROM faces NOT INDEXED WHERE label >= ? AND collection_id = ?",
            (min_label, collection_id),
        )
        labels: list[Labels] = []
        parts: list[Vector] = []
        # Slices of FETCH_BYTES, each made an array (and transformed) as it comes: gathering every row first,
        # then joining and copying them, held the vectors three times over.
        while chunk := cur.fetchmany(max(1, FETCH_BYTES // (4 * dim))):
            found, rows = _label_vectors(chunk, dim)
            labels.append(found)
            parts.append(rows if transform is None else transform(rows))
        if not labels:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(labels), np.concatenate(parts).astype(np.float32, copy=False)

    def face_count(self, collection_id: str) -> int:
        return int(
            self._conn.execute("SELECT count(*) FROM faces WHERE collection_id = ?", (collection_id,)).fetchone()[0]
        )

    # users

    def insert_user(self, user: UserRecord) -> None:
        self._conn.execute(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?)",
            (user.collection_id, user.user_id, user.status, user.created_at),
        )

    def get_user(self, collection_id: str, user_id: str) -> UserRecord | None:
        row = self._conn.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE collection_id = ? AND user_id = ?",
            (collection_id, user_id),
        ).fetchone()
        return UserRecord(*row) if row else None

    def list_users(self, collection_id: str, after: str | None, limit: int) -> list[UserRecord]:
        rows = self._conn.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE collection_id = ? AND user_id > ? ORDER BY user_id LIMIT ?",
            (collection_id, after or "", limit),
        )
        return [UserRecord(*row) for row in rows]

    def delete_user(self, collection_id: str, user_id: str) -> None:
        """Delete the user and disassociate its faces (the faces stay, as in Rekognition); no row names it after."""
        self._conn.execute(
            "UPDATE faces SET user_id = NULL WHERE collection_id = ? AND user_id = ?", (collection_id, user_id)
        )
        self._conn.execute("DELETE FROM users WHERE collection_id = ? AND user_id = ?", (collection_id, user_id))
        self._conn.execute(
            "DELETE FROM changes WHERE collection_id = ? AND (user_id = ? OR (kind IN (?, ?) AND object_id = ?))",
            (collection_id, user_id, "user_created", "user_deleted", user_id),
        )
        # An answer that names the user (or merely contains its id) is forgotten: a retry runs afresh.
        self._conn.execute(
            "DELETE FROM requests WHERE collection_id = ? AND instr(answer, ?) > 0", (collection_id, user_id)
        )

    def refresh_user_status(self, collection_id: str, user_id: str) -> Literal["CREATED", "ACTIVE"]:
        """ACTIVE while the user has a face, CREATED otherwise."""
        has_face = self._conn.execute(
            "SELECT 1 FROM faces WHERE collection_id = ? AND user_id = ? LIMIT 1", (collection_id, user_id)
        ).fetchone()
        status: Literal["CREATED", "ACTIVE"] = "ACTIVE" if has_face else "CREATED"
        self._conn.execute(
            "UPDATE users SET status = ? WHERE collection_id = ? AND user_id = ?", (status, collection_id, user_id)
        )
        return status

    def user_count(self, collection_id: str) -> int:
        return int(
            self._conn.execute("SELECT count(*) FROM users WHERE collection_id = ?", (collection_id,)).fetchone()[0]
        )

    # change log

    def record_changes(
        self,
        collection_id: str,
        kind: ChangeKind,
        object_ids: Iterable[str],
        labels: Iterable[int | None] | None = None,
        user_id: str | None = None,
    ) -> int:
        """Append one change per object and return the last sequence number."""
        at = time.time()
        ids = list(object_ids)
        self._conn.executemany(
            "INSERT INTO changes (collection_id, kind, object_id, label, user_id, at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (collection_id, kind, oid, label, user_id, at)
                for oid, label in zip(ids, labels if labels is not None else [None] * len(ids), strict=True)
            ],
        )
        return int(self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()[0])

    def face_changes_since(self, collection_id: str, seq: int) -> list[tuple[ChangeKind, int]]:
        rows = self._conn.execute(
            "SELECT kind, label FROM changes WHERE collection_id = ? AND seq > ? AND kind IN (?, ?) ORDER BY seq",
            (collection_id, seq, *FACE_CHANGES),
        )
        return [(kind, int(label)) for kind, label in rows]

    def prune_changes(self, collection_id: str, before: float, replayed_to: int) -> int:
        """Drop the collection's changes older than `before` that recovery no longer needs: face changes up to
        `replayed_to` (reflected in every index file), except the latest, which dates the index files."""
        cur = self._conn.execute(
            "DELETE FROM changes WHERE collection_id = ? AND at < ? AND (kind NOT IN (?, ?) OR (seq <= ? AND seq <"
            " (SELECT max(seq) FROM changes WHERE collection_id = ? AND kind IN (?, ?))))",
            (collection_id, before, *FACE_CHANGES, replayed_to, collection_id, *FACE_CHANGES),
        )
        return cur.rowcount

    def prune_orphan_changes(self, before: float, live: Sequence[str]) -> int:
        """Drop changes older than `before` of collections that no longer exist (their tombstones)."""
        cur = self._conn.execute(
            f"DELETE FROM changes WHERE at < ? AND collection_id NOT IN ({_marks(live)})", (before, *live)
        )
        return cur.rowcount

    # remembered answers

    def recall(self, key: str, now: float) -> tuple[str, str] | None:
        """(fingerprint, answer) remembered under `key`, unless expired."""
        row = self._conn.execute(
            "SELECT fingerprint, answer FROM requests WHERE key = ? AND expires_at > ?", (key, now)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def remember(self, key: str, fingerprint: str, collection_id: str, answer: str, expires_at: float) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO requests (key, fingerprint, collection_id, answer, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, fingerprint, collection_id, answer, expires_at),
        )

    def prune_requests(self, now: float) -> int:
        return self._conn.execute("DELETE FROM requests WHERE expires_at <= ?", (now,)).rowcount

    def last_deletion_seq(self) -> int:
        """Sequence number of the latest deletion of a face, user or collection (0 if none)."""
        row = self._conn.execute(
            "SELECT max(seq) FROM changes WHERE kind IN ('face_deleted', 'user_deleted', 'collection_deleted')"
        ).fetchone()
        return int(row[0] or 0)

    def scrubbed_seq(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'scrubbed_seq'").fetchone()
        return int(row[0]) if row else 0

    def last_face_seq(self, collection_id: str) -> int:
        """Sequence number of the collection's latest face change (0 if none)."""
        row = self._conn.execute(
            "SELECT seq FROM changes WHERE collection_id = ? AND kind IN (?, ?) ORDER BY seq DESC LIMIT 1",
            (collection_id, *FACE_CHANGES),
        ).fetchone()
        return int(row[0]) if row else 0

    # fleet sync: the central reads its feed, the device applies it

    def collection_head(self, collection_id: str) -> int:
        """The collection's latest change sequence (0 if none)."""
        row = self._conn.execute("SELECT max(seq) FROM changes WHERE collection_id = ?", (collection_id,)).fetchone()
        return int(row[0] or 0)

    def changes_between(self, collection_id: str, after: int, upto: int) -> list[tuple[ChangeKind, str, str | None]]:
        """(kind, object id, user id) of the collection's changes in (after, upto], in order."""
        rows = self._conn.execute(
            "SELECT kind, object_id, user_id FROM changes WHERE collection_id = ? AND seq > ? AND seq <= ?"
            " ORDER BY seq",
            (collection_id, after, upto),
        )
        return [(kind, object_id, user_id) for kind, object_id, user_id in rows]

    def faces_with_vectors(
        self, collection_id: str, face_ids: Sequence[str] | None
    ) -> tuple[list[FaceRecord], list[bytes]]:
        """Faces (all of the collection when face_ids is None) with their stored vectors, by face id."""
        sql = f"SELECT {_FACE_COLUMNS}, vector FROM faces WHERE collection_id = ?"
        if face_ids is None:
            chunks: list[tuple[object, ...]] = [(collection_id,)]
        else:
            ids = list(face_ids)
            chunks = [(collection_id, *ids[i : i + ID_CHUNK]) for i in range(0, len(ids), ID_CHUNK)]
        faces: list[FaceRecord] = []
        blobs: list[bytes] = []
        for args in chunks:
            query = sql if face_ids is None else sql + f" AND face_id IN ({_marks(args[1:])})"
            for row in self._conn.execute(query + " ORDER BY face_id", args):
                faces.append(_face(row[:-1])[1])
                blobs.append(row[-1])
        return faces, blobs

    def users_by_ids(self, collection_id: str, user_ids: Sequence[str] | None) -> list[UserRecord]:
        """Users (all of the collection when user_ids is None), by user id."""
        if user_ids is None:
            return self.list_users(collection_id, None, -1)
        ids = list(user_ids)
        found: list[UserRecord] = []
        for i in range(0, len(ids), ID_CHUNK):
            chunk = ids[i : i + ID_CHUNK]
            rows = self._conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE collection_id = ? AND user_id IN ({_marks(chunk)})"
                " ORDER BY user_id",
                (collection_id, *chunk),
            )
            found.extend(UserRecord(*row) for row in rows)
        return found

    def face_labels(self, collection_id: str) -> dict[str, int]:
        """Every face id of the collection and its index label."""
        rows = self._conn.execute("SELECT face_id, label FROM faces WHERE collection_id = ?", (collection_id,))
        return dict(rows.fetchall())

    def upsert_faces(self, faces: Sequence[FaceRecord], vectors: Vector) -> list[tuple[int, FaceRecord]]:
        """Insert faces under their given ids, or update the user of those already here (a face's vector and
        image never change). Returns (label, record) of the inserted ones."""
        existing: dict[str, int] = {}
        by_collection: dict[str, list[str]] = {}
        for face in faces:
            by_collection.setdefault(face.collection_id, []).append(face.face_id)
        for collection_id, ids in by_collection.items():
            existing.update((fid, label) for fid, (label, _) in self.faces_by_ids_chunked(collection_id, ids).items())
        inserted = []
        for face, vector in zip(faces, vectors, strict=True):
            if face.face_id in existing:
                self._conn.execute("UPDATE faces SET user_id = ? WHERE label = ?", (face.user_id,
                                                                                    existing[face.face_id]))
                continue
            box = face.bounding_box
            cur = self._conn.execute(
                "INSERT INTO faces (face_id, collection_id, image_id, external_image_id, bbox_width,"
                " bbox_height, bbox_left, bbox_top, confidence, index_faces_model_version, user_id, vector,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING label",
                (face.face_id, face.collection_id, face.image_id, face.external_image_id, box.width, box.height,
                 box.left, box.top, face.confidence, face.index_faces_model_version, face.user_id,
                 np.asarray(vector, dtype="<f4").tobytes(), face.created_at),
            )
            inserted.append((int(cur.fetchone()[0]), face))
        return inserted

    def faces_by_ids_chunked(self, collection_id: str, face_ids: Sequence[str]) -> dict[str, tuple[int, FaceRecord]]:
        found: dict[str, tuple[int, FaceRecord]] = {}
        for i in range(0, len(face_ids), ID_CHUNK):
            found.update(self.faces_by_ids(collection_id, face_ids[i : i + ID_CHUNK]))
        return found

    def upsert_users(self, users: Sequence[UserRecord]) -> None:
        self._conn.executemany(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?) ON CONFLICT (collection_id, user_id)"
            " DO UPDATE SET status = excluded.status, created_at = excluded.created_at",
            [(u.collection_id, u.user_id, u.status, u.created_at) for u in users],
        )

    def user_ids(self, collection_id: str) -> set[str]:
        rows = self._conn.execute("SELECT user_id FROM users WHERE collection_id = ?", (collection_id,))
        return {user_id for (user_id,) in rows}

    def get_sync(self, collection_id: str) -> SyncState | None:
        row = self._conn.execute(
            f"SELECT {_SYNC_COLUMNS} FROM synced_collections WHERE collection_id = ?", (collection_id,)
        ).fetchone()
        return SyncState(*row) if row else None

    def list_sync(self) -> list[SyncState]:
        return [SyncState(*row) for row in self._conn.execute(f"SELECT {_SYNC_COLUMNS} FROM synced_collections")]

    def put_sync(self, state: SyncState) -> None:
        self._conn.execute(
            f"INSERT INTO synced_collections ({_SYNC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (collection_id) DO UPDATE SET source = excluded.source, source_uid = excluded.source_uid,"
            " applied_seq = excluded.applied_seq, valid_until = excluded.valid_until, synced_at = excluded.synced_at,"
            " head_seq = excluded.head_seq",
            (state.collection_id, state.source, state.source_uid, state.applied_seq, state.valid_until,
             state.synced_at, state.head_seq),
        )

    def delete_sync(self, collection_id: str) -> None:
        self._conn.execute("DELETE FROM synced_collections WHERE collection_id = ?", (collection_id,))


class Database:
    """One SQLite connection per thread, so readers never wait on the writer under WAL."""

    shared = False
    """Only this process writes the file (the store's flock on the state directory sees to it)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # SQLite gives its -wal and -shm files the database file's mode: making it 0600 first makes all three
        # private whatever the umask.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        os.chmod(path, FILE_MODE)
        conn = self._connection()
        found = opened_stamp(conn, str(path), STAMP)
        # Both only take effect before the first table.  A 512-d face row is over 2 KiB: 8 KiB pages
        # hold three where 4 KiB pages hold one, so the file is much smaller.
        conn.execute("PRAGMA page_size = 8192")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        if found is None:
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} {stamp_sql(STAMP)} COMMIT;")
        elif found.version < SCHEMA_VERSION:
            steps = " ".join(_MIGRATIONS[version] for version in range(found.version, SCHEMA_VERSION))
            conn.executescript(f"BEGIN IMMEDIATE; {steps} {stamp_sql(found.opened_by(STAMP))} COMMIT;")
        conn.executescript(_SYNC_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Only this thread uses it; check_same_thread=False lets close() release it from another.
            conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            for pragma in ("synchronous = FULL", "secure_delete = ON", f"busy_timeout = {BUSY_TIMEOUT_MS}"):
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        conn = self._connection()
        try:
            conn.execute(begin)
            try:
                yield Tx(conn)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (a full disk does that); a COMMIT that failed has not.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            _raise_unwritable(exc)
            raise

    def read(self) -> AbstractContextManager[Tx]:
        """A consistent snapshot across several queries."""
        return self._transaction("BEGIN DEFERRED")

    def write(self, collection_id: str | None = None) -> AbstractContextManager[Tx]:
        """A write transaction; it is durable once the with-block exits without error.

        SQLite has one writer at a time; `collection_id` matters to the shared engine (edge.store.pg), where
        it serialises the writers of that collection.
        """
        return self._transaction("BEGIN IMMEDIATE")

    def checkpoint(self, *, scrub: bool = False, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        """Return free pages to the file system, then fold the WAL into the database and truncate it,
        so rows deleted earlier leave no copy in the -wal.

        secure_delete zeroes a deleted row where it lies, but not the copies a b-tree rebalance left in
        a page's free space when it moved rows to another page; `scrub` rewrites every page (VACUUM),
        which leaves none, and records how far that reaches. VACUUM needs room for a second copy: if it
        fails, the log is still truncated and the failure raised. `CheckpointBlocked` if a reader in
        another process holds the WAL for longer than `busy_timeout_ms`.
        """
        conn = self._connection()
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        try:
            failure: sqlite3.Error | None = None
            if scrub:
                try:
                    seq = Tx(conn).last_deletion_seq()
                    conn.executescript("VACUUM;")
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('scrubbed_seq', ?)", (seq,))
                except sqlite3.Error as exc:
                    failure = exc
            if failure is not None or not scrub:
                # executescript: execute() would free a single page per call.
                conn.executescript("PRAGMA incremental_vacuum;")
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if failure is not None:
                raise failure
        except sqlite3.Error as exc:
            _raise_unwritable(exc)
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if busy:
            raise CheckpointBlocked("the write-ahead log is held by a reader in another process")

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def _raise_unwritable(exc: sqlite3.Error) -> None:
    """Raise `StoreUnwritable` from `exc` if it says the storage cannot take writes."""
    unwritable = storage_error(exc)
    if unwritable is not None:
        raise unwritable from exc
