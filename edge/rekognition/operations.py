"""The Rekognition face operations as plain Python: a request dict in, a response dict out.

The daemon, the CLI's local mode and the tests all call `Rekognition.call`. Every request is
validated against Rekognition's own API model first; errors are `edge.errors` exceptions
carrying Rekognition's codes. A rejected request changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge import errors
from edge.config import ServiceSettings
from edge.rekognition import users
from edge.rekognition.tokens import TokenSigner
from edge.rekognition.validation import validate_request
from edge.similarity import SimilarityCalibration
from edge.store import Store
from edge.store import errors as store_errors
from edge.store.models import BoundingBox, FaceRecord, NewFace
from edge.vision.image import MAX_IMAGE_BYTES, DecodedImage
from edge.vision.pipeline import Analysis, Face, FacePipeline, FaceSelector, bounding_box, face_detail
from edge.vision.quality import QualityFilter, filter_reasons

#: Operations a read-only (kiosk) key may call.
READ_ONLY_OPERATIONS = frozenset({
    "DescribeCollection", "ListCollections", "ListFaces", "ListUsers", "SearchFaces", "SearchFacesByImage",
    "SearchUsers", "SearchUsersByImage", "DetectFaces", "CompareFaces",
})
S3_MAX_BYTES = 15 * 1024 * 1024
MAX_INDEXED_FACES = 100
MAX_DETECTED_FACES = 100
MAX_FACES_PER_USER = 100
DEFAULT_PAGE = 1000
DEFAULT_SEARCH_MAX_FACES = 80
# ImageId is derived from the image's bytes, so indexing the same image again is recognised.
_IMAGE_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4f7b-9a51-2f4a1e0c9b77")


def token_secret(state_dir: Path) -> bytes:
    """The device's pagination-token key: made once, kept with the state, readable only by its owner."""
    path = state_dir / "token.key"
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
        fh.flush()
        os.fsync(fh.fileno())
    return path.read_bytes()


class Rekognition:
    """Every face operation edge-face implements, over one store and one face pipeline."""

    def __init__(self, store: Store, pipeline: FacePipeline, settings: ServiceSettings, *, secret: bytes) -> None:
        self.store = store
        self.pipeline = pipeline
        self.settings = settings
        self._tokens = TokenSigner(secret)
        similarity = pipeline.embedder.similarity
        if similarity is None:
            raise RuntimeError(f"{pipeline.embedder.artifact.name} has no similarity calibration: run `make models`")
        self.similarity: SimilarityCalibration = similarity
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            name: getattr(self, _snake(name)) for name in (
                "CreateCollection", "DeleteCollection", "DescribeCollection", "ListCollections",
                "IndexFaces", "ListFaces", "DeleteFaces", "SearchFaces", "SearchFacesByImage",
                "DetectFaces", "CompareFaces", "CreateUser", "DeleteUser", "ListUsers", "AssociateFaces",
                "DisassociateFaces", "SearchUsers", "SearchUsersByImage")
        }

    @property
    def operations(self) -> frozenset[str]:
        return frozenset(self._handlers)

    @property
    def face_model_version(self) -> str:
        return self.pipeline.face_model_version

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """Validate and run one operation; raises `edge.errors.RekognitionError` subclasses."""
        handler = self._handlers.get(operation)
        if handler is None:
            raise errors.InvalidParameterException(f"Operation {operation} is not supported by edge-face")
        request = validate_request(operation, params)
        try:
            return handler(request)
        except store_errors.CollectionNotFound as exc:
            raise errors.ResourceNotFoundException(f"The collection id: {exc.collection_id} does not exist") from None
        except store_errors.UserNotFound as exc:
            raise errors.ResourceNotFoundException(
                f"The user id: {exc.user_id} does not exist in collection {exc.collection_id}") from None
        except store_errors.FaceModelMismatch as exc:
            raise errors.InvalidParameterException(
                f"Collection {exc.collection_id} was created with face model {exc.expected[0]}; this device "
                f"runs {exc.got[0]}: faces of different models never mix") from None

    # collections

    def create_collection(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        arn = f"aws:rekognition:{self.settings.region}:{self.settings.account_id}:collection/{cid}"
        try:
            record = self.store.create_collection(cid, face_model_version=self.face_model_version,
                                                  dim=self.pipeline.embedder.artifact.embedding_size or 0, arn=arn)
        except store_errors.CollectionExists:
            raise errors.ResourceAlreadyExistsException(f"The collection id: {cid} already exists") from None
        return {"StatusCode": 200, "CollectionArn": record.arn, "FaceModelVersion": record.face_model_version}

    def delete_collection(self, p: dict[str, Any]) -> dict[str, Any]:
        self.store.delete_collection(p["CollectionId"])
        self.store.checkpoint()  # the erased vectors leave the write-ahead log now, not at the next save
        return {"StatusCode": 200}

    def describe_collection(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        return {"FaceCount": self.store.face_count(cid), "UserCount": self.store.user_count(cid),
                "FaceModelVersion": record.face_model_version, "CollectionARN": record.arn,
                "CreationTimestamp": record.created_at}

    def list_collections(self, p: dict[str, Any]) -> dict[str, Any]:
        # Collection ids can be longer than a token holds, so collections page by position.
        offset = int(self._open_token("ListCollections", p)) if p.get("NextToken") else 0
        limit = p.get("MaxResults") or DEFAULT_PAGE
        records, _ = self.store.list_collections(limit=offset + limit + 1)
        chunk = records[offset:offset + limit]
        out: dict[str, Any] = {"CollectionIds": [r.collection_id for r in chunk],
                               "FaceModelVersions": [r.face_model_version for r in chunk]}
        if len(records) > offset + limit:
            out["NextToken"] = self._tokens.issue("ListCollections", str(offset + limit))
        return out

    # faces

    def index_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        all_attributes = "ALL" in p.get("DetectionAttributes", [])
        level = QualityFilter(p.get("QualityFilter", "AUTO"))
        # Faces the quality filter refuses are left out first, then the smallest beyond MaxFaces
        # (faces come largest first): only the faces that will be indexed are embedded.
        data, analysis = self._analyse(
            p["Image"], embed=lambda image, face: not self._reasons(level, image, face),
            max_faces=min(p.get("MaxFaces", MAX_INDEXED_FACES), MAX_INDEXED_FACES))
        image_id = str(uuid.uuid5(_IMAGE_NAMESPACE, hashlib.sha256(data).hexdigest()))
        external = p.get("ExternalImageId")
        unindexed: list[dict[str, Any]] = []
        kept: list[Face] = []
        for face in analysis.faces:
            reasons = self._reasons(level, analysis.image, face) or (
                [] if face.embedding is not None else ["EXCEEDS_MAX_FACES"])
            if reasons:
                unindexed.append({"Reasons": reasons, "FaceDetail": self._detail(analysis, face, all_attributes)})
            else:
                kept.append(face)
        previous = [f for f in self.store.find_faces_by_image(cid, image_id=image_id)
                    if f.external_image_id == external]
        if previous:
            stored = _match_boxes(previous, [bounding_box(analysis.image, f.detection.box) for f in kept])
        else:
            stored = self.store.add_faces(cid, [
                NewFace(vector=f.embedding, image_id=image_id, external_image_id=external,
                        bounding_box=_box(bounding_box(analysis.image, f.detection.box)), confidence=f.confidence)
                for f in kept], model_version=record.face_model_version)
        return {
            "FaceRecords": [{"Face": _face(rec), "FaceDetail": self._detail(analysis, f, all_attributes)}
                            for rec, f in zip(stored, kept, strict=True)],
            "FaceModelVersion": record.face_model_version,
            "UnindexedFaces": unindexed,
        }

    def list_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        face_ids = p.get("FaceIds")
        scope = "ListFaces:" + json.dumps([cid, p.get("UserId"), face_ids])
        after = self._open_token(scope, p) if p.get("NextToken") else None
        faces, last = self.store.list_faces(cid, after=after, limit=p.get("MaxResults") or DEFAULT_PAGE,
                                            user_id=p.get("UserId"), face_ids=face_ids)
        out: dict[str, Any] = {"Faces": [_face(f) for f in faces], "FaceModelVersion": record.face_model_version}
        if last is not None:
            out["NextToken"] = self._tokens.issue(scope, last)
        return out

    def delete_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        result = self.store.delete_faces(cid, p["FaceIds"])
        if result.deleted:
            self.store.checkpoint()  # no file keeps a deleted vector once DeleteFaces has answered
        associated = {f.face_id: f.user_id for f in self.store.list_faces(
            cid, face_ids=result.user_associated, limit=len(result.user_associated) or 1)[0]}
        unsuccessful = [{"FaceId": fid, "Reasons": ["FACE_NOT_FOUND"]} for fid in result.not_found]
        unsuccessful += [{"FaceId": fid, "UserId": associated.get(fid), "Reasons": ["ASSOCIATED_TO_AN_EXISTING_USER"]}
                         for fid in result.user_associated]
        return {"DeletedFaces": result.deleted, "UnsuccessfulFaceDeletions": unsuccessful}

    def search_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid, face_id = p["CollectionId"], p["FaceId"]
        record = self.store.get_collection(cid)
        vector = self._face_vector(cid, face_id)
        matches = [m for m in self._search(cid, vector, p.get("MaxFaces", DEFAULT_SEARCH_MAX_FACES) + 1,
                                           p.get("FaceMatchThreshold", 80.0), record.face_model_version)
                   if m["Face"]["FaceId"] != face_id]
        return {"SearchedFaceId": face_id, "FaceMatches": matches[:p.get("MaxFaces", DEFAULT_SEARCH_MAX_FACES)],
                "FaceModelVersion": record.face_model_version}

    def search_faces_by_image(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        _, analysis = self._analyse(p["Image"], max_faces=1)
        face = self._largest(analysis, QualityFilter(p.get("QualityFilter", "NONE")))
        assert face.embedding is not None
        return {
            "SearchedFaceBoundingBox": bounding_box(analysis.image, face.detection.box),
            "SearchedFaceConfidence": face.confidence,
            "FaceMatches": self._search(cid, face.embedding, p.get("MaxFaces", DEFAULT_SEARCH_MAX_FACES),
                                        p.get("FaceMatchThreshold", 80.0), record.face_model_version),
            "FaceModelVersion": record.face_model_version,
        }

    # images without a collection

    def detect_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        _, analysis = self._analyse(p["Image"], embed=False)
        all_attributes = "ALL" in p.get("Attributes", [])
        return {"FaceDetails": [self._detail(analysis, f, all_attributes)
                                for f in analysis.faces[:MAX_DETECTED_FACES]]}

    def compare_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        level = QualityFilter(p.get("QualityFilter", "NONE"))
        _, source = self._analyse(p["SourceImage"], max_faces=1)
        source_face = self._largest(source, level)
        _, target = self._analyse(p["TargetImage"], max_faces=MAX_DETECTED_FACES)
        min_cosine = self.similarity.min_cosine(p.get("SimilarityThreshold", 80.0))
        matches, unmatched = [], []
        for face in target.faces[:MAX_DETECTED_FACES]:
            if face.embedding is None or self._reasons(level, target.image, face):
                continue
            compared = self._detail(target, face, False)
            cosine = float(face.embedding @ source_face.embedding)  # type: ignore[operator]
            if cosine >= min_cosine:
                matches.append({"Similarity": float(self.similarity.similarity(cosine)), "Face": compared})
            else:
                unmatched.append(compared)
        matches.sort(key=lambda m: -m["Similarity"])
        return {"SourceImageFace": {"BoundingBox": bounding_box(source.image, source_face.detection.box),
                                    "Confidence": source_face.confidence},
                "FaceMatches": matches, "UnmatchedFaces": unmatched}

    # users

    def create_user(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            self.store.create_user(p["CollectionId"], p["UserId"])
        except store_errors.UserExists:
            raise errors.ConflictException(
                f"A user with the id {p['UserId']} already exists in collection {p['CollectionId']}") from None
        return {}

    def delete_user(self, p: dict[str, Any]) -> dict[str, Any]:
        self.store.delete_user(p["CollectionId"], p["UserId"])
        return {}

    def list_users(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        scope = f"ListUsers:{cid}"
        after = self._open_token(scope, p) if p.get("NextToken") else None
        users, last = self.store.list_users(cid, after=after, limit=p.get("MaxResults") or DEFAULT_PAGE)
        out: dict[str, Any] = {"Users": [{"UserId": u.user_id, "UserStatus": u.status} for u in users]}
        if last is not None:
            out["NextToken"] = self._tokens.issue(scope, last)
        return out

    def associate_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid, user_id = p["CollectionId"], p["UserId"]
        self.store.get_user(cid, user_id)
        requested = list(dict.fromkeys(p["FaceIds"]))
        known = {f.face_id: f for f in self.store.list_faces(cid, face_ids=requested, limit=len(requested))[0]}
        current = self.store.list_faces(cid, user_id=user_id, limit=MAX_FACES_PER_USER + 1)[0]
        if len(current) + sum(1 for fid in known if known[fid].user_id is None) > MAX_FACES_PER_USER:
            raise errors.ServiceQuotaExceededException(f"A user can have at most {MAX_FACES_PER_USER} faces")
        min_cosine = self.similarity.min_cosine(p.get("UserMatchThreshold", 75.0))
        gallery = np.stack([self.store.get_face_vector(cid, f.face_id) for f in current]) if current else None
        candidates, low = [], []
        for fid in requested:
            face = known.get(fid)
            if face is None or face.user_id not in (None, user_id):
                continue
            if gallery is not None and face.user_id is None:
                best = float(np.max(gallery @ self.store.get_face_vector(cid, fid)))
                if best < min_cosine:
                    low.append({"FaceId": fid, "UserId": user_id, "Reasons": ["LOW_MATCH_CONFIDENCE"],
                                "Confidence": float(self.similarity.similarity(best))})
                    continue
            candidates.append(fid)
        result = self.store.associate_faces(cid, user_id, candidates) if candidates else None
        unsuccessful = [{"FaceId": fid, "UserId": user_id, "Reasons": ["FACE_NOT_FOUND"]}
                        for fid in requested if fid not in known]
        unsuccessful += [{"FaceId": fid, "UserId": known[fid].user_id, "Reasons": ["ASSOCIATED_TO_A_DIFFERENT_USER"]}
                         for fid in requested if fid in known and known[fid].user_id not in (None, user_id)]
        status = result.user_status if result else self.store.get_user(cid, user_id).status
        return {"AssociatedFaces": [{"FaceId": fid} for fid in (result.succeeded if result else [])],
                "UnsuccessfulFaceAssociations": unsuccessful + low, "UserStatus": status}

    def disassociate_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid, user_id = p["CollectionId"], p["UserId"]
        result = self.store.disassociate_faces(cid, user_id, list(dict.fromkeys(p["FaceIds"])))
        unsuccessful = [{"FaceId": fid, "UserId": user_id, "Reasons": ["FACE_NOT_FOUND"]} for fid in result.not_found]
        unsuccessful += [{"FaceId": fid, "UserId": user_id, "Reasons": ["ASSOCIATED_TO_A_DIFFERENT_USER"]}
                         for fid in result.other_user]
        return {"DisassociatedFaces": [{"FaceId": fid} for fid in result.succeeded],
                "UnsuccessfulFaceDisassociations": unsuccessful, "UserStatus": result.user_status}

    def search_users(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        if ("UserId" in p) == ("FaceId" in p):
            raise errors.InvalidParameterException("Exactly one of UserId and FaceId must be given")
        out: dict[str, Any] = {"FaceModelVersion": record.face_model_version}
        if "FaceId" in p:
            queries = [self._face_vector(cid, p["FaceId"])]
            exclude = None
            out["SearchedFace"] = {"FaceId": p["FaceId"]}
        else:
            self.store.get_user(cid, p["UserId"])
            faces = self.store.list_faces(cid, user_id=p["UserId"], limit=MAX_FACES_PER_USER)[0]
            queries = [self.store.get_face_vector(cid, f.face_id) for f in faces]
            exclude = p["UserId"]
            out["SearchedUser"] = {"UserId": p["UserId"]}
        out["UserMatches"] = self._search_users(cid, queries, p.get("UserMatchThreshold", 80.0),
                                                p.get("MaxUsers", 100), record.face_model_version, exclude)
        return out

    def search_users_by_image(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        _, analysis = self._analyse(p["Image"], max_faces=1)
        out: dict[str, Any] = {"UserMatches": [], "FaceModelVersion": record.face_model_version,
                               "UnsearchedFaces": []}
        if not analysis.faces:
            return out  # unlike SearchFacesByImage, no face is an empty answer, not an error
        largest, *others = analysis.faces
        level = QualityFilter(p.get("QualityFilter", "NONE"))
        out["UnsearchedFaces"] = [{"FaceDetails": self._detail(analysis, f, False), "Reasons": ["FACE_NOT_LARGEST"]}
                                  for f in others]
        reasons = self._reasons(level, analysis.image, largest)
        if reasons:
            out["UnsearchedFaces"].insert(0, {"FaceDetails": self._detail(analysis, largest, False),
                                              "Reasons": reasons})
            return out
        assert largest.embedding is not None
        out["SearchedFace"] = {"FaceDetail": self._detail(analysis, largest, False)}
        out["UserMatches"] = self._search_users(cid, [largest.embedding], p.get("UserMatchThreshold", 80.0),
                                                p.get("MaxUsers", 100), record.face_model_version, None)
        return out

    # helpers

    def _analyse(self, image: dict[str, Any], *, embed: bool | FaceSelector = True,
                 max_faces: int | None = None) -> tuple[bytes, Analysis]:
        """The request's image bytes (from Bytes or a mapped S3 bucket) and the faces in them."""
        data, limit = self._image(image)
        return data, self.pipeline.analyse(data, embed=embed, max_faces=max_faces, max_bytes=limit)

    def _image(self, image: dict[str, Any]) -> tuple[bytes, int]:
        """The image's bytes and the size limit that applies to them."""
        if "Bytes" in image:
            return image["Bytes"], MAX_IMAGE_BYTES
        s3 = image["S3Object"]
        missing = errors.InvalidS3ObjectException(
            "Unable to get object metadata from S3. Check object key, region and/or access permissions.")
        root = self.settings.buckets.get(s3.get("Bucket", ""))
        if root is None or "Name" not in s3:
            raise missing
        root = root.resolve()
        path = (root / s3["Name"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise missing
        return path.read_bytes(), S3_MAX_BYTES

    def _largest(self, analysis: Analysis, level: QualityFilter) -> Face:
        """The largest face, as searches use it; none, or one the filter refuses, is the caller's error."""
        if not analysis.faces:
            raise errors.InvalidParameterException("There are no faces in the image. Should be at least 1.")
        face = analysis.faces[0]
        reasons = self._reasons(level, analysis.image, face)
        if reasons:
            raise errors.InvalidParameterException(
                f"The largest face in the image does not pass QualityFilter {level.value}: {', '.join(reasons)}")
        return face

    @staticmethod
    def _reasons(level: QualityFilter, image: DecodedImage, face: Face) -> list[str]:
        return filter_reasons(level, confidence=face.confidence, box_side=face.box_side(image), pose=face.pose,
                              quality=face.quality)

    @staticmethod
    def _detail(analysis: Analysis, face: Face, all_attributes: bool) -> dict[str, Any]:
        return face_detail(analysis.image, face, all_attributes=all_attributes)

    def _face_vector(self, cid: str, face_id: str) -> np.ndarray:
        try:
            return self.store.get_face_vector(cid, face_id)
        except store_errors.FaceNotFound:
            raise errors.InvalidParameterException(
                f"The face id: {face_id} does not exist in collection {cid}") from None

    def _search(self, cid: str, vector: np.ndarray, max_faces: int, threshold: float,
                model_version: str) -> list[dict[str, Any]]:
        """Faces at or above a Similarity threshold, best first, in Rekognition's FaceMatch shape."""
        hits = self.store.search(cid, vector, model_version=model_version, k=max_faces,
                                 min_similarity=self.similarity.min_cosine(threshold))
        return [{"Similarity": float(self.similarity.similarity(hit.similarity)), "Face": _face(hit.face)}
                for hit in hits]

    def _search_users(self, cid: str, queries: Sequence[np.ndarray], threshold: float, max_users: int,
                      model_version: str, exclude: str | None) -> list[dict[str, Any]]:
        """Users ranked by the best query's Similarity to the centroid of their faces (edge.rekognition.users)."""
        maps = self.pipeline.embedder.user_similarity
        if not maps:
            raise RuntimeError(f"{self.pipeline.embedder.artifact.name} has no user calibration: run `make models`")
        ranked = users.search_users(self.store, cid, queries, model_version=model_version, maps=maps,
                                    threshold=threshold, max_users=max_users,
                                    max_faces_per_user=MAX_FACES_PER_USER, exclude=exclude)
        return [{"Similarity": m.similarity,
                 "User": {"UserId": m.user_id, "UserStatus": self.store.get_user(cid, m.user_id).status}}
                for m in ranked]

    def _open_token(self, scope: str, p: dict[str, Any]) -> str:
        return self._tokens.open(scope, p["NextToken"])


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _box(box: dict[str, float]) -> BoundingBox:
    return BoundingBox(width=box["Width"], height=box["Height"], left=box["Left"], top=box["Top"])


def _face(record: FaceRecord) -> dict[str, Any]:
    """Rekognition's Face shape for a stored face."""
    box = record.bounding_box
    face: dict[str, Any] = {
        "FaceId": record.face_id,
        "BoundingBox": {"Width": box.width, "Height": box.height, "Left": box.left, "Top": box.top},
        "ImageId": record.image_id,
        "Confidence": record.confidence,
        "IndexFacesModelVersion": record.index_faces_model_version,
    }
    if record.external_image_id is not None:
        face["ExternalImageId"] = record.external_image_id
    if record.user_id is not None:
        face["UserId"] = record.user_id
    return face


def _match_boxes(stored: list[FaceRecord], boxes: list[dict[str, float]]) -> list[FaceRecord]:
    """Pair faces indexed earlier from the same image with this analysis' faces, by box position."""
    out = []
    for box in boxes:
        centre = (box["Left"] + box["Width"] / 2, box["Top"] + box["Height"] / 2)
        out.append(min(stored, key=lambda f: (f.bounding_box.left + f.bounding_box.width / 2 - centre[0]) ** 2
                       + (f.bounding_box.top + f.bounding_box.height / 2 - centre[1]) ** 2))
    return out
