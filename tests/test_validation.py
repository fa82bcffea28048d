"""Requests are held to Rekognition's own model: what clients send passes, what AWS refuses is refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from botocore.serialize import create_serializer

from edge.errors import InvalidParameterException, RekognitionError, ValidationException
from edge.rekognition.validation import (
    IMAGE_SOURCE_MESSAGE,
    _pattern,
    _service_model,
    check_image,
    validate_request,
)
from edge.server.app import http_status

IMAGE = b"\xff\xd8\xff\xe0 not really a JPEG, which is the pipeline's business"
B64 = base64.b64encode(IMAGE).decode()
FACE = "ce7ed422-2132-4a11-ab14-06c5c410f29f"
OTHER_FACE = "13692fe4-990a-4679-b14a-5ac23d135eab"
S3 = {"S3Object": {"Bucket": "MyImageS3Bucket", "Name": "ExamplePerson.jpg"}}

# Every face operation edge-face implements, with the parameters boto3 users pass (bytes for blobs).
VALID: dict[str, dict[str, Any]] = {
    "CreateCollection": {"CollectionId": "MyFaceImageCollection", "Tags": {"team": "door-1"}},
    "DeleteCollection": {"CollectionId": "MyFaceImageCollection"},
    "DescribeCollection": {"CollectionId": "MyFaceImageCollection"},
    "ListCollections": {"MaxResults": 10, "NextToken": "abc-_"},
    "IndexFaces": {
        "CollectionId": "MyFaceImageCollection",
        "Image": {"Bytes": IMAGE},
        "ExternalImageId": "example-image.jpg",
        "DetectionAttributes": ["DEFAULT"],
        "MaxFaces": 1,
        "QualityFilter": "AUTO",
    },
    "ListFaces": {"CollectionId": "MyFaceImageCollection", "MaxResults": 20, "UserId": "alice", "FaceIds": [FACE]},
    "DeleteFaces": {"CollectionId": "MyFaceImageCollection", "FaceIds": [FACE, OTHER_FACE]},
    "SearchFaces": {"CollectionId": "MyFaceImageCollection", "FaceId": FACE, "MaxFaces": 10, "FaceMatchThreshold": 95},
    "SearchFacesByImage": {
        "CollectionId": "MyFaceImageCollection",
        "Image": S3,
        "MaxFaces": 4096,
        "FaceMatchThreshold": 0,
        "QualityFilter": "NONE",
    },
    "DetectFaces": {"Image": {"Bytes": IMAGE}, "Attributes": ["ALL"]},
    "CompareFaces": {
        "SourceImage": {"Bytes": IMAGE},
        "TargetImage": S3,
        "SimilarityThreshold": 100,
        "QualityFilter": "HIGH",
    },
    "CreateUser": {"CollectionId": "MyFaceImageCollection", "UserId": "alice", "ClientRequestToken": "token-1_a"},
    "DeleteUser": {"CollectionId": "MyFaceImageCollection", "UserId": "alice"},
    "ListUsers": {"CollectionId": "MyFaceImageCollection", "MaxResults": 500},
    "AssociateFaces": {
        "CollectionId": "MyFaceImageCollection",
        "UserId": "alice",
        "FaceIds": [FACE],
        "UserMatchThreshold": 75,
    },
    "DisassociateFaces": {"CollectionId": "MyFaceImageCollection", "UserId": "alice", "FaceIds": [FACE]},
    "SearchUsers": {"CollectionId": "MyFaceImageCollection", "FaceId": FACE, "UserMatchThreshold": 80, "MaxUsers": 1},
    "SearchUsersByImage": {"CollectionId": "MyFaceImageCollection", "Image": {"Bytes": IMAGE}, "MaxUsers": 5},
}


def wire(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body exactly as boto3 serialises `params`, parsed as the HTTP layer parses it."""
    request = create_serializer("json").serialize_to_request(params, _service_model().operation_model(operation))
    return json.loads(request["body"])


def search(**overrides: Any) -> dict[str, Any]:
    """A valid SearchFacesByImage body with `overrides` applied (None removes a member)."""
    body = {"CollectionId": "MyFaceImageCollection", "Image": {"Bytes": B64}, "FaceMatchThreshold": 90.0}
    body.update(overrides)
    return {name: value for name, value in body.items() if value is not None}


def refused(operation: str, body: Any) -> RekognitionError:
    with pytest.raises(RekognitionError) as caught:
        validate_request(operation, body)
    return caught.value


@pytest.mark.parametrize("operation", sorted(VALID))
def test_what_boto3_sends_for_every_face_operation_validates(operation: str) -> None:
    # Blobs come back decoded, so the result is what the caller passed boto3 (95 == 95.0).
    assert validate_request(operation, wire(operation, VALID[operation])) == VALID[operation]


def test_what_the_cli_sends_validates_and_numbers_come_back_typed() -> None:
    # `aws rekognition search-faces-by-image --max-faces 5 --face-match-threshold 90` sends this body.
    body = {"CollectionId": "c", "Image": S3, "MaxFaces": 5, "FaceMatchThreshold": 90.0}
    result = validate_request("SearchFacesByImage", body)
    assert result == body
    assert type(result["MaxFaces"]) is int and type(result["FaceMatchThreshold"]) is float


def test_integral_floats_are_integers_and_integers_are_floats() -> None:
    result = validate_request("SearchFacesByImage", search(MaxFaces=5.0, FaceMatchThreshold=95))
    assert result["MaxFaces"] == 5 and type(result["MaxFaces"]) is int
    assert result["FaceMatchThreshold"] == 95.0 and type(result["FaceMatchThreshold"]) is float


def test_unknown_members_are_ignored_and_dropped() -> None:
    body = search(FutureOption="x")
    body["Image"] = {"Bytes": B64, "FutureSource": {"Url": "x"}}
    assert validate_request("SearchFacesByImage", body) == {
        "CollectionId": "MyFaceImageCollection",
        "Image": {"Bytes": IMAGE},
        "FaceMatchThreshold": 90.0,
    }


def test_null_is_absent_and_defaults_are_not_filled() -> None:
    assert validate_request("SearchFacesByImage", search(MaxFaces=None, QualityFilter=None)) == {
        "CollectionId": "MyFaceImageCollection",
        "Image": {"Bytes": IMAGE},
        "FaceMatchThreshold": 90.0,
    }
    body = search()
    body["QualityFilter"] = None
    assert "QualityFilter" not in validate_request("SearchFacesByImage", body)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"CollectionId": "bad id!"},
            "1 validation error detected: Value 'bad id!' at 'collectionId' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_.\\-]+",
        ),
        (
            {"FaceMatchThreshold": 101},
            "1 validation error detected: Value '101.0' at 'faceMatchThreshold' failed to satisfy constraint: "
            "Member must have value less than or equal to 100",
        ),
        (
            {"FaceMatchThreshold": -1},
            "1 validation error detected: Value '-1.0' at 'faceMatchThreshold' failed to satisfy constraint: "
            "Member must have value greater than or equal to 0",
        ),
        (
            {"MaxFaces": 0},
            "1 validation error detected: Value '0' at 'maxFaces' failed to satisfy constraint: "
            "Member must have value greater than or equal to 1",
        ),
        (
            {"MaxFaces": 4097},
            "1 validation error detected: Value '4097' at 'maxFaces' failed to satisfy constraint: "
            "Member must have value less than or equal to 4096",
        ),
        (
            {"QualityFilter": "BOGUS"},
            "1 validation error detected: Value 'BOGUS' at 'qualityFilter' failed to satisfy constraint: "
            "Member must satisfy enum value set: [NONE, AUTO, LOW, MEDIUM, HIGH]",
        ),
        (
            {"CollectionId": None},
            "1 validation error detected: Value null at 'collectionId' failed to satisfy constraint: "
            "Member must not be null",
        ),
        (
            {"Image": {"Bytes": ""}},
            "1 validation error detected: Value 'java.nio.HeapByteBuffer[pos=0 lim=0 cap=0]' at 'image.bytes' "
            "failed to satisfy constraint: Member must have length greater than or equal to 1",
        ),
        (
            {"Image": {"S3Object": {"Bucket": "b", "Name": "n"}}},
            "1 validation error detected: Value 'b' at 'image.s3Object.bucket' failed to satisfy constraint: "
            "Member must have length greater than or equal to 3",
        ),
        (
            {"FaceMatchThreshold": "Infinity"},
            "1 validation error detected: Value 'Infinity' at 'faceMatchThreshold' failed to satisfy constraint: "
            "Member must have value less than or equal to 100",
        ),
    ],
)
def test_constraint_violations_read_as_aws_words_them(overrides: dict[str, Any], message: str) -> None:
    error = refused("SearchFacesByImage", search(**overrides))
    assert isinstance(error, ValidationException)
    assert (error.code, http_status(error), error.message) == ("ValidationException", 400, message)


def test_every_violation_is_reported_at_once() -> None:
    error = refused("SearchFacesByImage", search(CollectionId="", MaxFaces=0, FaceMatchThreshold="NaN"))
    assert error.message.startswith("5 validation errors detected: Value '' at 'collectionId'")
    assert error.message.count("; ") == 4
    assert "Value 'NaN' at 'faceMatchThreshold'" in error.message  # NaN does not slip through a range


def test_missing_required_members_are_each_reported() -> None:
    error = refused("AssociateFaces", {"CollectionId": "c"})
    assert error.message == (
        "2 validation errors detected: "
        "Value null at 'userId' failed to satisfy constraint: Member must not be null; "
        "Value null at 'faceIds' failed to satisfy constraint: Member must not be null"
    )


def test_external_image_id_with_a_space() -> None:
    body = {"CollectionId": "c", "Image": {"Bytes": B64}, "ExternalImageId": "my photo.jpg"}
    assert refused("IndexFaces", body).message == (
        "1 validation error detected: Value 'my photo.jpg' at 'externalImageId' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [a-zA-Z0-9_.\\-:]+"
    )


def test_face_id_lists_are_bounded_and_each_id_checked() -> None:
    too_long = "at 'faceIds' failed to satisfy constraint: Member must have length less than or equal to"
    too_many = refused("DeleteFaces", {"CollectionId": "c", "FaceIds": [FACE] * 4097}).message
    assert too_many.endswith(f"{too_long} 4096")
    assert len(too_many) < 600  # the 150 kB list is not echoed back whole
    user = refused("AssociateFaces", {"CollectionId": "c", "UserId": "u", "FaceIds": [FACE] * 101}).message
    assert user.endswith(f"{too_long} 100")
    assert "greater than or equal to 1" in refused("DeleteFaces", {"CollectionId": "c", "FaceIds": []}).message
    bad = refused("DeleteFaces", {"CollectionId": "c", "FaceIds": [FACE, "NOT-A-UUID"]})
    assert bad.message == (
        f"1 validation error detected: Value '[{FACE}, NOT-A-UUID]' at 'faceIds' failed to satisfy constraint: "
        "Member must satisfy constraint: [Member must satisfy regular expression pattern: "
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}]"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MaxFaces": "5"}, "STRING_VALUE can not be converted to an Integer at 'maxFaces'"),
        ({"MaxFaces": 5.5}, "NUMBER_VALUE can not be converted to an Integer at 'maxFaces'"),
        ({"MaxFaces": 2**31}, "NUMBER_VALUE can not be converted to an Integer at 'maxFaces'"),
        ({"MaxFaces": True}, "BOOLEAN_VALUE can not be converted to an Integer at 'maxFaces'"),
        ({"FaceMatchThreshold": True}, "BOOLEAN_VALUE can not be converted to a Float at 'faceMatchThreshold'"),
        ({"FaceMatchThreshold": "90"}, "STRING_VALUE can not be converted to a Float at 'faceMatchThreshold'"),
        ({"CollectionId": ["c"]}, "Start of list found where not expected at 'collectionId'"),
        ({"CollectionId": {"Id": "c"}}, "Start of structure or map found where not expected at 'collectionId'"),
        ({"CollectionId": 7}, "NUMBER_VALUE can not be converted to a String at 'collectionId'"),
        ({"Image": "photo.jpg"}, "STRING_VALUE can not be converted to a Structure at 'image'"),
        ({"Image": {"Bytes": 12}}, "NUMBER_VALUE can not be converted to a Blob at 'image.bytes'"),
    ],
)
def test_wrong_types_are_refused_where_they_are(overrides: dict[str, Any], message: str) -> None:
    error = refused("SearchFacesByImage", search(**overrides))
    assert (error.code, error.message) == ("SerializationException", message)


def test_list_members_and_the_body_itself_are_type_checked() -> None:
    assert refused("DeleteFaces", {"CollectionId": "c", "FaceIds": FACE}).message == (
        "STRING_VALUE can not be converted to a List at 'faceIds'"
    )
    assert refused("DeleteFaces", {"CollectionId": "c", "FaceIds": [FACE, None]}).message == (
        "NULL_VALUE can not be converted to a String at 'faceIds.2.member'"
    )
    assert refused("ListCollections", []).message == "Start of list found where not expected (request body)"


@pytest.mark.parametrize("encoded", ["not base64!", "QQ", "QQ==QQ==", "QQ==\n", "Q Q==", "////_-==", "é"])
def test_invalid_base64_is_refused(encoded: str) -> None:
    error = refused("DetectFaces", {"Image": {"Bytes": encoded}})
    assert error.code == "SerializationException"
    assert error.message.startswith("Invalid base64 at 'image.bytes'")


def test_images_over_5_mb_are_too_large_and_5_mb_is_not() -> None:
    limit = 5 * 1024 * 1024
    edge = validate_request("DetectFaces", {"Image": {"Bytes": base64.b64encode(bytes(limit)).decode()}})
    assert len(edge["Image"]["Bytes"]) == limit
    error = refused("DetectFaces", {"Image": {"Bytes": base64.b64encode(bytes(6 * 1024 * 1024)).decode()}})
    assert isinstance(error, ValidationException)
    assert error.message == (
        "1 validation error detected: Value 'java.nio.HeapByteBuffer[pos=0 lim=6291456 cap=6291456]' at "
        "'image.bytes' failed to satisfy constraint: Member must have length less than or equal to 5242880")


@pytest.mark.parametrize(
    ("operation", "body"),
    [
        ("SearchFacesByImage", search(Image={"Bytes": B64, **S3})),
        ("SearchFacesByImage", search(Image={})),
        ("DetectFaces", {"Image": {"Bytes": None, "S3Object": None}}),
        ("CompareFaces", {"SourceImage": {"Bytes": B64}, "TargetImage": {}}),
        ("IndexFaces", {"CollectionId": "c", "Image": {"Bytes": B64, **S3}}),
    ],
)
def test_an_image_needs_exactly_one_source(operation: str, body: dict[str, Any]) -> None:
    error = refused(operation, body)
    assert (error.code, error.message) == ("InvalidParameterException", IMAGE_SOURCE_MESSAGE)


def test_check_image_on_its_own() -> None:
    check_image({"Bytes": IMAGE})
    check_image(S3)
    for image in ({}, {"Bytes": IMAGE, **S3}):
        with pytest.raises(InvalidParameterException, match="either contain bytes or s3 object"):
            check_image(image)


def test_tag_patterns_use_java_unicode_classes() -> None:
    # TagKey is ^(?!aws:)[\p{L}\p{Z}\p{N}_.:/=+\-@]*$, which Python's re cannot compile as written.
    tags = {"Équipe 2": "porte nord", "名前": "値"}
    assert validate_request("CreateCollection", {"CollectionId": "c", "Tags": tags})["Tags"] == tags
    error = refused("CreateCollection", {"CollectionId": "c", "Tags": {"aws:owner": "x", "ok": "a;b"}})
    assert error.message.startswith("2 validation errors detected: Value '{aws:owner=x, ok=a;b}' at 'tags' ")
    pattern = "must satisfy constraint: [Member must satisfy regular expression pattern: "
    assert f"Map keys {pattern}^(?!aws:)" in error.message
    assert f"Map value {pattern}^([" in error.message


def test_every_pattern_in_the_model_compiles() -> None:
    model = _service_model()
    patterns = {model.shape_for(name).metadata.get("pattern") for name in model.shape_names} - {None}
    assert len(patterns) > 20
    for pattern in patterns:
        _pattern(pattern)
