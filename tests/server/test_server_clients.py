"""The real `aws` CLI and boto3 against a real daemon: every operation, the documented example, the errors."""

from __future__ import annotations

import base64
import datetime
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from botocore.exceptions import ClientError
from server_support import Daemon, error_line, running_daemon

from edge.evaluation.dataset import data_root

REFERENCE = data_root().parent / "reference" / "search-faces-by-image.aws-cli.md"
EXAMPLE_BUCKET, EXAMPLE_KEY, EXAMPLE_COLLECTION = "MyImageS3Bucket", "ExamplePerson.jpg", "MyFaceImageCollection"
#: Members our Face carries beyond the (older) documented example; botocore's Face shape has them.
FACE_EXTRAS = {"IndexFacesModelVersion"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, people: list[list[Path]]) -> Iterator[Daemon]:
    """The daemon, with the example's S3 bucket mapped to a folder holding one photo of the first person."""
    root = tmp_path_factory.mktemp("clients")
    bucket = root / "bucket"
    bucket.mkdir()
    (bucket / EXAMPLE_KEY).write_bytes(people[0][-1].read_bytes())
    env = {"EDGE_FACE_SERVICE__BUCKETS": json.dumps({EXAMPLE_BUCKET: str(bucket)})}
    with running_daemon(root / "state", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def gallery(daemon: Daemon, people: list[list[Path]]) -> dict[str, list[str]]:
    """Collection `gallery`: four photos of person A, two of person B; face ids by person (enrolled with boto3)."""
    client = daemon.client()
    client.create_collection(CollectionId="gallery")
    faces: dict[str, list[str]] = {"A": [], "B": []}
    for person, photos in (("A", people[0][:4]), ("B", people[1][:2])):
        for photo in photos:
            reply = client.index_faces(CollectionId="gallery", Image={"Bytes": photo.read_bytes()},
                                       ExternalImageId=photo.name, MaxFaces=1)
            faces[person] += [r["Face"]["FaceId"] for r in reply["FaceRecords"]]
    assert len(faces["A"]) == 4 and len(faces["B"]) == 2
    return faces


def face_count(daemon: Daemon, collection: str) -> int:
    return int(daemon.client().describe_collection(CollectionId=collection)["FaceCount"])


def test_cli_creates_indexes_describes_and_lists(daemon: Daemon, people: list[list[Path]]) -> None:
    created = daemon.aws_json("create-collection", "--collection-id", "cli-enrol")
    assert created["StatusCode"] == 200 and created["CollectionArn"].endswith(":collection/cli-enrol")
    indexed = daemon.aws_json("index-faces", "--collection-id", "cli-enrol", "--image-bytes",
                              f"fileb://{people[0][0]}", "--external-image-id", people[0][0].name)
    (record,) = indexed["FaceRecords"]
    assert record["Face"]["ExternalImageId"] == people[0][0].name
    assert uuid.UUID(record["Face"]["FaceId"]).version == 4
    assert indexed["FaceModelVersion"] == created["FaceModelVersion"]
    described = daemon.aws_json("describe-collection", "--collection-id", "cli-enrol")
    assert described["FaceCount"] == 1 and described["UserCount"] == 0
    listed = daemon.aws_json("list-collections")
    assert "cli-enrol" in listed["CollectionIds"]
    assert len(listed["FaceModelVersions"]) == len(listed["CollectionIds"])


def test_cli_example_answer_has_the_documented_shape(daemon: Daemon, people: list[list[Path]]) -> None:
    """The CLI page's own example, run as printed: several photos of one person, searched by an S3 image."""
    client = daemon.client()
    client.create_collection(CollectionId=EXAMPLE_COLLECTION)
    for number, photo in enumerate(people[0][:-1], start=1):
        client.index_faces(CollectionId=EXAMPLE_COLLECTION, Image={"Bytes": photo.read_bytes()},
                           ExternalImageId=f"image{number}.jpg")
    answer = daemon.aws_json("search-faces-by-image", "--image",
                             json.dumps({"S3Object": {"Bucket": EXAMPLE_BUCKET, "Name": EXAMPLE_KEY}}),
                             "--collection-id", EXAMPLE_COLLECTION)
    assert len(answer["FaceMatches"]) >= 2
    documented = _example_output()
    ours = _structure(answer)
    for match in ours["FaceMatches"]:
        assert set(match["Face"]) - set(documented["FaceMatches"][0]["Face"]) <= FACE_EXTRAS
        for extra in FACE_EXTRAS:
            match["Face"].pop(extra, None)
    assert ours == documented


def test_cli_search_faces_by_face_id(daemon: Daemon, gallery: dict[str, list[str]]) -> None:
    probe = gallery["A"][0]
    answer = daemon.aws_json("search-faces", "--collection-id", "gallery", "--face-id", probe,
                             "--face-match-threshold", "70")
    assert answer["SearchedFaceId"] == probe
    matched = [m["Face"]["FaceId"] for m in answer["FaceMatches"]]
    assert probe not in matched and set(matched) <= set(gallery["A"]) and matched
    similarities = [m["Similarity"] for m in answer["FaceMatches"]]
    assert similarities == sorted(similarities, reverse=True)


def test_cli_and_boto3_page_through_list_faces(daemon: Daemon, gallery: dict[str, list[str]]) -> None:
    everyone = set(gallery["A"] + gallery["B"])
    # --max-results turns the CLI's paging off: one page and the daemon's token.
    first = daemon.aws_json("list-faces", "--collection-id", "gallery", "--max-results", "1")
    assert len(first["Faces"]) == 1 and first["NextToken"]
    # The CLI's own paging: one request per face, merged.
    merged = daemon.aws_json("list-faces", "--collection-id", "gallery", "--page-size", "1")
    assert {f["FaceId"] for f in merged["Faces"]} == everyone
    head = daemon.aws_json("list-faces", "--collection-id", "gallery", "--max-items", "2")
    tail = daemon.aws_json("list-faces", "--collection-id", "gallery", "--starting-token", head["NextToken"])
    assert len(head["Faces"]) == 2
    assert {f["FaceId"] for f in head["Faces"] + tail["Faces"]} == everyone
    pages = list(daemon.client().get_paginator("list_faces").paginate(
        CollectionId="gallery", PaginationConfig={"PageSize": 1}))
    assert [len(p["Faces"]) for p in pages] == [1] * len(everyone)
    assert {f["FaceId"] for p in pages for f in p["Faces"]} == everyone


def test_cli_deletes_faces(daemon: Daemon, people: list[list[Path]]) -> None:
    client = daemon.client()
    client.create_collection(CollectionId="deletions")
    face = client.index_faces(CollectionId="deletions", Image={"Bytes": people[1][0].read_bytes()})
    face_id = face["FaceRecords"][0]["Face"]["FaceId"]
    missing = str(uuid.uuid4())
    answer = daemon.aws_json("delete-faces", "--collection-id", "deletions", "--face-ids", face_id, missing)
    assert answer["DeletedFaces"] == [face_id]
    assert answer["UnsuccessfulFaceDeletions"] == [{"FaceId": missing, "Reasons": ["FACE_NOT_FOUND"]}]
    assert face_count(daemon, "deletions") == 0


def test_cli_detects_and_compares_faces(daemon: Daemon, misc: Path, people: list[list[Path]]) -> None:
    detected = daemon.aws_json("detect-faces", "--image-bytes", f"fileb://{misc / 'group_selfie_about7faces.jpg'}")
    assert len(detected["FaceDetails"]) >= 2
    assert {"BoundingBox", "Landmarks", "Pose", "Quality", "Confidence"} <= set(detected["FaceDetails"][0])
    compared = daemon.aws_json("compare-faces", "--source-image-bytes", f"fileb://{people[0][0]}",
                               "--target-image-bytes", f"fileb://{people[0][1]}", "--similarity-threshold", "60")
    assert compared["SourceImageFace"]["Confidence"] > 50
    assert len(compared["FaceMatches"]) == 1 and compared["FaceMatches"][0]["Similarity"] >= 60


def test_cli_users_lifecycle(daemon: Daemon, gallery: dict[str, list[str]], people: list[list[Path]]) -> None:
    assert daemon.aws_json("create-user", "--collection-id", "gallery", "--user-id", "person-a") == {}
    associated = daemon.aws_json("associate-faces", "--collection-id", "gallery", "--user-id", "person-a",
                                 "--face-ids", *gallery["A"][:3], "--user-match-threshold", "50")
    assert {f["FaceId"] for f in associated["AssociatedFaces"]} == set(gallery["A"][:3])
    listed = daemon.aws_json("list-users", "--collection-id", "gallery")
    assert {"UserId": "person-a", "UserStatus": associated["UserStatus"]} in listed["Users"]
    by_face = daemon.aws_json("search-users", "--collection-id", "gallery", "--face-id", gallery["A"][3],
                              "--user-match-threshold", "60")
    assert [m["User"]["UserId"] for m in by_face["UserMatches"]] == ["person-a"]
    by_image = daemon.aws_json("search-users-by-image", "--collection-id", "gallery", "--image-bytes",
                               f"fileb://{people[0][3]}", "--user-match-threshold", "60")
    assert by_image["UserMatches"][0]["User"]["UserId"] == "person-a"
    assert "SearchedFace" in by_image
    released = daemon.aws_json("disassociate-faces", "--collection-id", "gallery", "--user-id", "person-a",
                               "--face-ids", gallery["A"][0])
    assert released["DisassociatedFaces"] == [{"FaceId": gallery["A"][0]}]
    assert daemon.aws_json("delete-user", "--collection-id", "gallery", "--user-id", "person-a") == {}
    assert daemon.client().list_users(CollectionId="gallery")["Users"] == []


@pytest.mark.parametrize(("case", "code", "operation", "message"), [
    ("missing collection", "ResourceNotFoundException", "DescribeCollection", "does not exist"),
    ("no face in the image", "InvalidParameterException", "SearchFacesByImage", "There are no faces in the image"),
    ("threshold 101", "ValidationException", "SearchFacesByImage", "'faceMatchThreshold' failed to satisfy"),
    ("bad collection id", "ValidationException", "CreateCollection", "'collectionId' failed to satisfy"),
    ("6 MB image", "ValidationException", "IndexFaces", "'image.bytes' failed to satisfy"),
    ("wrong secret", "InvalidSignatureException", "IndexFaces",
     "The request signature we calculated does not match the signature you provided."),
    ("unknown key", "UnrecognizedClientException", "IndexFaces",
     "The security token included in the request is invalid."),
    ("read-only key", "AccessDeniedException", "IndexFaces", "is not authorized to perform: rekognition:IndexFaces"),
    ("unsigned", "MissingAuthenticationTokenException", "IndexFaces", "Missing Authentication Token"),
])
def test_cli_errors(daemon: Daemon, gallery: dict[str, list[str]], people: list[list[Path]], misc: Path,
                    tmp_path: Path, case: str, code: str, operation: str, message: str) -> None:
    """Each refusal: the CLI's exit status 255, its `An error occurred (X)` line, and nothing changed."""
    photo = f"fileb://{people[0][0]}"
    key = daemon.key("admin")
    forged = {"wrong secret": (key.access_key_id, "x" * 40), "unknown key": ("AKIA" + "Z" * 16, key.secret_access_key)}
    credentials, profile = None, "admin"
    if case in forged:
        credentials = tmp_path / "credentials"
        credentials.write_text("[admin]\naws_access_key_id = {}\naws_secret_access_key = {}\n".format(*forged[case]))
    elif case == "read-only key":
        profile = "kiosk"
    elif case == "6 MB image":
        big = tmp_path / "big.jpg"
        big.write_bytes(people[0][0].read_bytes() + bytes(6 * 1024 * 1024))
        photo = f"fileb://{big}"
    args = {
        "missing collection": ["describe-collection", "--collection-id", "no-such-collection"],
        "no face in the image": ["search-faces-by-image", "--collection-id", "gallery",
                                 "--image-bytes", f"fileb://{misc / 'noface_eagle.jpg'}"],
        "threshold 101": ["search-faces-by-image", "--collection-id", "gallery", "--image-bytes", photo,
                          "--face-match-threshold", "101"],
        "bad collection id": ["create-collection", "--collection-id", "bad id!"],
    }.get(case, ["index-faces", "--collection-id", "gallery", "--image-bytes", photo])
    if case == "unsigned":
        args.append("--no-sign-request")
    before = face_count(daemon, "gallery")
    collections = daemon.client().list_collections()["CollectionIds"]
    done = daemon.aws(*args, profile=None if case == "unsigned" else profile, credentials=credentials)
    assert done.returncode == 255, done.stdout
    assert f"{error_line(code, operation)}: " in done.stderr
    assert message in done.stderr
    assert face_count(daemon, "gallery") == before
    assert daemon.client().list_collections()["CollectionIds"] == collections


@pytest.mark.parametrize("minutes", [-10, 10])
def test_boto3_signature_outside_five_minutes_is_refused(daemon: Daemon, gallery: dict[str, list[str]],
                                                         people: list[list[Path]], minutes: int) -> None:
    """botocore signs at a shifted clock (X-Amz-Date 10 minutes off): InvalidSignatureException, nothing indexed."""
    client = daemon.client()
    before = face_count(daemon, "gallery")
    shifted = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(minutes=minutes)
    with mock.patch("botocore.auth.get_current_datetime", return_value=shifted), \
            pytest.raises(ClientError) as raised:
        client.index_faces(CollectionId="gallery", Image={"Bytes": people[0][0].read_bytes()})
    error = raised.value.response["Error"]
    assert error["Code"] == "InvalidSignatureException"
    assert error["Message"].startswith("Signature expired" if minutes < 0 else "Signature not yet current")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert face_count(daemon, "gallery") == before


def test_boto3_read_only_key_scope(daemon: Daemon, gallery: dict[str, list[str]], people: list[list[Path]]) -> None:
    kiosk = daemon.client("kiosk")
    image = {"Bytes": people[0][4].read_bytes()}
    before = face_count(daemon, "gallery")
    assert kiosk.search_faces_by_image(CollectionId="gallery", Image=image)["FaceMatches"]
    assert kiosk.list_faces(CollectionId="gallery")["Faces"]
    writes: list[Callable[[], object]] = [
        lambda: kiosk.index_faces(CollectionId="gallery", Image=image),
        lambda: kiosk.delete_collection(CollectionId="gallery"),
        lambda: kiosk.create_user(CollectionId="gallery", UserId="nobody")]
    for call in writes:
        with pytest.raises(ClientError) as raised:
            call()
        assert raised.value.response["Error"]["Code"] == "AccessDeniedException"
    assert face_count(daemon, "gallery") == before


def test_every_response_carries_a_request_id(daemon: Daemon) -> None:
    client = daemon.client()
    ok = client.list_collections()["ResponseMetadata"]
    with pytest.raises(ClientError) as raised:
        client.describe_collection(CollectionId="absent")
    ids = [ok["RequestId"], raised.value.response["ResponseMetadata"]["RequestId"]]
    ids += [daemon.request("GET", path).headers["x-amzn-requestid"] for path in ("/healthz", "/nowhere")]
    assert len({uuid.UUID(i) for i in ids}) == 4


def test_health_readiness_and_metrics(daemon: Daemon, gallery: dict[str, list[str]],
                                      people: list[list[Path]]) -> None:
    assert daemon.request("GET", "/healthz").json == {"status": "alive"}
    ready = daemon.request("GET", "/readyz").json  # a loopback client sees the detail
    assert ready["status"] == "ready" and ready["reason"] == "" and ready["erasure_pending"] is False
    client = daemon.client()
    client.search_faces_by_image(CollectionId="gallery", Image={"Bytes": people[1][4].read_bytes()})
    with pytest.raises(ClientError):
        client.describe_collection(CollectionId="absent")
    text = daemon.request("GET", "/metrics").body.decode()
    assert re.search(r'^edge_face_requests_total\{operation="SearchFacesByImage"\} [1-9]', text, re.M)
    assert re.search(r'^edge_face_errors_total\{code="ResourceNotFoundException",operation="DescribeCollection"\} '
                     r'[1-9]', text, re.M)
    assert 'edge_face_request_duration_seconds_bucket{le="0.1",operation="SearchFacesByImage"}' in text
    for stage in ("detect", "landmarks", "align", "embed"):
        assert f'edge_face_pipeline_stage_duration_seconds_count{{stage="{stage}"}}' in text
    total = sum(face_count(daemon, c) for c in daemon.client().list_collections()["CollectionIds"])
    assert f"edge_face_faces {float(total)}" in text
    assert "gallery" not in text  # collection ids are not published unless configured


def test_image_bytes_as_base64_json(daemon: Daemon, gallery: dict[str, list[str]], people: list[list[Path]]) -> None:
    """What the SDKs put on the wire (base64 in JSON) searched over raw HTTP, numbers as the CLI sends them."""
    body = {"CollectionId": "gallery", "Image": {"Bytes": base64.b64encode(people[0][4].read_bytes()).decode()},
            "FaceMatchThreshold": 70.0, "MaxFaces": 2}
    reply = daemon.post("SearchFacesByImage", body)
    assert reply.status == 200 and reply.headers["content-type"] == "application/x-amz-json-1.1"
    assert 1 <= len(reply.json["FaceMatches"]) <= 2


def _example_output() -> Any:
    """The JSON answer printed in the CLI page's example, as a structure (see `_structure`)."""
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} is absent")
    block = re.search(r'^\{\n\s+"SearchedFaceBoundingBox".*?^\}$', REFERENCE.read_text(), re.S | re.M)
    assert block is not None
    return _structure(json.loads(block.group()))


def _structure(value: Any) -> Any:
    """Field names and value kinds, recursively; a list's items must all have one structure."""
    if isinstance(value, dict):
        return {key: _structure(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes = [_structure(item) for item in value]
        assert all(s == shapes[0] for s in shapes), "list items of different structure"
        return shapes[:1]
    return "number" if isinstance(value, int | float) else type(value).__name__
