"""The access log: every search decision the device made, for a site to audit ("who was let in at 09:14?").

One row per search: when, which operation, which key, which collection, the best match (FaceId,
UserId, ExternalImageId, Similarity) or none, and the threshold it was held to. No image and no
vector. It is its own SQLite file so that a search never waits for the store's fsync: WAL with
synchronous=NORMAL keeps every acknowledged row through kill -9 (the OS has it) at a fraction of a
millisecond; a power cut may lose the last few. Erasing a person (DeleteFaces, DeleteUser,
DeleteCollection) erases their rows too, and rows older than the retention are pruned.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from edge.store.formats import Stamp, opened_stamp, stamp_sql

LOG_FILE = "access.sqlite3"
#: The access log's format (`edge.store.formats`): version 1 is the decisions table below.
STAMP = Stamp(1, 1)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    at REAL NOT NULL,
    operation TEXT NOT NULL,
    key_id TEXT,
    collection_id TEXT NOT NULL,
    face_id TEXT,
    user_id TEXT,
    external_image_id TEXT,
    similarity REAL,
    threshold REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (at);
CREATE INDEX IF NOT EXISTS decisions_by_face ON decisions (collection_id, face_id) WHERE face_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS decisions_by_user ON decisions (collection_id, user_id) WHERE user_id IS NOT NULL;
"""


@dataclass(frozen=True)
class Decision:
    """One search and what it decided; the match fields are None when nobody reached the threshold."""

    at: float
    operation: str
    key_id: str | None
    collection_id: str
    face_id: str | None
    user_id: str | None
    external_image_id: str | None
    similarity: float | None
    threshold: float


_COLUMNS = ", ".join(f.name for f in fields(Decision))


class AccessLog:
    """The decisions of one state directory; safe to use from many threads."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        if not readonly and not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite gives -wal/-shm the same mode
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        found = opened_stamp(self._conn, str(path), STAMP)
        if not readonly:
            stamp = STAMP if found is None else found.opened_by(STAMP)
            migrate = "" if stamp == found else stamp_sql(stamp)
            self._conn.executescript("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                                     f"PRAGMA secure_delete = ON; BEGIN IMMEDIATE; {_SCHEMA} {migrate} COMMIT;")

    def record(self, decision: Decision) -> None:
        with self._lock:
            self._conn.execute(f"INSERT INTO decisions ({_COLUMNS}) VALUES ({', '.join('?' * 9)})", astuple(decision))

    def query(self, *, since: float | None = None, until: float | None = None, collection_id: str | None = None,
              user_id: str | None = None) -> list[Decision]:
        """Decisions in time order, filtered by any of a time range, a collection and a user."""
        sql = f"SELECT {_COLUMNS} FROM decisions WHERE at >= ? AND at < ?"
        args: list[object] = [since or 0.0, until or 1e18]
        if collection_id is not None:
            sql += " AND collection_id = ?"
            args.append(collection_id)
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        with self._lock:
            return [Decision(*row) for row in self._conn.execute(sql + " ORDER BY at", args)]

    def erase_faces(self, collection_id: str, face_ids: Sequence[str]) -> None:
        with self._erasing() as conn:
            conn.executemany("DELETE FROM decisions WHERE collection_id = ? AND face_id = ?",
                             [(collection_id, fid) for fid in face_ids])

    def erase_user(self, collection_id: str, user_id: str) -> None:
        with self._erasing() as conn:
            conn.execute("DELETE FROM decisions WHERE collection_id = ? AND user_id = ?", (collection_id, user_id))

    def erase_collection(self, collection_id: str) -> None:
        with self._erasing() as conn:
            conn.execute("DELETE FROM decisions WHERE collection_id = ?", (collection_id,))

    def forget_absent(self, store_db: Path) -> None:
        """Erase the rows of faces, users and collections the store's database no longer holds."""
        with self._lock:
            self._conn.execute("ATTACH DATABASE ? AS store", (str(store_db),))
        try:
            with self._erasing() as conn:
                conn.execute(
                    "DELETE FROM decisions WHERE collection_id NOT IN (SELECT collection_id FROM store.collections)"
                    " OR (face_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM store.faces f"
                    "     WHERE f.collection_id = decisions.collection_id AND f.face_id = decisions.face_id))"
                    " OR (user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM store.users u"
                    "     WHERE u.collection_id = decisions.collection_id AND u.user_id = decisions.user_id))")
        finally:
            with self._lock:
                self._conn.execute("DETACH DATABASE store")

    def prune(self, retention_s: float, *, now: float | None = None) -> int:
        """Delete decisions older than the retention; returns how many."""
        with self._erasing() as conn:
            return conn.execute("DELETE FROM decisions WHERE at < ?", ((now or time.time()) - retention_s,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _erasing(self) -> Iterator[sqlite3.Connection]:
        """A deletion, then a WAL checkpoint: the erased rows leave the -wal file too (secure_delete zeroes
        them in the database file)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
