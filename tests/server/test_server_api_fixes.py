"""Defects of the API found by the audit, shown through boto3 and signed HTTP against a real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from server_support import Daemon, running_daemon


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

    def twice(call: str, **params: object) -> tuple[dict[str, object], dict[str, object]]:
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


def test_client_request_tokens_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_daemon(state) as first:
        first.client().create_collection(CollectionId="door")
        first.client().create_user(CollectionId="door", UserId="kept", ClientRequestToken="made-before-restart")
    with running_daemon(state) as second:
        answer = second.client().create_user(CollectionId="door", UserId="kept",
                                             ClientRequestToken="made-before-restart")
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
