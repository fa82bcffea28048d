"""Typed errors of the storage layer, so the operations layer can map each to a Rekognition error."""

from __future__ import annotations

import errno
import sqlite3


class StoreError(Exception):
    """Base class: anything the store refuses or cannot do."""


class StoreLocked(StoreError):
    """Another process holds the state directory; two writers would corrupt the index files."""


class StateTooNew(StoreError):
    """A file of the state written by a newer build in a form this build may not open (`edge.store.formats`)."""


class CollectionNotFound(StoreError):
    def __init__(self, collection_id: str) -> None:
        super().__init__(f"collection {collection_id!r} not found")
        self.collection_id = collection_id


class CollectionExists(StoreError):
    def __init__(self, collection_id: str) -> None:
        super().__init__(f"collection {collection_id!r} already exists")
        self.collection_id = collection_id


class TooManyTags(StoreError):
    """A tag write that would leave the collection with more tags than allowed; nothing was changed."""

    def __init__(self, collection_id: str, limit: int) -> None:
        super().__init__(f"collection {collection_id!r} would have more than {limit} tags")
        self.collection_id = collection_id
        self.limit = limit


class FaceNotFound(StoreError):
    def __init__(self, collection_id: str, face_id: str) -> None:
        super().__init__(f"face {face_id!r} not found in collection {collection_id!r}")
        self.collection_id = collection_id
        self.face_id = face_id


class UserNotFound(StoreError):
    def __init__(self, collection_id: str, user_id: str) -> None:
        super().__init__(f"user {user_id!r} not found in collection {collection_id!r}")
        self.collection_id = collection_id
        self.user_id = user_id


class UserExists(StoreError):
    def __init__(self, collection_id: str, user_id: str) -> None:
        super().__init__(f"user {user_id!r} already exists in collection {collection_id!r}")
        self.collection_id = collection_id
        self.user_id = user_id


class FaceModelMismatch(StoreError):
    """A vector from another face model (version or dimension) than the collection is pinned to.

    Mixing embedding spaces would make every similarity in the collection meaningless.
    """

    def __init__(self, collection_id: str, expected: tuple[str, int], got: tuple[str, int]) -> None:
        super().__init__(
            f"collection {collection_id!r} holds face model {expected[0]} ({expected[1]}-d), got {got[0]} ({got[1]}-d)"
        )
        self.collection_id = collection_id
        self.expected = expected
        self.got = got


class InvalidVector(StoreError):
    """A vector that cannot be L2-normalised (zero, NaN or infinite components)."""


class IndexInvalid(StoreError):
    """A saved vector index that must not be served (corrupt, truncated, mismatched or stale).

    Internal to recovery: the store catches it and rebuilds the index from SQLite.
    """


class CheckpointBlocked(StoreError):
    """A reader in another process holds the write-ahead log, so it cannot be folded in and truncated yet."""


class StoreUnwritable(StoreError):
    """The store cannot write (the disk is full, read-only or failing): nothing was changed.

    `full` says it is for lack of space, which freeing space cures; otherwise an operator must look.
    """

    def __init__(self, reason: str, *, full: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.full = full


class RequestMismatch(StoreError):
    """A ClientRequestToken remembered with other parameters."""


#: Failures of the file system that a write cannot get past: (reason, whether it is for lack of space).
_UNWRITABLE_ERRNOS = {errno.ENOSPC: ("the disk is full", True), errno.EDQUOT: ("the disk quota is exhausted", True),
                      errno.EFBIG: ("a file reached its size limit", True),
                      errno.EROFS: ("the file system is read-only", False),
                      errno.EIO: ("the disk reports I/O errors", False)}
_UNWRITABLE_SQLITE = {sqlite3.SQLITE_FULL: ("the disk is full", True),
                      sqlite3.SQLITE_READONLY: ("the database is read-only", False),
                      sqlite3.SQLITE_IOERR: ("the disk reports I/O errors", False)}


def storage_error(exc: OSError | sqlite3.Error) -> StoreUnwritable | None:
    """`StoreUnwritable` for a failure that says the storage cannot take writes, else None."""
    if isinstance(exc, OSError):
        found = _UNWRITABLE_ERRNOS.get(exc.errno or 0)
    else:
        code = getattr(exc, "sqlite_errorcode", None)
        found = _UNWRITABLE_SQLITE.get(code & 0xFF) if code is not None else None
    if found is None:
        return None
    reason, full = found
    return StoreUnwritable(f"{reason} ({exc})", full=full)


class CollectionReadOnly(StoreError):
    """A collection this device follows from a central: it is enrolled there, never changed here."""

    def __init__(self, collection_id: str, source: str) -> None:
        super().__init__(f"collection {collection_id!r} is synced from {source}: enrol there")
        self.collection_id = collection_id
        self.source = source


class CollectionStale(StoreError):
    """A synced collection whose feed metadata expired: it may still hold people deleted at the central."""

    def __init__(self, collection_id: str, valid_until: float) -> None:
        super().__init__(f"collection {collection_id!r} has not been synced since its feed expired")
        self.collection_id = collection_id
        self.valid_until = valid_until


class FeedOutOfOrder(StoreError):
    """A batch that does not start where this device's copy stands: applying it would lose or repeat changes."""
