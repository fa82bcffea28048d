"""Defects of the API found by the audit, shown through boto3 and signed HTTP against a real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_support import Daemon


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
