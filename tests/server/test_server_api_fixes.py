"""Defects of the API found by the audit, shown through boto3 and signed HTTP against a real daemon."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from server_support import CONTENT_TYPE, REGION, Daemon

from edge.server.credentials import AccessKey


def test_reindexing_an_image_with_a_larger_max_faces_stores_the_face_left_out(daemon: Daemon, misc: Path) -> None:
    """Same bytes and ExternalImageId, MaxFaces 1 then 2: the second person gets a FaceId of their own."""
    client = daemon.client()
    client.create_collection(CollectionId="reindex")
    image = {"Bytes": (misc / "two_faces.jpg").read_bytes()}
    first = client.index_faces(CollectionId="reindex", Image=image, ExternalImageId="pair", MaxFaces=1)
    (kept,) = [r["Face"] for r in first["FaceRecords"]]
    second = client.index_faces(CollectionId="reindex", Image=image, ExternalImageId="pair", MaxFaces=2)
    faces = [r["Face"] for r in second["FaceRecords"]]
    ids = [f["FaceId"] for f in faces]
    assert len(ids) == 2 and len(set(ids)) == 2, ids
    assert kept["FaceId"] in ids  # the face stored before keeps its id (no duplicate metadata)
    stored = {f["FaceId"]: f for f in client.list_faces(CollectionId="reindex")["Faces"]}
    assert set(stored) == set(ids)
    for face in faces:  # each FaceId stands for the face whose box the answer gives it
        assert stored[face["FaceId"]]["BoundingBox"] == pytest.approx(face["BoundingBox"], abs=1e-3)
    third = client.index_faces(CollectionId="reindex", Image=image, ExternalImageId="pair", MaxFaces=2)
    assert sorted(r["Face"]["FaceId"] for r in third["FaceRecords"]) == sorted(ids)
    assert client.describe_collection(CollectionId="reindex")["FaceCount"] == 2


def test_list_faces_and_collections_with_max_results_zero(daemon: Daemon, people: list[list[Path]]) -> None:
    """The API model allows MaxResults 0 (PageSize, 0-4096): a page of no items, not a full page."""
    client = daemon.client()
    client.create_collection(CollectionId="zero")
    client.index_faces(CollectionId="zero", Image={"Bytes": people[0][0].read_bytes()}, MaxFaces=1)
    faces = client.list_faces(CollectionId="zero", MaxResults=0)
    assert faces["Faces"] == []
    rest = client.list_faces(CollectionId="zero", NextToken=faces["NextToken"])
    assert len(rest["Faces"]) == 1
    collections = client.list_collections(MaxResults=0)
    assert collections["CollectionIds"] == [] and collections["NextToken"]


def test_client_request_token_makes_user_calls_idempotent(daemon: Daemon, people: list[list[Path]]) -> None:
    """A retried call with the same ClientRequestToken succeeds with the first answer, as Rekognition's does."""
    client = daemon.client()
    client.create_collection(CollectionId="tokens")
    faces = [client.index_faces(CollectionId="tokens", Image={"Bytes": photo.read_bytes()}, MaxFaces=1)
             ["FaceRecords"][0]["Face"]["FaceId"] for photo in people[0][:2]]

    def twice(call: str, **params: object) -> tuple[dict[str, Any], dict[str, Any]]:
        first, second = (getattr(client, call)(CollectionId="tokens", **params) for _ in range(2))
        first.pop("ResponseMetadata")
        second.pop("ResponseMetadata")
        return first, second

    assert twice("create_user", UserId="u1", ClientRequestToken="create-u1") == ({}, {})
    associated = twice("associate_faces", UserId="u1", FaceIds=faces, UserMatchThreshold=0,
                       ClientRequestToken="associate-u1")
    assert associated[0] == associated[1] and len(associated[0]["AssociatedFaces"]) == 2
    released = twice("disassociate_faces", UserId="u1", FaceIds=faces[:1], ClientRequestToken="release-u1")
    assert released[0] == released[1] and released[0]["DisassociatedFaces"] == [{"FaceId": faces[0]}]
    with pytest.raises(ClientError) as raised:
        client.create_user(CollectionId="tokens", UserId="u2", ClientRequestToken="create-u1")
    assert raised.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"
    assert twice("delete_user", UserId="u1", ClientRequestToken="delete-u1") == ({}, {})
    # Without a token (botocore makes one per call unless given), a second DeleteUser finds no user.
    with pytest.raises(ClientError) as raised:
        client.delete_user(CollectionId="tokens", UserId="u1")
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert [u["UserId"] for u in client.list_users(CollectionId="tokens")["Users"]] == []


def _signed_for(daemon: Daemon, url: str, operation: str, body: bytes, key: AccessKey) -> dict[str, str]:
    """Headers botocore signs for `url` (Host included), to send to the daemon as they are."""
    request = AWSRequest("POST", url, data=body, headers={
        "Content-Type": CONTENT_TYPE, "X-Amz-Target": f"RekognitionService.{operation}"})
    SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), "rekognition", REGION).add_auth(request)
    return {"Host": urlsplit(url).netloc, **request.prepare().headers}


def test_a_request_signed_for_another_host_is_refused(daemon: Daemon) -> None:
    """A signature captured on its way to AWS (or another device) is not valid here."""
    key, body = daemon.key(), b"{}"
    port = urlsplit(daemon.url).port
    elsewhere = daemon.request("POST", "/", body, _signed_for(
        daemon, "https://rekognition.us-east-1.amazonaws.com/", "ListCollections", body, key))
    assert (elsewhere.status, elsewhere.code) == (400, "InvalidSignatureException")
    assert "not a name of this device" in elsewhere.json["message"]
    for url in (daemon.url, f"http://localhost:{port}", f"http://{socket.gethostname()}:{port}"):
        assert daemon.request("POST", "/", body, _signed_for(daemon, url + "/", "ListCollections", body,
                                                             key)).status == 200, url


def test_failed_logins_are_logged_without_signatures_and_counted(daemon: Daemon) -> None:
    key = daemon.key()
    forged = AccessKey(name="x", access_key_id=key.access_key_id, secret_access_key="w" * 40)
    logged = daemon.log.stat().st_size
    signatures = set()
    for _ in range(30):
        headers = _signed_for(daemon, daemon.url + "/", "ListCollections", b"{}", forged)
        signatures.add(headers["Authorization"].rpartition("Signature=")[2])
        reply = daemon.request("POST", "/", b"{}", headers)
        assert (reply.status, reply.code) == (400, "InvalidSignatureException")
    lines = [line for line in daemon.log.read_text()[logged:].splitlines() if "refused a request" in line]
    assert 1 <= len(lines) <= 10  # rate-limited
    assert f"key {key.access_key_id} from 127.0.0.1: InvalidSignatureException" in lines[0]
    assert not any(signature in line for line in lines for signature in signatures)
    metrics = daemon.request("GET", "/metrics").body.decode()
    counted = re.search(r'^edge_face_auth_failures_total\{code="InvalidSignatureException"\} (\S+)', metrics, re.M)
    assert counted and float(counted.group(1)) >= 30
