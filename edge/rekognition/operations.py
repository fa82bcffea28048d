"""The Rekognition face operations as plain Python: a request dict in, a response dict out.

The daemon, the evaluation and the tests all call `Rekognition.call`, which looks the operation
up in `OPERATIONS` (the one table the server and its authoriser read too), validates the request
against Rekognition's own API model and maps the store's refusals through `error_map`. Errors are
`edge.errors` exceptions carrying Rekognition's codes; a rejected request changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge import errors
from edge.config import ServiceSettings
from edge.rekognition import arns, shapes, users
from edge.rekognition.error_map import api_error
from edge.rekognition.images import ImageSource
from edge.rekognition.tokens import TokenSigner
from edge.rekognition.validation import idempotency_token, validate_request
from edge.similarity import SimilarityCalibration
from edge.store import Store, StoreError
from edge.store.access_log import Decision
from edge.store.models import BoundingBox, FaceRecord, NewFace
from edge.vision.image import DecodedImage
from edge.vision.pipeline import Analysis, Face, FacePipeline, FaceSelector
from edge.vision.quality import QualityFilter, filter_reasons

MAX_INDEXED_FACES = 100
MAX_DETECTED_FACES = 100
MAX_FACES_PER_USER = 100
DEFAULT_PAGE = 1000
DEFAULT_SEARCH_MAX_FACES = 80
#: AWS's limit on tags per resource (the model's TagMap allows 200 in one request, its quota 50 in all).
MAX_TAGS = 50
#: Collection searches, each logged as a decision (edge.store.access_log).
SEARCHES = frozenset({"SearchFaces", "SearchFacesByImage", "SearchUsers", "SearchUsersByImage"})
# ImageId is derived from the image's bytes, so indexing the same image again is recognised.
_IMAGE_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4f7b-9a51-2f4a1e0c9b77")
#: The same bytes give the same boxes; half an overlap still pairs a face detected with other settings.
SAME_FACE_IOU = 0.5


class Rekognition:
    """Every face operation edge-face implements, over one store and one face pipeline."""

    def __init__(self, store: Store, pipeline: FacePipeline, settings: ServiceSettings, *, secret: bytes) -> None:
        self.store = store
        self.pipeline = pipeline
        self.settings = settings
        self._images = ImageSource(settings.buckets)
        self._tokens = TokenSigner(secret)
        self._secret = secret
        similarity = pipeline.embedder.similarity
        if similarity is None:
            raise RuntimeError(f"face model {pipeline.face_model_version} has no similarity calibration: "
                               "run `make models`")
        self.similarity: SimilarityCalibration = similarity

    @property
    def face_model_version(self) -> str:
        return self.pipeline.face_model_version

    def call(self, operation: str, params: dict[str, Any], *, caller: str | None = None) -> dict[str, Any]:
        """Validate and run one operation; raises `edge.errors.RekognitionError` subclasses.

        `caller` is the access key that signed the request, for the access log.
        """
        entry = OPERATIONS.get(operation)
        if entry is None:
            raise errors.InvalidParameterException(f"Operation {operation} is not supported by edge-face")
        request = validate_request(operation, params)
        member = idempotency_token(operation)
        token = request.pop(member, None) if member else None
        try:
            if token is None:
                response = entry.handler(self, request)
            else:
                response = self._once(operation, token, request, lambda: entry.handler(self, request))
        except StoreError as exc:
            mapped = api_error(exc)
            if mapped is None:
                raise
            raise mapped from None
        if operation in SEARCHES:
            self.store.access_log.record(decision(operation, request, response, caller))
        return response

    # collections

    def create_collection(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        arn = f"aws:rekognition:{self.settings.region}:{self.settings.account_id}:collection/{cid}"
        record = self.store.create_collection(cid, face_model_version=self.face_model_version,
                                              dim=self.pipeline.embedder.dim, arn=arn, tags=p.get("Tags"),
                                              max_tags=MAX_TAGS)
        return {"StatusCode": 200, "CollectionArn": record.arn, "FaceModelVersion": record.face_model_version}

    def delete_collection(self, p: dict[str, Any]) -> dict[str, Any]:
        self.store.delete_collection(p["CollectionId"])
        self.store.erase()  # its vectors and ids leave every file now, not at the next save
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
        limit = p.get("MaxResults", DEFAULT_PAGE)  # 0 is allowed by the API model: a page of nothing
        records, _ = self.store.list_collections(limit=offset + limit + 1)
        chunk = records[offset:offset + limit]
        out: dict[str, Any] = {"CollectionIds": [r.collection_id for r in chunk],
                               "FaceModelVersions": [r.face_model_version for r in chunk]}
        if len(records) > offset + limit:
            out["NextToken"] = self._tokens.issue("ListCollections", str(offset + limit))
        return out

    # tags: of collections, the only resources edge-face has

    def tag_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        self.store.tag_collection(self._tagged(p["ResourceArn"]), p["Tags"], max_tags=MAX_TAGS)
        return {}

    def untag_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        self.store.untag_collection(self._tagged(p["ResourceArn"]), p["TagKeys"])
        return {}

    def list_tags_for_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"Tags": self.store.tags(self._tagged(p["ResourceArn"]))}

    def _tagged(self, arn: str) -> str:
        """The id of the collection of this store that `arn` names; a collection of that id under another
        region or account (another ARN) is not this one."""
        cid = arns.collection_id(arn)
        if self.store.get_collection(cid).arn != arns.canonical(arn):
            raise errors.ResourceNotFoundException(f"The resource {arn} does not exist")
        return cid

    # faces

    def index_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        self.store.check_writable(cid)  # before the pipeline runs: a synced collection is enrolled centrally
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
        # Rekognition stores no duplicate metadata for an image indexed again (same bytes and
        # ExternalImageId): a face stored before keeps its FaceId; any other face is new.
        previous = [f for f in self.store.find_faces_by_image(cid, image_id=image_id)
                    if f.external_image_id == external]
        boxes = [shapes.bounding_box(analysis.image, f.detection.box) for f in kept]
        matched = _match_boxes(previous, boxes)
        new = [i for i, found in enumerate(matched) if found is None]
        added = self.store.add_faces(cid, [
            NewFace(vector=kept[i].vector(), image_id=image_id, external_image_id=external,
                    bounding_box=shapes.stored_box(boxes[i]), confidence=kept[i].confidence)
            for i in new], model_version=record.face_model_version)
        stored = dict(zip(new, added, strict=True))
        return {
            "FaceRecords": [{"Face": shapes.face(found or stored[i]),
                             "FaceDetail": self._detail(analysis, f, all_attributes)}
                            for i, (found, f) in enumerate(zip(matched, kept, strict=True))],
            "FaceModelVersion": record.face_model_version,
            "UnindexedFaces": unindexed,
        }

    def list_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        face_ids = p.get("FaceIds")
        scope = "ListFaces:" + json.dumps([cid, p.get("UserId"), face_ids])
        after = self._open_token(scope, p) if p.get("NextToken") else None
        limit = p.get("MaxResults", DEFAULT_PAGE)
        faces, last = self.store.list_faces(cid, after=after, limit=max(limit, 1),
                                            user_id=p.get("UserId"), face_ids=face_ids)
        if limit == 0:  # allowed by the API model: a page of nothing, resuming where it stands
            faces, last = [], (after or "") if faces else None
        out: dict[str, Any] = {"Faces": [shapes.face(f) for f in faces], "FaceModelVersion": record.face_model_version}
        if last is not None:
            out["NextToken"] = self._tokens.issue(scope, last)
        return out

    def delete_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        result = self.store.delete_faces(cid, p["FaceIds"])
        if result.deleted:
            self.store.erase()  # no file keeps a deleted vector once DeleteFaces has answered
        associated = {f.face_id: f.user_id for f in self.store.list_faces(
            cid, face_ids=result.user_associated, limit=len(result.user_associated) or 1)[0]}
        unsuccessful: list[dict[str, Any]] = [{"FaceId": fid, "Reasons": ["FACE_NOT_FOUND"]}
                                              for fid in result.not_found]
        unsuccessful += [{"FaceId": fid, "UserId": associated.get(fid), "Reasons": ["ASSOCIATED_TO_AN_EXISTING_USER"]}
                         for fid in result.user_associated]
        return {"DeletedFaces": result.deleted, "UnsuccessfulFaceDeletions": unsuccessful}

    def search_faces(self, p: dict[str, Any]) -> dict[str, Any]:
        cid, face_id = p["CollectionId"], p["FaceId"]
        record = self.store.get_collection(cid)
        vector = self.store.get_face_vector(cid, face_id)
        matches = [m for m in self._search(cid, vector, p.get("MaxFaces", DEFAULT_SEARCH_MAX_FACES) + 1,
                                           p.get("FaceMatchThreshold", 80.0), record.face_model_version)
                   if m["Face"]["FaceId"] != face_id]
        return {"SearchedFaceId": face_id, "FaceMatches": matches[:p.get("MaxFaces", DEFAULT_SEARCH_MAX_FACES)],
                "FaceModelVersion": record.face_model_version}

    def search_faces_by_image(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = p["CollectionId"]
        record = self.store.get_collection(cid)
        _, analysis = self._analyse(p["Image"], max_faces=1, largest_only=True)
        face = self._largest(analysis, QualityFilter(p.get("QualityFilter", "NONE")))
        return {
            "SearchedFaceBoundingBox": shapes.bounding_box(analysis.image, face.detection.box),
            "SearchedFaceConfidence": face.confidence,
            "FaceMatches": self._search(cid, face.vector(), p.get("MaxFaces", DEFAULT_SEARCH_MAX_FACES),
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
        _, source = self._analyse(p["SourceImage"], max_faces=1, largest_only=True)
        source_face = self._largest(source, level)
        _, target = self._analyse(p["TargetImage"], max_faces=MAX_DETECTED_FACES)
        min_cosine = self.similarity.min_cosine(p.get("SimilarityThreshold", 80.0))
        matches: list[dict[str, Any]] = []
        unmatched: list[dict[str, Any]] = []
        for face in target.faces[:MAX_DETECTED_FACES]:
            if face.embedding is None or self._reasons(level, target.image, face):
                continue
            compared = self._detail(target, face, False)
            cosine = float(face.vector() @ source_face.vector())
            if cosine >= min_cosine:
                matches.append({"Similarity": float(self.similarity.similarity(cosine)), "Face": compared})
            else:
                unmatched.append(compared)
        matches.sort(key=lambda m: -m["Similarity"])
        return {"SourceImageFace": {"BoundingBox": shapes.bounding_box(source.image, source_face.detection.box),
                                    "Confidence": source_face.confidence},
                "FaceMatches": matches, "UnmatchedFaces": unmatched}

    # users

    def create_user(self, p: dict[str, Any]) -> dict[str, Any]:
        self.store.create_user(p["CollectionId"], p["UserId"])
        return {}

    def delete_user(self, p: dict[str, Any]) -> dict[str, Any]:
        self.store.delete_user(p["CollectionId"], p["UserId"])
        self.store.erase()  # no file keeps the UserId once DeleteUser has answered
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
        threshold = p.get("UserMatchThreshold", 75.0)
        gallery = np.stack([self.store.get_face_vector(cid, f.face_id) for f in current]) if current else None
        candidates, low = [], []
        for fid in requested:
            face = known.get(fid)
            if face is None or face.user_id not in (None, user_id):
                continue
            if gallery is not None and face.user_id is None:
                # "the minimum user match confidence": the face against the user, as SearchUsers scores it
                confidence = users.user_similarity(self._user_maps(), gallery, self.store.get_face_vector(cid, fid))
                if confidence < threshold:
                    low.append({"FaceId": fid, "UserId": user_id, "Reasons": ["LOW_MATCH_CONFIDENCE"],
                                "Confidence": confidence})
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
            queries = [self.store.get_face_vector(cid, p["FaceId"])]
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
        out["SearchedFace"] = {"FaceDetail": self._detail(analysis, largest, False)}
        out["UserMatches"] = self._search_users(cid, [largest.vector()], p.get("UserMatchThreshold", 80.0),
                                                p.get("MaxUsers", 100), record.face_model_version, None)
        return out

    # helpers

    def _analyse(self, image: dict[str, Any], *, embed: bool | FaceSelector = True,
                 max_faces: int | None = None, largest_only: bool = False) -> tuple[bytes, Analysis]:
        """The request's image bytes (from Bytes or a mapped S3 bucket) and the faces in them."""
        data, limit = self._images.read(image)
        return data, self.pipeline.analyse(data, embed=embed, max_faces=max_faces, max_bytes=limit,
                                           largest_only=largest_only)

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
        if level == QualityFilter.NONE:
            return []  # without measuring the face: its pose and quality are computed only when asked for
        return filter_reasons(level, confidence=face.confidence, box_side=face.box_side(image), pose=face.pose,
                              quality=face.quality)

    @staticmethod
    def _detail(analysis: Analysis, face: Face, all_attributes: bool) -> dict[str, Any]:
        return shapes.face_detail(analysis.image, face, all_attributes=all_attributes)

    def _search(self, cid: str, vector: np.ndarray, max_faces: int, threshold: float,
                model_version: str) -> list[dict[str, Any]]:
        """Faces at or above a Similarity threshold, best first, in Rekognition's FaceMatch shape."""
        hits = self.store.search(cid, vector, model_version=model_version, k=max_faces,
                                 min_similarity=self.similarity.min_cosine(threshold))
        return [{"Similarity": float(self.similarity.similarity(hit.similarity)), "Face": shapes.face(hit.face)}
                for hit in hits]

    def _search_users(self, cid: str, queries: Sequence[np.ndarray], threshold: float, max_users: int,
                      model_version: str, exclude: str | None) -> list[dict[str, Any]]:
        """Users ranked by the best query's Similarity to the centroid of their faces (edge.rekognition.users)."""
        ranked = users.search_users(self.store, cid, queries, model_version=model_version, maps=self._user_maps(),
                                    threshold=threshold, max_users=max_users,
                                    max_faces_per_user=MAX_FACES_PER_USER, exclude=exclude)
        return [{"Similarity": m.similarity,
                 "User": {"UserId": m.user_id, "UserStatus": self.store.get_user(cid, m.user_id).status}}
                for m in ranked]

    def _user_maps(self) -> dict[int, SimilarityCalibration]:
        """The Similarity maps for a photo against users of n faces (edge.rekognition.users)."""
        maps = self.pipeline.embedder.user_similarity
        if not maps:
            raise RuntimeError(f"face model {self.pipeline.face_model_version} has no user calibration: "
                               "run `make models`")
        return maps

    def _open_token(self, scope: str, p: dict[str, Any]) -> str:
        return self._tokens.open(scope, p["NextToken"])

    def _once(self, operation: str, token: str, request: dict[str, Any],
              run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run an operation with a ClientRequestToken once: a retry with the same token and parameters gets
        the first answer, other parameters IdempotentParameterMismatchException. Only keyed hashes of the
        token and the parameters are stored, so no UserId outlives its user in them."""
        key = self._digest(b"token", token.encode())
        fingerprint = self._digest(b"request", json.dumps([operation, request], sort_keys=True).encode())
        answer = self.store.run_once(key, fingerprint, request.get("CollectionId", ""),
                                     self.settings.request_token_ttl_s, lambda: json.dumps(run()))
        result: dict[str, Any] = json.loads(answer)
        return result

    def _digest(self, label: bytes, message: bytes) -> str:
        return hmac.new(self._secret, b"edge-face ClientRequestToken v1\0" + label + b"\0" + message,
                        hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Operation:
    """One Rekognition operation: its handler, whether a read-only key may call it, whether it runs
    the face pipeline (the server gives those the bounded inference pool)."""

    name: str
    handler: Callable[[Rekognition, dict[str, Any]], dict[str, Any]]
    read_only: bool
    takes_image: bool


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("CreateCollection", Rekognition.create_collection, read_only=False, takes_image=False),
    Operation("DeleteCollection", Rekognition.delete_collection, read_only=False, takes_image=False),
    Operation("DescribeCollection", Rekognition.describe_collection, read_only=True, takes_image=False),
    Operation("ListCollections", Rekognition.list_collections, read_only=True, takes_image=False),
    Operation("TagResource", Rekognition.tag_resource, read_only=False, takes_image=False),
    Operation("UntagResource", Rekognition.untag_resource, read_only=False, takes_image=False),
    Operation("ListTagsForResource", Rekognition.list_tags_for_resource, read_only=True, takes_image=False),
    Operation("IndexFaces", Rekognition.index_faces, read_only=False, takes_image=True),
    Operation("ListFaces", Rekognition.list_faces, read_only=True, takes_image=False),
    Operation("DeleteFaces", Rekognition.delete_faces, read_only=False, takes_image=False),
    Operation("SearchFaces", Rekognition.search_faces, read_only=True, takes_image=False),
    Operation("SearchFacesByImage", Rekognition.search_faces_by_image, read_only=True, takes_image=True),
    Operation("DetectFaces", Rekognition.detect_faces, read_only=True, takes_image=True),
    Operation("CompareFaces", Rekognition.compare_faces, read_only=True, takes_image=True),
    Operation("CreateUser", Rekognition.create_user, read_only=False, takes_image=False),
    Operation("DeleteUser", Rekognition.delete_user, read_only=False, takes_image=False),
    Operation("ListUsers", Rekognition.list_users, read_only=True, takes_image=False),
    Operation("AssociateFaces", Rekognition.associate_faces, read_only=False, takes_image=False),
    Operation("DisassociateFaces", Rekognition.disassociate_faces, read_only=False, takes_image=False),
    Operation("SearchUsers", Rekognition.search_users, read_only=True, takes_image=False),
    Operation("SearchUsersByImage", Rekognition.search_users_by_image, read_only=True, takes_image=True),
)}


def request_collection(params: object) -> object:
    """The collection a request names, as sent (not yet validated), for the key scopes: its CollectionId, or
    the collection its ResourceArn names (the tagging operations); None when it names none."""
    if not isinstance(params, dict):
        return None
    if "ResourceArn" in params:
        return arns.named_collection(params["ResourceArn"])
    return params.get("CollectionId")


def decision(operation: str, request: dict[str, Any], response: dict[str, Any], caller: str | None) -> Decision:
    """What a search decided: its best match at or above the threshold, or nobody."""
    faces = operation.startswith("SearchFaces")
    threshold = request.get("FaceMatchThreshold" if faces else "UserMatchThreshold", 80.0)
    matches = response["FaceMatches" if faces else "UserMatches"]
    best: dict[str, Any] = matches[0]["Face" if faces else "User"] if matches else {}
    return Decision(at=time.time(), operation=operation, key_id=caller, collection_id=request["CollectionId"],
                    face_id=best.get("FaceId"), user_id=best.get("UserId"),
                    external_image_id=best.get("ExternalImageId"),
                    similarity=matches[0]["Similarity"] if matches else None, threshold=threshold)


def _match_boxes(stored: list[FaceRecord], boxes: list[dict[str, float]]) -> list[FaceRecord | None]:
    """Pair this analysis' faces with the faces stored earlier from the same image, one to one.

    Pairs are taken best overlap first; a face that overlaps no unpaired stored face by
    `SAME_FACE_IOU` was not stored before (None), so one FaceId never stands for two faces.
    """
    pairs = sorted(((_iou(box, record.bounding_box), i, j) for i, box in enumerate(boxes)
                    for j, record in enumerate(stored)), reverse=True)
    out: list[FaceRecord | None] = [None] * len(boxes)
    taken: set[int] = set()
    for iou, i, j in pairs:
        if iou < SAME_FACE_IOU:
            break
        if out[i] is None and j not in taken:
            out[i] = stored[j]
            taken.add(j)
    return out


def _iou(box: dict[str, float], other: BoundingBox) -> float:
    """Intersection over union of two boxes in image ratios."""
    width = min(box["Left"] + box["Width"], other.left + other.width) - max(box["Left"], other.left)
    height = min(box["Top"] + box["Height"], other.top + other.height) - max(box["Top"], other.top)
    inter = max(0.0, width) * max(0.0, height)
    union = box["Width"] * box["Height"] + other.width * other.height - inter
    return inter / union if union > 0 else 0.0
