"""The central's published feed in PostgreSQL, shared by every central instance of one database.

A publication holds a transaction-scoped advisory lock on its collection, so two instances never sign
two different versions under one number; readers see only committed publications.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from edge.sync.storage import FeedTx

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feed_files (
    collection_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (collection_id, digest)
);
CREATE TABLE IF NOT EXISTS feed_metadata (
    collection_id TEXT NOT NULL,
    role TEXT NOT NULL,
    version BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (collection_id, role, version)
);
CREATE TABLE IF NOT EXISTS feed_roots (
    version BIGINT PRIMARY KEY,
    body BYTEA NOT NULL
);
"""
SCHEMA_LOCK = 7_206_021_102


class _PgTx:
    def __init__(self, conn: psycopg.Connection[Any], collection_id: str) -> None:
        self._conn = conn
        self.collection_id = collection_id

    def latest(self, role: str) -> bytes | None:
        return _latest(self._conn, self.collection_id, role)

    def put_file(self, digest: str, body: bytes) -> None:
        self._conn.execute("INSERT INTO feed_files VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                           (self.collection_id, digest, body))

    def keep_files(self, digests: Sequence[str]) -> None:
        self._conn.execute("DELETE FROM feed_files WHERE collection_id = %s AND NOT (digest = ANY(%s))",
                           (self.collection_id, list(digests)))

    def put_metadata(self, role: str, version: int, body: bytes) -> None:
        self._conn.execute("INSERT INTO feed_metadata VALUES (%s, %s, %s, %s)",
                           (self.collection_id, role, version, body))

    def prune_metadata(self, role: str, below: int) -> None:
        self._conn.execute("DELETE FROM feed_metadata WHERE collection_id = %s AND role = %s AND version < %s",
                           (self.collection_id, role, below))


class PgFeedStorage:
    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        self._pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=True)
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(_SCHEMA)

    @contextmanager
    def publishing(self, collection_id: str) -> Iterator[FeedTx]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("edge-face feed " + collection_id,))
            yield _PgTx(conn, collection_id)

    def file(self, collection_id: str, digest: str) -> bytes | None:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT body FROM feed_files WHERE collection_id = %s AND digest = %s",
                               (collection_id, digest)).fetchone()
        return bytes(row[0]) if row else None

    def metadata(self, collection_id: str, role: str, version: int | None) -> bytes | None:
        with self._pool.connection() as conn:
            if version is None:
                return _latest(conn, collection_id, role)
            row = conn.execute(
                "SELECT body FROM feed_metadata WHERE collection_id = %s AND role = %s AND version = %s",
                (collection_id, role, version)).fetchone()
        return bytes(row[0]) if row else None

    def root(self, version: int | None) -> bytes | None:
        with self._pool.connection() as conn:
            if version is None:
                row = conn.execute("SELECT body FROM feed_roots ORDER BY version DESC LIMIT 1").fetchone()
            else:
                row = conn.execute("SELECT body FROM feed_roots WHERE version = %s", (version,)).fetchone()
        return bytes(row[0]) if row else None

    def put_root(self, version: int, body: bytes) -> None:
        with self._pool.connection() as conn:
            conn.execute("INSERT INTO feed_roots VALUES (%s, %s)", (version, body))

    def collections(self) -> list[str]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT DISTINCT collection_id FROM feed_metadata ORDER BY collection_id")
            return [cid for (cid,) in rows]

    def close(self) -> None:
        self._pool.close()


def _latest(conn: psycopg.Connection[Any], collection_id: str, role: str) -> bytes | None:
    row = conn.execute("SELECT body FROM feed_metadata WHERE collection_id = %s AND role = %s"
                       " ORDER BY version DESC LIMIT 1", (collection_id, role)).fetchone()
    return bytes(row[0]) if row else None
