"""Which builds may open a file of the state directory: its format's version and the oldest reader it allows.

Every on-disk format records its own version and `min_reader`, the oldest version of the format whose
builds may open it, to read and to write. A change that older builds can safely ignore (a table they never
read, and whose rows they need not keep up) leaves `min_reader` where it was; one they would misread, or
whose rows they would fail to maintain (an erasure that must reach them), raises it. A build opens a file
of a newer version when the file's `min_reader` allows it, as it is, and refuses it otherwise, changing
nothing: so rolling back to the previous release works after an additive change, and is refused clearly
(not half done) after an incompatible one.

`min_reader` is recorded only where it differs from the version: files whose formats did not change stay
byte for byte what earlier builds, which know nothing of it, wrote and read.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.store.errors import StateTooNew

#: Where an SQLite file of the state keeps its min_reader (beside `PRAGMA user_version`).
META_TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"


@dataclass(frozen=True, slots=True)
class Stamp:
    """A format's version, and the oldest version of the format whose builds may open it."""

    version: int
    min_reader: int

    def readable_by(self, version: int) -> bool:
        return self.min_reader <= version

    def opened_by(self, build: Stamp) -> Stamp:
        """The stamp after a build that writes `build` has opened the file: an older file is migrated (an
        additive migration keeps its min_reader), a newer one is left as it is."""
        if self.version >= build.version:
            return self
        return Stamp(build.version, max(self.min_reader, build.min_reader))

    def as_dict(self) -> dict[str, int]:
        return {"version": self.version, "min_reader": self.min_reader}


def require_readable(what: str, found: Stamp, build: Stamp) -> None:
    """Refuse a file this build may not open, naming both versions and what to do."""
    if not found.readable_by(build.version):
        raise StateTooNew(
            f"{what} is format version {found.version}, written by a newer build, and needs a build that reads "
            f"version {found.min_reader} or later; this build reads up to version {build.version}. Nothing was "
            "changed: run the release that wrote it (or a later one), or restore the state saved before the "
            "upgrade (ansible's rollback does so itself)."
        )


def sqlite_stamp(conn: sqlite3.Connection) -> Stamp | None:
    """The stamp of an SQLite file (`user_version`, and `meta`'s min_reader where recorded); None while it
    has none (a new file, or one from before stamps, which the build then stamps as its own)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == 0:
        return None
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key = 'min_reader'").fetchone() if has_meta else None
    return Stamp(version, int(row[0]) if row else version)


def opened_stamp(conn: sqlite3.Connection, what: str, build: Stamp) -> Stamp | None:
    """`sqlite_stamp` of a file just connected to, before anything is written to it; one this build may not
    open is refused, and the connection closed."""
    found = sqlite_stamp(conn)
    if found is not None and not found.readable_by(build.version):
        conn.close()
        require_readable(what, found, build)
    return found


def sqlite_file_stamp(path: Path) -> Stamp | None:
    """`sqlite_stamp` of a file, without writing to it (a daemon may be); None where there is no file.

    Not `mode=ro`: a read-only connection cannot remove the write-ahead log it opens, and would leave one.
    """
    if not path.is_file():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        return sqlite_stamp(conn)
    finally:
        conn.close()


def stamp_sql(stamp: Stamp) -> str:
    """SQL that records `stamp` in an SQLite file, to run inside the transaction that migrates it."""
    if stamp.min_reader == stamp.version:
        record = "DELETE FROM meta WHERE key = 'min_reader';"
    else:
        record = f"INSERT OR REPLACE INTO meta (key, value) VALUES ('min_reader', {int(stamp.min_reader)});"
    return f"{META_TABLE} {record} PRAGMA user_version = {int(stamp.version)};"


def previous_reads(after: Stamp, previous: int | None, legacy: int) -> bool:
    """Whether the release that ran before reads a file stamped `after`: one that knows stamps reads up to its
    version `previous`; one from before them (None) reads only its own version, `legacy`, of the format."""
    if previous is None:
        return after.version == legacy
    return after.readable_by(previous)
