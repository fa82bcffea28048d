"""Typed errors of the storage layer, so the operations layer can map each to a Rekognition error."""

from __future__ import annotations


class StoreError(Exception):
    """Base class: anything the store refuses or cannot do."""


class StoreLocked(StoreError):
    """Another process holds the state directory; two writers would corrupt the index files."""


class CollectionNotFound(StoreError):
    def __init__(self, collection_id: str) -> None:
        super().__init__(f"collection {collection_id!r} not found")
        self.collection_id = collection_id


class CollectionExists(StoreError):
    def __init__(self, collection_id: str) -> None:
        super().__init__(f"collection {collection_id!r} already exists")
        self.collection_id = collection_id


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
