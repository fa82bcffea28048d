"""The feed's payload format: one batch of changes, or a whole collection (a snapshot), as bytes.

`MAGIC | u32 format | u64 n | u64 json length | zlib(JSON) | n * dim little-endian float32`. The JSON
holds the collection, the sequence range, the face and user records and the tombstones; the vectors
follow raw (they do not compress). TUF has already checked length and hash before a device decodes
one, so a decoding error means a bug or a key compromise: it is refused all the same, field by field.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from edge.store import BoundingBox, FaceRecord, FeedSlice, UserRecord

MAGIC = b"EDGEFEED"
FORMAT = 1
_HEAD = struct.Struct("<IQQ")


class BundleInvalid(ValueError):
    """Bytes that are not a well-formed feed bundle."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """A batch (changes in (from_seq, to_seq]) or a snapshot (the collection as of to_seq; from_seq 0)."""

    kind: Literal["batch", "snapshot"]
    collection_id: str
    collection_uid: str
    arn: str
    face_model_version: str
    dim: int
    changes: FeedSlice


def encode(bundle: Bundle) -> bytes:
    changes = bundle.changes
    doc = {
        "kind": bundle.kind,
        "collection_id": bundle.collection_id,
        "collection_uid": bundle.collection_uid,
        "arn": bundle.arn,
        "face_model_version": bundle.face_model_version,
        "dim": bundle.dim,
        "from_seq": changes.from_seq,
        "to_seq": changes.to_seq,
        "faces": [_face_row(face) for face in changes.faces],
        "users": [[u.user_id, u.status, u.created_at] for u in changes.users],
        "deleted_faces": changes.deleted_faces,
        "deleted_users": changes.deleted_users,
        "all_users": changes.all_users,
    }
    packed = zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)
    vectors = np.ascontiguousarray(changes.vectors, dtype="<f4").reshape(len(changes.faces), bundle.dim)
    return MAGIC + _HEAD.pack(FORMAT, len(changes.faces), len(packed)) + packed + vectors.tobytes()


def decode(data: bytes) -> Bundle:
    """Parse and check every field; raises BundleInvalid."""
    try:
        return _decode(data)
    except BundleInvalid:
        raise
    except (ValueError, KeyError, TypeError, IndexError, zlib.error, struct.error) as exc:
        raise BundleInvalid(f"malformed bundle: {exc}") from None


def _decode(data: bytes) -> Bundle:
    if not data.startswith(MAGIC):
        raise BundleInvalid("not a feed bundle")
    fmt, count, json_len = _HEAD.unpack_from(data, len(MAGIC))
    if fmt != FORMAT:
        raise BundleInvalid(f"bundle format {fmt}, this device reads {FORMAT}")
    start = len(MAGIC) + _HEAD.size
    doc: dict[str, Any] = json.loads(zlib.decompress(data[start : start + json_len]))
    dim = int(doc["dim"])
    if dim <= 0 or len(doc["faces"]) != count:
        raise BundleInvalid("face count or dimension does not match the header")
    raw = data[start + json_len :]
    if len(raw) != count * dim * 4:
        raise BundleInvalid(f"{len(raw)} bytes of vectors for {count} faces of dimension {dim}: truncated or padded")
    vectors = np.frombuffer(raw, dtype="<f4").reshape(count, dim).astype(np.float32)
    if not np.all(np.isfinite(vectors)):
        raise BundleInvalid("non-finite vector components")
    cid = str(doc["collection_id"])
    kind = doc["kind"]
    if kind not in ("batch", "snapshot"):
        raise BundleInvalid(f"unknown bundle kind {kind!r}")
    from_seq, to_seq = int(doc["from_seq"]), int(doc["to_seq"])
    if not 0 <= from_seq <= to_seq or (kind == "snapshot" and from_seq != 0):
        raise BundleInvalid(f"sequence range ({from_seq}, {to_seq}] is not a {kind}'s")
    faces = [_face(cid, row) for row in doc["faces"]]
    users = [UserRecord(cid, str(u), _status(s), float(at)) for u, s, at in doc["users"]]
    all_users = doc.get("all_users")
    changes = FeedSlice(from_seq, to_seq, faces, vectors, users, [str(f) for f in doc["deleted_faces"]],
                        [str(u) for u in doc["deleted_users"]],
                        None if all_users is None else [str(u) for u in all_users])
    return Bundle(kind, cid, str(doc["collection_uid"]), str(doc["arn"]), str(doc["face_model_version"]), dim,
                  changes)


def _face_row(face: FaceRecord) -> list[Any]:
    box = asdict(face.bounding_box)
    return [face.face_id, face.image_id, face.external_image_id, [box["width"], box["height"], box["left"],
            box["top"]], face.confidence, face.index_faces_model_version, face.user_id, face.created_at]


def _face(collection_id: str, row: list[Any]) -> FaceRecord:
    face_id, image_id, external, (width, height, left, top), confidence, version, user_id, created_at = row
    return FaceRecord(
        face_id=str(face_id), collection_id=collection_id, image_id=str(image_id),
        external_image_id=None if external is None else str(external),
        bounding_box=BoundingBox(float(width), float(height), float(left), float(top)),
        confidence=float(confidence), index_faces_model_version=str(version),
        user_id=None if user_id is None else str(user_id), created_at=float(created_at))


def _status(value: object) -> Literal["CREATED", "ACTIVE"]:
    if value == "CREATED":
        return "CREATED"
    if value == "ACTIVE":
        return "ACTIVE"
    raise BundleInvalid(f"unknown user status {value!r}")
