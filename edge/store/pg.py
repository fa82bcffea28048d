"""PostgreSQL as the store's database, for the central: several stateless instances in front of one database.

The queries are `edge.store.db.Tx`'s own, through a small adapter (placeholders, SQLite's planner hints);
what differs is here: the schema, and sequence numbers per collection. Every write transaction first
takes the row lock of its collection's counter (`collection_seqs`), so two instances writing one
collection run one after the other: a sequence number is never handed out twice, labels grow with it,
and each instance's in-memory index can follow the others by replaying the change log.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from edge.store.db import ChangeKind, Cursor, Tx
from edge.store.models import CollectionRecord, UserRecord

NO_LIMIT = 2**62
"""SQLite reads LIMIT -1 as no limit; PostgreSQL refuses a negative one."""
SCHEMA_LOCK = 7_206_021_101
"""pg_advisory_xact_lock key: instances starting together create the schema one at a time."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    collection_id TEXT PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    arn TEXT NOT NULL,
    face_model_version TEXT NOT NULL,
    dim INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
-- Outlives a deleted collection, so a namesake's sequence numbers continue instead of repeating.
CREATE TABLE IF NOT EXISTS collection_seqs (
    collection_id TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    label BIGSERIAL PRIMARY KEY,
    face_id TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    image_id TEXT NOT NULL,
    external_image_id TEXT,
    bbox_width DOUBLE PRECISION NOT NULL,
    bbox_height DOUBLE PRECISION NOT NULL,
    bbox_left DOUBLE PRECISION NOT NULL,
    bbox_top DOUBLE PRECISION NOT NULL,
    confidence DOUBLE PRECISION NOT NULL,
    index_faces_model_version TEXT NOT NULL,
    user_id TEXT,
    vector BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS faces_by_id ON faces (collection_id, face_id);
CREATE INDEX IF NOT EXISTS faces_by_image ON faces (collection_id, image_id);
CREATE INDEX IF NOT EXISTS faces_by_external_image ON faces (collection_id, external_image_id)
    WHERE external_image_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS faces_by_user ON faces (collection_id, user_id, face_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS faces_by_label ON faces (collection_id, label);
CREATE TABLE IF NOT EXISTS users (
    collection_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (collection_id, user_id)
);
CREATE TABLE IF NOT EXISTS changes (
    collection_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    label BIGINT,
    user_id TEXT,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (collection_id, seq)
);
-- Answers of idempotent calls by ClientRequestToken (edge.store.db has the why); meta as SQLite's.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    answer TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
-- Rekognition's tags of a collection, by its uid (edge.store.db has the why).
CREATE TABLE IF NOT EXISTS collection_tags (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (uid, key)
);
CREATE TABLE IF NOT EXISTS synced_collections (
    collection_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    source_uid TEXT NOT NULL,
    applied_seq BIGINT NOT NULL,
    valid_until DOUBLE PRECISION NOT NULL,
    synced_at DOUBLE PRECISION NOT NULL,
    head_seq BIGINT NOT NULL
);
"""


def _pg(sql: str) -> str:
    """SQLite's spelling of a query as PostgreSQL's: %s placeholders, no planner hints, and an empty IN list
    (SQLite's false) as one that matches nothing."""
    return (sql.replace(" NOT INDEXED", "").replace("IN ()", "IN (NULL)").replace("instr(", "strpos(")
            .replace("?", "%s"))


class _Adapter:
    """A psycopg connection that takes the queries as `Tx` writes them."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self._conn.execute(_pg(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> object:
        rows = [tuple(row) for row in parameters]
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(_pg(sql), rows)
        return None


class PgTx(Tx):
    """`Tx` on PostgreSQL: per-collection sequence numbers, and LIMIT ALL spelled as PostgreSQL takes it."""

    def lock_collection(self, collection_id: str) -> None:
        """Take the collection's write lock (its counter's row lock) until the transaction ends."""
        self._conn.execute(
            "INSERT INTO collection_seqs VALUES (?, 0) ON CONFLICT (collection_id) DO NOTHING", (collection_id,))
        self._conn.execute("SELECT last_seq FROM collection_seqs WHERE collection_id = ? FOR UPDATE",
                           (collection_id,)).fetchone()

    def record_changes(
        self,
        collection_id: str,
        kind: ChangeKind,
        object_ids: Iterable[str],
        labels: Iterable[int | None] | None = None,
        user_id: str | None = None,
    ) -> int:
        ids = list(object_ids)
        label_list = list(labels) if labels is not None else [None] * len(ids)
        last = int(self._conn.execute(
            "INSERT INTO collection_seqs VALUES (?, ?) ON CONFLICT (collection_id)"
            " DO UPDATE SET last_seq = collection_seqs.last_seq + excluded.last_seq RETURNING last_seq",
            (collection_id, len(ids))).fetchone()[0])
        first = last - len(ids) + 1
        at = time.time()
        self._conn.executemany(
            "INSERT INTO changes (collection_id, seq, kind, object_id, label, user_id, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(collection_id, first + i, kind, oid, label, user_id, at)
             for i, (oid, label) in enumerate(zip(ids, label_list, strict=True))])
        return last

    def remember(self, key: str, fingerprint: str, collection_id: str, answer: str, expires_at: float) -> None:
        self._conn.execute(
            "INSERT INTO requests (key, fingerprint, collection_id, answer, expires_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            " collection_id = excluded.collection_id, answer = excluded.answer, expires_at = excluded.expires_at",
            (key, fingerprint, collection_id, answer, expires_at),
        )

    def list_collections(self, after: str | None, limit: int) -> list[CollectionRecord]:
        return super().list_collections(after, limit if limit >= 0 else NO_LIMIT)

    def list_users(self, collection_id: str, after: str | None, limit: int) -> list[UserRecord]:
        return super().list_users(collection_id, after, limit if limit >= 0 else NO_LIMIT)


class PgDatabase:
    """The `Database` interface on a psycopg pool; `shared`: other instances write to it too."""

    shared = True

    def __init__(self, dsn: str, *, pool_size: int = 8) -> None:
        self._pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=True)
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(_SCHEMA)

    @contextmanager
    def _transaction(self, begin: str, collection_id: str | None = None) -> Iterator[Tx]:
        with self._pool.connection() as conn:
            conn.execute(begin)
            try:
                tx = PgTx(_Adapter(conn))
                if collection_id is not None:
                    tx.lock_collection(collection_id)
                yield tx
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self) -> AbstractContextManager[Tx]:
        """A consistent snapshot across several queries."""
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def write(self, collection_id: str | None = None) -> AbstractContextManager[Tx]:
        """A write transaction that holds the collection's lock from its first statement."""
        return self._transaction("BEGIN", collection_id)

    def checkpoint(self, *, scrub: bool = False, busy_timeout_ms: int = 0) -> None:
        """Nothing to fold: PostgreSQL has no per-instance files of its own here (its own VACUUM reclaims
        deleted rows' space; the devices' erasure guarantee is their SQLite's)."""

    def close(self) -> None:
        self._pool.close()
