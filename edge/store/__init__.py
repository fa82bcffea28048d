"""Durable face collections: SQLite as the source of truth plus a per-collection vector index."""

from edge.store.errors import (
    CheckpointBlocked,
    CollectionExists,
    CollectionNotFound,
    FaceModelMismatch,
    FaceNotFound,
    InvalidVector,
    RequestMismatch,
    StoreError,
    StoreLocked,
    StoreUnwritable,
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
from edge.store.store import Store, StoreHealth, open_store

__all__ = [
    "BoundingBox",
    "CheckpointBlocked",
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
    "RequestMismatch",
    "SearchHit",
    "Store",
    "StoreError",
    "StoreHealth",
    "StoreLocked",
    "StoreUnwritable",
    "UserExists",
    "UserNotFound",
    "UserRecord",
    "open_store",
]
