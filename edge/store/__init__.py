"""Durable face collections: SQLite as the source of truth plus a per-collection vector index."""

from edge.store.errors import (
    CollectionExists,
    CollectionNotFound,
    FaceModelMismatch,
    FaceNotFound,
    InvalidVector,
    StoreError,
    StoreLocked,
    UserExists,
    UserNotFound,
)
from edge.store.index import HnswParams
from edge.store.models import (
    BoundingBox,
    CollectionRecord,
    FaceAssociation,
    FaceDeletion,
    FaceRecord,
    NewFace,
    Recovery,
    SearchHit,
    UserRecord,
)
from edge.store.store import Store, open_store

__all__ = [
    "BoundingBox",
    "CollectionExists",
    "CollectionNotFound",
    "CollectionRecord",
    "FaceAssociation",
    "FaceDeletion",
    "FaceModelMismatch",
    "FaceNotFound",
    "FaceRecord",
    "HnswParams",
    "InvalidVector",
    "NewFace",
    "Recovery",
    "SearchHit",
    "Store",
    "StoreError",
    "StoreLocked",
    "UserExists",
    "UserNotFound",
    "UserRecord",
    "open_store",
]
