"""A look at a state directory from outside the daemon that owns it: for `edge-face status`.

Reads the database read-only (WAL lets it beside a running daemon) and takes no lock.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.store.store import DB_FILE, LOCK_FILE


@dataclass(frozen=True)
class CollectionSummary:
    collection_id: str
    face_model_version: str
    faces: int
    users: int
    created_at: float
    synced_from: str | None = None
    """The central it follows, or None for a local collection."""
    lag_changes: int | None = None
    last_sync_at: float | None = None
    valid_until: float | None = None


def collections(state_dir: Path) -> list[CollectionSummary]:
    """Every collection with its face and user counts; none when the store was never opened."""
    path = state_dir / DB_FILE
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT c.collection_id, c.face_model_version,"
            " (SELECT count(*) FROM faces f WHERE f.collection_id = c.collection_id),"
            " (SELECT count(*) FROM users u WHERE u.collection_id = c.collection_id), c.created_at,"
            " s.source, s.head_seq - s.applied_seq, s.synced_at, s.valid_until"
            " FROM collections c LEFT JOIN synced_collections s ON s.collection_id = c.collection_id"
            " ORDER BY c.collection_id").fetchall()
    finally:
        conn.close()
    return [CollectionSummary(*row) for row in rows]


def in_use(state_dir: Path) -> bool:
    """Whether a process (a daemon) holds the state directory's lock."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this call took
    return False


def disk_use(state_dir: Path) -> int:
    """Bytes of every file under the state directory."""
    return sum(p.stat().st_size for p in state_dir.rglob("*") if p.is_file())
