"""Plain records exchanged with the store; the operations layer maps them to Rekognition shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """Ratios of the image size, as Rekognition reports them."""

    width: float
    height: float
    left: float
    top: float


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    collection_id: str
    arn: str
    face_model_version: str
    dim: int
    created_at: float
    uid: str
    """Identifies this incarnation of the id, so files of a deleted namesake are never reused."""


@dataclass(frozen=True, slots=True)
class NewFace:
    """A face to index; the store assigns the face id."""

    vector: npt.ArrayLike
    image_id: str
    bounding_box: BoundingBox
    confidence: float
    external_image_id: str | None = None


@dataclass(frozen=True, slots=True)
class FaceRecord:
    face_id: str
    collection_id: str
    image_id: str
    external_image_id: str | None
    bounding_box: BoundingBox
    confidence: float
    index_faces_model_version: str
    user_id: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class SearchHit:
    face: FaceRecord
    similarity: float
    """Cosine similarity in [-1, 1]."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    collection_id: str
    user_id: str
    status: Literal["CREATED", "ACTIVE"]
    """CREATED while no face is associated, ACTIVE once one is (Rekognition's UserStatus)."""
    created_at: float


@dataclass(frozen=True, slots=True)
class FaceDeletion:
    deleted: list[str]
    not_found: list[str]
    user_associated: list[str]
    """Refused, as Rekognition does: such faces must be disassociated from their user first."""


@dataclass(frozen=True, slots=True)
class FaceAssociation:
    """Outcome of associating faces with, or disassociating them from, a user."""

    succeeded: list[str]
    not_found: list[str]
    other_user: list[str]
    user_status: Literal["CREATED", "ACTIVE"]


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the store did to one collection's index (for logs, metrics and tests)."""

    kind: Literal["exact", "loaded", "replayed", "rebuilt"]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SyncState:
    """A collection this device follows from a central: read-only here, served until `valid_until`."""

    collection_id: str
    source: str
    """Where the collection is enrolled (the central's URL), for the error a local write gets."""
    source_uid: str
    """The central collection's uid: a namesake created there after a delete is another collection."""
    applied_seq: int
    """The central's change sequence this device's copy reflects (stored with the data it describes)."""
    valid_until: float
    """Expiry of the last verified feed metadata: past it, searches are refused (it may hold deleted people)."""
    synced_at: float
    head_seq: int = 0
    """The central's latest sequence when last seen."""


@dataclass(frozen=True, slots=True)
class FeedSlice:
    """Faces and users of a collection as the central publishes them: upserts with vectors, and tombstones."""

    from_seq: int
    to_seq: int
    faces: list[FaceRecord]
    vectors: Vector
    users: list[UserRecord]
    deleted_faces: list[str]
    deleted_users: list[str]
    all_users: list[str] | None = None
    """Every user id of the collection, when a user was deleted in the range: the change log may name a
    deleted user nowhere (erasure), so a device drops every user not listed."""


@dataclass(frozen=True, slots=True)
class FeedRead:
    """One consistent read of a collection for the feed: its head, the changes since a point, or all of it."""

    record: CollectionRecord
    head: int
    delta: FeedSlice | None
    export: FeedSlice | None


@dataclass(frozen=True, slots=True)
class FeedUpdate:
    """A verified batch or snapshot a device applies in one transaction, with the sequence it reaches."""

    collection_id: str
    source: str
    source_uid: str
    arn: str
    face_model_version: str
    dim: int
    snapshot: bool
    """A snapshot replaces the collection's whole content; a batch must start at the applied sequence."""
    changes: FeedSlice
    valid_until: float
    head_seq: int
    index: ShippedIndex | None = None
    """A graph the central built over a snapshot's faces, used when it fits this store (else built here)."""


@dataclass(frozen=True, slots=True)
class ShippedIndex:
    """An hnswlib file built over a snapshot's vectors in bundle order, labelled 0..count-1."""

    data: bytes
    count: int
    m: int
    ef_construction: int
    hnswlib_version: str
    projection: str | None = None
    """`HnswIndex.projection` of the graph: a device walks it only with the same one."""
