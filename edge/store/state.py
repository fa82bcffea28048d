"""The state directory as a whole: the formats it holds and this build's, and the snapshot that a rollback
restores when a new release would leave the state in a form the previous one cannot read.

The snapshot holds the store's database and the access log, each copied with SQLite's online backup (a
consistent copy while the daemon writes), and the index files, linked (they are only ever replaced by a
rename, never written in place). It is private and holds every face, so it must not outlive the upgrade it
guards: ansible deletes it as soon as the new release is ready, or once the rollback has restored it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from edge.files import FILE_MODE, fsync_path, private_directory, write_private
from edge.store import access_log, db, index
from edge.store.errors import StoreError
from edge.store.formats import Stamp, sqlite_file_stamp
from edge.store.store import COLLECTIONS_DIR, DB_FILE, LOCK_FILE, lock_directory

#: This build's formats: what it writes, and (its version) the newest it reads.
FORMATS: dict[str, Stamp] = {"store": db.STAMP, "access_log": access_log.STAMP, "index": index.STAMP}
#: The only version of each format that builds from before stamps read (they refuse or rebuild any other).
LEGACY: dict[str, int] = {"store": 2, "access_log": 1, "index": 1}
_SQLITE = {"store": DB_FILE, "access_log": access_log.LOG_FILE}
#: Written last into a snapshot: one without it was cut short and is never restored.
COMPLETE = "complete.json"


def found_stamps(state_dir: Path) -> dict[str, Stamp | None]:
    """The stamp of each format on disk, read without changing anything (None: absent or not stamped yet).
    The index files' is the newest of their manifests'."""
    found: dict[str, Stamp | None] = {name: sqlite_file_stamp(state_dir / file) for name, file in _SQLITE.items()}
    if found["access_log"] is None and (state_dir / access_log.LOG_FILE).is_file():  # from before stamps
        found["access_log"] = Stamp(LEGACY["access_log"], LEGACY["access_log"])
    manifests = [stamp for path in sorted((state_dir / COLLECTIONS_DIR).glob(f"*/{index.MANIFEST_FILE}"))
                 if (stamp := index.manifest_stamp(path)) is not None]
    found["index"] = (Stamp(max(s.version for s in manifests), max(s.min_reader for s in manifests))
                      if manifests else None)
    return found


def take_snapshot(state_dir: Path, dest: Path) -> None:
    """Copy the state a rollback would restore into `dest` (replaced if a run cut short left one there).

    The index files are linked before the databases are copied, so that no index is newer than the database
    restored with it (an older one is replayed forward from the change log at open).
    """
    shutil.rmtree(dest, ignore_errors=True)
    private_directory(dest)
    try:
        collections = state_dir / COLLECTIONS_DIR
        for path in sorted(collections.glob("*/*")):
            if path.name in (index.INDEX_FILE, index.MANIFEST_FILE):
                private_directory(dest / COLLECTIONS_DIR / path.parent.name)
                os.link(path, dest / COLLECTIONS_DIR / path.parent.name / path.name)
        copied = []
        for file in _SQLITE.values():
            if (state_dir / file).is_file():
                _backup(state_dir / file, dest / file)
                copied.append(file)
        write_private(dest / COMPLETE, json.dumps({"databases": copied}))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def restore_snapshot(state_dir: Path, snapshot: Path) -> None:
    """Put the state back as `take_snapshot` copied it; only while no daemon holds the state directory."""
    try:
        copied = json.loads((snapshot / COMPLETE).read_text())["databases"]
    except (OSError, ValueError, KeyError) as exc:
        raise StoreError(f"{snapshot} is not a complete snapshot of the state ({exc}); nothing was restored") from exc
    lock = lock_directory(state_dir / LOCK_FILE)
    try:
        for file in _SQLITE.values():
            if file in copied:
                _backup(snapshot / file, state_dir / file)
            else:  # the new release made it: the previous one starts without it, as it ran before
                for suffix in ("", "-wal", "-shm"):
                    (state_dir / f"{file}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(state_dir / COLLECTIONS_DIR, ignore_errors=True)
        if (snapshot / COLLECTIONS_DIR).is_dir():
            os.replace(snapshot / COLLECTIONS_DIR, state_dir / COLLECTIONS_DIR)
        fsync_path(state_dir)
    finally:
        os.close(lock)


def _backup(source: Path, target: Path) -> None:
    """SQLite's online backup of `source` into `target` (0600): one read transaction, so a consistent copy
    however the source is being written; the target's write-ahead log is folded in and truncated after."""
    if not target.exists():
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        src.backup(dst)
        dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        dst.close()
        src.close()
    fsync_path(target)
