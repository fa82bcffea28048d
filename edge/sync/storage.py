"""Where the central keeps what it has published: target files, each role's signed metadata, the root chain.

One interface, `FeedStorage`; `SqliteFeedStorage` beside a SQLite store (and, for several central
instances on one database, the PostgreSQL one in `edge.sync.pg`). A publication is one transaction
that also serialises the publishers of a collection, so two instances never sign two different
versions under one number.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from edge.files import FILE_MODE

BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feed_files (
    collection_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (collection_id, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed_metadata (
    collection_id TEXT NOT NULL,
    role TEXT NOT NULL,
    version INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (collection_id, role, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed_roots (
    version INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
"""


class FeedTx(Protocol):
    """Writes of one publication (see FeedStorage.publishing)."""

    collection_id: str

    def latest(self, role: str) -> bytes | None: ...

    def put_file(self, digest: str, body: bytes) -> None: ...

    def keep_files(self, digests: Sequence[str]) -> None:
        """Delete every file of the collection not listed (a published deletion erases its old files)."""

    def put_metadata(self, role: str, version: int, body: bytes) -> None: ...

    def prune_metadata(self, role: str, below: int) -> None: ...


class FeedStorage(Protocol):
    def publishing(self, collection_id: str) -> AbstractContextManager[FeedTx]:
        """A transaction that no other publisher of this collection runs beside."""

    def file(self, collection_id: str, digest: str) -> bytes | None: ...

    def metadata(self, collection_id: str, role: str, version: int | None) -> bytes | None:
        """A role's metadata at a version, or its latest when version is None."""

    def root(self, version: int | None) -> bytes | None:
        """A root version, or the latest when version is None."""

    def put_root(self, version: int, body: bytes) -> None: ...

    def collections(self) -> list[str]: ...

    def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection, collection_id: str) -> None:
        self._conn = conn
        self._cid = self.collection_id = collection_id
        self.wrote = False

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        self._conn.execute(sql, args)
        self.wrote = True

    def latest(self, role: str) -> bytes | None:
        return _latest(self._conn, self._cid, role)

    def put_file(self, digest: str, body: bytes) -> None:
        self._write("INSERT OR IGNORE INTO feed_files VALUES (?, ?, ?)", (self._cid, digest, body))

    def keep_files(self, digests: Sequence[str]) -> None:
        marks = ",".join("?" * len(digests))
        self._write(f"DELETE FROM feed_files WHERE collection_id = ? AND digest NOT IN ({marks})",
                    (self._cid, *digests))

    def put_metadata(self, role: str, version: int, body: bytes) -> None:
        self._write("INSERT INTO feed_metadata VALUES (?, ?, ?, ?)", (self._cid, role, version, body))

    def prune_metadata(self, role: str, below: int) -> None:
        self._write("DELETE FROM feed_metadata WHERE collection_id = ? AND role = ? AND version < ?",
                    (self._cid, role, below))


class SqliteFeedStorage:
    """The feed in a SQLite file of its own (secure_delete: erased files leave no bytes behind)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        # Private before SQLite opens it (SQLite gives its -wal and -shm files the same mode): it holds vectors.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        os.chmod(path, FILE_MODE)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            for pragma in ("journal_mode = WAL", "synchronous = FULL", "secure_delete = ON"):
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def publishing(self, collection_id: str) -> Iterator[FeedTx]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        tx = _SqliteTx(conn, collection_id)
        try:
            yield tx
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if tx.wrote:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # deleted files leave the write-ahead log too

    def file(self, collection_id: str, digest: str) -> bytes | None:
        row = self._conn().execute("SELECT body FROM feed_files WHERE collection_id = ? AND digest = ?",
                                   (collection_id, digest)).fetchone()
        return bytes(row[0]) if row else None

    def metadata(self, collection_id: str, role: str, version: int | None) -> bytes | None:
        if version is None:
            return _latest(self._conn(), collection_id, role)
        row = self._conn().execute(
            "SELECT body FROM feed_metadata WHERE collection_id = ? AND role = ? AND version = ?",
            (collection_id, role, version)).fetchone()
        return bytes(row[0]) if row else None

    def root(self, version: int | None) -> bytes | None:
        if version is None:
            row = self._conn().execute("SELECT body FROM feed_roots ORDER BY version DESC LIMIT 1").fetchone()
        else:
            row = self._conn().execute("SELECT body FROM feed_roots WHERE version = ?", (version,)).fetchone()
        return bytes(row[0]) if row else None

    def put_root(self, version: int, body: bytes) -> None:
        self._conn().execute("INSERT INTO feed_roots VALUES (?, ?)", (version, body))

    def collections(self) -> list[str]:
        rows = self._conn().execute("SELECT DISTINCT collection_id FROM feed_metadata ORDER BY collection_id")
        return [cid for (cid,) in rows]

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _latest(conn: sqlite3.Connection, collection_id: str, role: str) -> bytes | None:
    row = conn.execute("SELECT body FROM feed_metadata WHERE collection_id = ? AND role = ?"
                       " ORDER BY version DESC LIMIT 1", (collection_id, role)).fetchone()
    return bytes(row[0]) if row else None
