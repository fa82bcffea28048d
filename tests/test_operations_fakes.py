"""The operations layer over a real store with a fake pipeline: fast tests of Rekognition's behaviour.

The same operations run on real models and photos in test_operations.py; here the faces are
coloured squares (tests/fakes.py), so these tests need no models and no test data.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import fake_pipeline, photo

from edge import errors
from edge.config import ServiceSettings
from edge.rekognition.operations import OPERATIONS, Rekognition
from edge.rekognition.tokens import token_secret
from edge.store import Store
from edge.vision import pipeline
from edge.vision.detector import Detection
from edge.vision.quality import Quality, measure_quality


def image(data: bytes) -> dict[str, str]:
    return {"Bytes": base64.b64encode(data).decode()}


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Rekognition]:
    store = Store(tmp_path / "state", checkpoint_interval_s=None)
    yield Rekognition(store, fake_pipeline(), ServiceSettings(), secret=token_secret(tmp_path / "state"))
    store.close()


@pytest.fixture
def door(ops: Rekognition) -> dict[str, str]:
    """Collection 'door' with ann and bob enrolled: person -> FaceId."""
    ops.call("CreateCollection", {"CollectionId": "door"})
    enrolled = {}
    for person in ("ann", "bob"):
        reply = ops.call("IndexFaces", {"CollectionId": "door", "Image": image(photo((person, 100, 100, 200))),
                                        "ExternalImageId": person})
        enrolled[person] = reply["FaceRecords"][0]["Face"]["FaceId"]
    return enrolled


def refused(ops: Rekognition, operation: str, params: dict[str, Any]) -> str:
    with pytest.raises(errors.RekognitionError) as info:
        ops.call(operation, params)
    return info.value.code


def test_search_finds_the_enrolled_person_and_no_stranger(ops: Rekognition, door: dict[str, str]) -> None:
    found = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": image(photo(("bob", 300, 50, 120)))})
    assert [m["Face"]["FaceId"] for m in found["FaceMatches"]] == [door["bob"]]
    assert found["FaceMatches"][0]["Face"]["ExternalImageId"] == "bob"
    assert found["FaceModelVersion"] == "fake-1.0"
    stranger = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": image(photo(("cyd", 10, 10, 150)))})
    assert stranger["FaceMatches"] == []


def test_max_faces_keeps_the_largest(ops: Rekognition) -> None:
    ops.call("CreateCollection", {"CollectionId": "door"})
    group = photo(("ann", 20, 20, 100), ("bob", 200, 20, 220), ("cyd", 450, 300, 90))
    reply = ops.call("IndexFaces", {"CollectionId": "door", "Image": image(group), "MaxFaces": 1})
    assert len(reply["FaceRecords"]) == 1
    assert [u["Reasons"] for u in reply["UnindexedFaces"]] == [["EXCEEDS_MAX_FACES"]] * 2
    bob = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": image(photo(("bob", 0, 0, 200)))})
    assert [m["Face"]["FaceId"] for m in bob["FaceMatches"]] == [reply["FaceRecords"][0]["Face"]["FaceId"]]


def test_store_refusals_read_as_rekognition_errors(ops: Rekognition, door: dict[str, str]) -> None:
    assert refused(ops, "DescribeCollection", {"CollectionId": "hall"}) == "ResourceNotFoundException"
    assert refused(ops, "CreateCollection", {"CollectionId": "door"}) == "ResourceAlreadyExistsException"
    ops.call("CreateUser", {"CollectionId": "door", "UserId": "ann"})
    assert refused(ops, "CreateUser", {"CollectionId": "door", "UserId": "ann"}) == "ConflictException"
    assert refused(ops, "DeleteUser", {"CollectionId": "door", "UserId": "zed"}) == "ResourceNotFoundException"
    unknown = "11111111-2222-3333-4444-555555555555"
    assert refused(ops, "SearchFaces", {"CollectionId": "door", "FaceId": unknown}) == "InvalidParameterException"
    no_face = image(photo())
    assert refused(ops, "SearchFacesByImage", {"CollectionId": "door", "Image": no_face}) == (
        "InvalidParameterException")
    assert ops.call("DescribeCollection", {"CollectionId": "door"})["FaceCount"] == 2


def test_users_are_found_by_image_and_deleted_faces_are_not(ops: Rekognition, door: dict[str, str]) -> None:
    ops.call("CreateUser", {"CollectionId": "door", "UserId": "ann"})
    associated = ops.call("AssociateFaces", {"CollectionId": "door", "UserId": "ann", "FaceIds": [door["ann"]]})
    assert associated["UserStatus"] == "ACTIVE"
    probe = image(photo(("ann", 50, 60, 180)))
    users = ops.call("SearchUsersByImage", {"CollectionId": "door", "Image": probe})
    assert [m["User"]["UserId"] for m in users["UserMatches"]] == ["ann"]
    ops.call("DeleteFaces", {"CollectionId": "door", "FaceIds": [door["bob"]]})
    bob = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": image(photo(("bob", 0, 0, 200)))})
    assert bob["FaceMatches"] == []


def test_the_table_lets_read_only_keys_change_nothing() -> None:
    """Every operation that writes is outside a read-only key's reach, whatever its name."""
    writes = {"CreateCollection", "DeleteCollection", "IndexFaces", "DeleteFaces", "CreateUser", "DeleteUser",
              "AssociateFaces", "DisassociateFaces", "TagResource", "UntagResource"}
    assert {name for name, op in OPERATIONS.items() if not op.read_only} == writes
    assert {name for name, op in OPERATIONS.items() if op.takes_image} == {
        "IndexFaces", "SearchFacesByImage", "DetectFaces", "CompareFaces", "SearchUsersByImage"}


def test_a_search_of_a_group_photo_analyses_only_its_largest_face(ops: Rekognition, door: dict[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Rekognition searches with the largest face and reports no other: the rest cost no landmarks, and
    without a quality filter its quality is not measured."""
    meshed: list[int] = []
    measured: list[int] = []
    landmarks = ops.pipeline.mesh.landmarks

    def counted_landmarks(rgb: np.ndarray, det: Detection) -> tuple[np.ndarray, float]:
        meshed.append(int(det.box[2]))
        return landmarks(rgb, det)

    def counted_quality(chip: np.ndarray) -> Quality:
        measured.append(1)
        return measure_quality(chip)

    monkeypatch.setattr(ops.pipeline.mesh, "landmarks", counted_landmarks)
    monkeypatch.setattr(pipeline, "measure_quality", counted_quality)
    group = image(photo(("cyd", 20, 20, 90), ("ann", 200, 100, 220), ("bob", 480, 40, 100)))
    found = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": group})
    assert [m["Face"]["ExternalImageId"] for m in found["FaceMatches"]] == ["ann"]
    assert meshed == [220] and measured == []
    filtered = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": group, "QualityFilter": "HIGH"})
    assert len(filtered["FaceMatches"]) == 1 and measured == [1]
    meshed.clear()
    meshed.clear()
    compared = ops.call("CompareFaces", {"SourceImage": group, "TargetImage": group})
    assert len(compared["FaceMatches"]) == 1 and len(compared["UnmatchedFaces"]) == 2
    assert sorted(meshed) == [90, 100, 220, 220]  # the source's largest face, then every face of the target
