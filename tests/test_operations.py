"""The Rekognition operations layer on real photos, called directly (no HTTP)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge import errors
from edge.config import PipelineSettings, ServiceSettings
from edge.rekognition.operations import Rekognition
from edge.rekognition.tokens import token_secret
from edge.store import Store
from edge.vision.pipeline import FacePipeline

PEOPLE = ["Bill_Gates", "Serena_Williams", "John_Kerry", "Madonna", "Jackie_Chan", "Nicole_Kidman"]


def b64(data: bytes) -> dict[str, str]:
    return {"Bytes": base64.b64encode(data).decode()}


@pytest.fixture
def ops(pipeline: FacePipeline, tmp_path: Path, misc: Path) -> Iterator[Rekognition]:
    store = Store(tmp_path / "state", checkpoint_interval_s=None)
    settings = ServiceSettings(buckets={"kiosk": misc})
    yield Rekognition(store, pipeline, settings, secret=token_secret(tmp_path / "state"))
    store.close()


@pytest.fixture
def photos(faces_dev: Path) -> dict[str, list[bytes]]:
    return {name: [p.read_bytes() for p in sorted((faces_dev / name).glob("*.jpg"))] for name in PEOPLE}


@pytest.fixture
def enrolled(ops: Rekognition, photos: dict[str, list[bytes]]) -> dict[str, str]:
    """One photo of each person indexed into collection 'door': person -> FaceId."""
    ops.call("CreateCollection", {"CollectionId": "door"})
    faces = {}
    for name, images in photos.items():
        result = ops.call("IndexFaces", {"CollectionId": "door", "Image": b64(images[0]), "ExternalImageId": name})
        assert len(result["FaceRecords"]) == 1, name
        faces[name] = result["FaceRecords"][0]["Face"]["FaceId"]
    return faces


def refused(ops: Rekognition, operation: str, params: dict[str, Any]) -> errors.RekognitionError:
    with pytest.raises(errors.RekognitionError) as info:
        ops.call(operation, params)
    return info.value


def test_collection_lifecycle(ops: Rekognition) -> None:
    created = ops.call("CreateCollection", {"CollectionId": "lobby"})
    assert created["StatusCode"] == 200 and created["CollectionArn"].endswith(":collection/lobby")
    assert refused(ops, "CreateCollection", {"CollectionId": "lobby"}).code == "ResourceAlreadyExistsException"
    described = ops.call("DescribeCollection", {"CollectionId": "lobby"})
    assert (described["FaceCount"], described["UserCount"]) == (0, 0)
    assert described["FaceModelVersion"] == ops.face_model_version
    for cid in ("b", "c", "d"):
        ops.call("CreateCollection", {"CollectionId": cid})
    seen, token = [], None
    while True:
        page = ops.call("ListCollections", {"MaxResults": 2, **({"NextToken": token} if token else {})})
        seen += page["CollectionIds"]
        assert len(page["FaceModelVersions"]) == len(page["CollectionIds"])
        token = page.get("NextToken")
        if not token:
            break
    assert sorted(seen) == ["b", "c", "d", "lobby"]
    assert ops.call("DeleteCollection", {"CollectionId": "lobby"}) == {"StatusCode": 200}
    assert refused(ops, "DescribeCollection", {"CollectionId": "lobby"}).code == "ResourceNotFoundException"
    assert refused(ops, "CreateCollection", {"CollectionId": "bad id!"}).code == "ValidationException"


def test_search_by_image_finds_the_right_person(ops: Rekognition, enrolled: dict[str, str],
                                                photos: dict[str, list[bytes]]) -> None:
    for name, images in photos.items():
        for image in images[1:]:
            result = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": b64(image),
                                                     "FaceMatchThreshold": 0, "MaxFaces": 3})
            matches = result["FaceMatches"]
            assert matches[0]["Face"]["ExternalImageId"] == name
            assert [m["Similarity"] for m in matches] == sorted((m["Similarity"] for m in matches), reverse=True)
            assert 0 < result["SearchedFaceBoundingBox"]["Width"] <= 1
            assert result["SearchedFaceConfidence"] > 50
            assert result["FaceModelVersion"] == ops.face_model_version


def test_the_default_threshold_keeps_strangers_out(ops: Rekognition, enrolled: dict[str, str],
                                                   faces_dev: Path) -> None:
    strangers = sorted(p for p in faces_dev.glob("*/*.jpg") if p.parent.name not in PEOPLE)[::25]
    matched = [p.name for p in strangers if ops.call(
        "SearchFacesByImage", {"CollectionId": "door", "Image": b64(p.read_bytes())})["FaceMatches"]]
    assert matched == []


def test_search_faces_excludes_the_face_itself(ops: Rekognition, enrolled: dict[str, str],
                                               photos: dict[str, list[bytes]]) -> None:
    second = ops.call("IndexFaces", {"CollectionId": "door", "Image": b64(photos["Madonna"][1]),
                                     "ExternalImageId": "Madonna"})["FaceRecords"][0]["Face"]["FaceId"]
    result = ops.call("SearchFaces", {"CollectionId": "door", "FaceId": enrolled["Madonna"], "FaceMatchThreshold": 0})
    ids = [m["Face"]["FaceId"] for m in result["FaceMatches"]]
    assert enrolled["Madonna"] not in ids and ids[0] == second
    assert result["SearchedFaceId"] == enrolled["Madonna"]
    unknown = "00000000-0000-0000-0000-000000000000"
    assert refused(ops, "SearchFaces", {"CollectionId": "door", "FaceId": unknown}).code == "InvalidParameterException"


def test_index_the_same_image_twice_adds_nothing(ops: Rekognition, enrolled: dict[str, str],
                                                 photos: dict[str, list[bytes]]) -> None:
    again = ops.call("IndexFaces", {"CollectionId": "door", "Image": b64(photos["Bill_Gates"][0]),
                                    "ExternalImageId": "Bill_Gates"})
    assert again["FaceRecords"][0]["Face"]["FaceId"] == enrolled["Bill_Gates"]
    assert ops.call("DescribeCollection", {"CollectionId": "door"})["FaceCount"] == len(PEOPLE)


def test_index_faces_max_faces_and_quality_filter(ops: Rekognition, misc: Path) -> None:
    ops.call("CreateCollection", {"CollectionId": "group"})
    result = ops.call("IndexFaces", {"CollectionId": "group", "MaxFaces": 1,
                                     "Image": b64((misc / "two_faces.jpg").read_bytes())})
    assert len(result["FaceRecords"]) == 1
    assert [u["Reasons"] for u in result["UnindexedFaces"]] == [["EXCEEDS_MAX_FACES"]]
    face = cv2.imread(str(misc / "large_4352x2903_one_face.jpg"))
    assert face is not None
    blurred = cv2.GaussianBlur(cv2.resize(face, (1088, 726)), (0, 0), 9)
    data = cv2.imencode(".jpg", blurred)[1].tobytes()
    high = ops.call("IndexFaces", {"CollectionId": "group", "Image": b64(data), "QualityFilter": "HIGH"})
    assert high["FaceRecords"] == [] and "LOW_SHARPNESS" in high["UnindexedFaces"][0]["Reasons"]
    assert ops.call("DescribeCollection", {"CollectionId": "group"})["FaceCount"] == 1


def test_list_faces_pages_with_tokens_bound_to_the_collection(ops: Rekognition, enrolled: dict[str, str]) -> None:
    ids, token = [], None
    while True:
        paging: dict[str, str] = {"NextToken": token} if token else {}
        page = ops.call("ListFaces", {"CollectionId": "door", "MaxResults": 4, **paging})
        ids += [f["FaceId"] for f in page["Faces"]]
        token = page.get("NextToken")
        if not token:
            break
        last_token = token
    assert sorted(ids) == sorted(enrolled.values())
    ops.call("CreateCollection", {"CollectionId": "other"})
    error = refused(ops, "ListFaces", {"CollectionId": "other", "NextToken": last_token})
    assert error.code == "InvalidPaginationTokenException"


def test_delete_faces_removes_them_from_search(ops: Rekognition, enrolled: dict[str, str],
                                               photos: dict[str, list[bytes]]) -> None:
    gone = "11111111-1111-1111-1111-111111111111"
    result = ops.call("DeleteFaces", {"CollectionId": "door", "FaceIds": [enrolled["Serena_Williams"], gone]})
    assert result["DeletedFaces"] == [enrolled["Serena_Williams"]]
    assert result["UnsuccessfulFaceDeletions"] == [{"FaceId": gone, "Reasons": ["FACE_NOT_FOUND"]}]
    matches = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": b64(photos["Serena_Williams"][1]),
                                              "FaceMatchThreshold": 0, "MaxFaces": 10})["FaceMatches"]
    assert all(m["Face"]["ExternalImageId"] != "Serena_Williams" for m in matches)


def test_bad_input_gets_rekognition_errors_and_changes_nothing(ops: Rekognition, enrolled: dict[str, str],
                                                               misc: Path) -> None:
    door = {"CollectionId": "door"}
    noface = b64((misc / "noface_horses.jpg").read_bytes())
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("SearchFacesByImage", {**door, "Image": noface}, "InvalidParameterException"),
        ("SearchFacesByImage", {**door, "Image": noface, "FaceMatchThreshold": 101}, "ValidationException"),
        ("SearchFacesByImage", {"CollectionId": "nope", "Image": noface}, "ResourceNotFoundException"),
        ("IndexFaces", {**door, "Image": b64((misc / "format_webp_named_jpg.jpg").read_bytes())},
         "InvalidImageFormatException"),
        ("IndexFaces", {**door, "Image": b64(b"\xff\xd8\xff" + bytes(300))}, "InvalidImageFormatException"),
        ("IndexFaces", {**door, "Image": {"Bytes": base64.b64encode(bytes(6 * 1024 * 1024)).decode()}},
         "ValidationException"),
        ("IndexFaces", {**door, "Image": {"S3Object": {"Bucket": "unknown", "Name": "two_faces.jpg"}}},
         "InvalidS3ObjectException"),
        ("IndexFaces", {**door, "Image": {"S3Object": {"Bucket": "kiosk", "Name": "../faces-dev/pairs.tsv"}}},
         "InvalidS3ObjectException"),
        ("IndexFaces", {**door, "Image": noface, "MaxFaces": "2"}, "SerializationException"),
        ("DeleteFaces", {**door, "FaceIds": ["not-a-uuid"]}, "ValidationException"),
    ]
    for operation, params, code in cases:
        assert refused(ops, operation, params).code == code, (operation, code)
    assert ops.call("DescribeCollection", door)["FaceCount"] == len(PEOPLE)


def test_s3_objects_come_from_mapped_directories(ops: Rekognition) -> None:
    result = ops.call("DetectFaces", {"Image": {"S3Object": {"Bucket": "kiosk", "Name": "two_faces.jpg"}}})
    assert len(result["FaceDetails"]) == 2


def test_detect_and_compare_faces(ops: Rekognition, photos: dict[str, list[bytes]], misc: Path) -> None:
    detail = ops.call("DetectFaces", {"Image": b64((misc / "two_faces.jpg").read_bytes()), "Attributes": ["ALL"]})
    assert len(detail["FaceDetails"]) == 2 and len(detail["FaceDetails"][0]["Landmarks"]) == 30
    same = ops.call("CompareFaces", {"SourceImage": b64(photos["Jackie_Chan"][0]),
                                     "TargetImage": b64(photos["Jackie_Chan"][1]), "SimilarityThreshold": 0})
    other = ops.call("CompareFaces", {"SourceImage": b64(photos["Jackie_Chan"][0]),
                                      "TargetImage": b64(photos["Nicole_Kidman"][0])})
    assert same["FaceMatches"][0]["Similarity"] > 60
    assert other["FaceMatches"] == [] and len(other["UnmatchedFaces"]) == 1
    assert set(same["SourceImageFace"]) == {"BoundingBox", "Confidence"}


def test_users(ops: Rekognition, enrolled: dict[str, str], photos: dict[str, list[bytes]]) -> None:
    door = {"CollectionId": "door"}
    second = ops.call("IndexFaces", {**door, "Image": b64(photos["John_Kerry"][1]),
                                     "ExternalImageId": "John_Kerry"})["FaceRecords"][0]["Face"]["FaceId"]
    assert ops.call("CreateUser", {**door, "UserId": "kerry"}) == {}
    assert refused(ops, "CreateUser", {**door, "UserId": "kerry"}).code == "ConflictException"
    ops.call("CreateUser", {**door, "UserId": "gates"})
    joined = ops.call("AssociateFaces", {**door, "UserId": "kerry", "FaceIds": [enrolled["John_Kerry"], second]})
    assert {f["FaceId"] for f in joined["AssociatedFaces"]} == {enrolled["John_Kerry"], second}
    assert joined["UserStatus"] == "ACTIVE"
    # A face of someone else does not match the user's faces: refused, with its reason.
    wrong = ops.call("AssociateFaces", {**door, "UserId": "kerry", "FaceIds": [enrolled["Madonna"]]})
    assert wrong["UnsuccessfulFaceAssociations"][0]["Reasons"] == ["LOW_MATCH_CONFIDENCE"]
    ops.call("AssociateFaces", {**door, "UserId": "gates", "FaceIds": [enrolled["Bill_Gates"]]})
    users = ops.call("ListUsers", door)["Users"]
    assert {u["UserId"]: u["UserStatus"] for u in users} == {"gates": "ACTIVE", "kerry": "ACTIVE"}
    found = ops.call("SearchUsersByImage", {**door, "Image": b64(photos["John_Kerry"][2]), "UserMatchThreshold": 0})
    assert found["UserMatches"][0]["User"]["UserId"] == "kerry"
    by_face = ops.call("SearchUsers", {**door, "FaceId": enrolled["Bill_Gates"], "UserMatchThreshold": 0})
    assert by_face["UserMatches"][0]["User"]["UserId"] == "gates"
    blocked = ops.call("DeleteFaces", {**door, "FaceIds": [second]})
    assert blocked["UnsuccessfulFaceDeletions"][0]["Reasons"] == ["ASSOCIATED_TO_AN_EXISTING_USER"]
    left = ops.call("DisassociateFaces", {**door, "UserId": "kerry", "FaceIds": [second]})
    assert left["DisassociatedFaces"] == [{"FaceId": second}]
    ops.call("DeleteUser", {**door, "UserId": "kerry"})
    assert refused(ops, "DeleteUser", {**door, "UserId": "kerry"}).code == "ResourceNotFoundException"
    assert ops.call("DescribeCollection", door)["UserCount"] == 1


def test_associate_faces_scores_a_face_as_search_users_scores_it_against_the_user(
        ops: Rekognition, enrolled: dict[str, str], photos: dict[str, list[bytes]]) -> None:
    """UserMatchThreshold is "the minimum user match confidence": the face against the user (the
    centroid of its faces, on the map for users of that many faces), the number SearchUsers answers."""
    door = {"CollectionId": "door"}
    chan = [enrolled["Jackie_Chan"]] + [
        ops.call("IndexFaces", {**door, "Image": b64(photos["Jackie_Chan"][i]), "ExternalImageId": "Jackie_Chan"})
        ["FaceRecords"][0]["Face"]["FaceId"] for i in (1, 3)]
    ops.call("CreateUser", {**door, "UserId": "chan"})
    ops.call("AssociateFaces", {**door, "UserId": "chan", "FaceIds": chan[:2], "UserMatchThreshold": 0})
    searched = ops.call("SearchUsers", {**door, "FaceId": chan[2], "UserMatchThreshold": 0, "MaxUsers": 10})
    similarity = {m["User"]["UserId"]: m["Similarity"] for m in searched["UserMatches"]}["chan"]
    assert 30 < similarity < 100  # on the scale, not clipped, so the face map would give another number
    low = ops.call("AssociateFaces", {**door, "UserId": "chan", "FaceIds": [chan[2]],
                                      "UserMatchThreshold": similarity + 0.01})
    (refusal,) = low["UnsuccessfulFaceAssociations"]
    assert refusal["Reasons"] == ["LOW_MATCH_CONFIDENCE"]
    assert refusal["Confidence"] == pytest.approx(similarity, abs=1e-4)
    joined = ops.call("AssociateFaces", {**door, "UserId": "chan", "FaceIds": [chan[2]],
                                         "UserMatchThreshold": similarity - 0.01})
    assert joined["AssociatedFaces"] == [{"FaceId": chan[2]}]


def test_users_of_three_photos_recognise_new_photos_and_keep_strangers_out(
        ops: Rekognition, photos: dict[str, list[bytes]]) -> None:
    door = {"CollectionId": "door"}
    ops.call("CreateCollection", door)
    members, strangers = PEOPLE[:4], PEOPLE[4:]
    for name in members:
        ops.call("CreateUser", {**door, "UserId": name})
        faces = [ops.call("IndexFaces", {**door, "Image": b64(image), "ExternalImageId": name})
                 ["FaceRecords"][0]["Face"]["FaceId"] for image in photos[name][:3]]
        joined = ops.call("AssociateFaces", {**door, "UserId": name, "FaceIds": faces})
        assert len(joined["AssociatedFaces"]) == 3, joined
    for name in members:
        for image in photos[name][3:]:
            found = ops.call("SearchUsersByImage", {**door, "Image": b64(image), "UserMatchThreshold": 0})
            assert found["UserMatches"][0]["User"]["UserId"] == name
    for name in strangers:
        for image in photos[name]:
            assert ops.call("SearchUsersByImage", {**door, "Image": b64(image)})["UserMatches"] == []


def test_a_collection_of_another_face_model_never_mixes(ops: Rekognition, photos: dict[str, list[bytes]]) -> None:
    ops.store.create_collection("old", face_model_version="facenet_casia", dim=512, arn="arn")
    error = refused(ops, "IndexFaces", {"CollectionId": "old", "Image": b64(photos["Madonna"][0])})
    assert error.code == "InvalidParameterException" and "face model" in error.message
    assert ops.store.face_count("old") == 0


def test_search_users_by_image_without_a_face_is_empty(ops: Rekognition, misc: Path) -> None:
    ops.call("CreateCollection", {"CollectionId": "empty"})
    result = ops.call("SearchUsersByImage", {"CollectionId": "empty",
                                             "Image": b64((misc / "noface_eagle.jpg").read_bytes())})
    assert result["UserMatches"] == [] and result["UnsearchedFaces"] == []


def test_similarity_is_monotone_in_cosine(ops: Rekognition) -> None:
    cosines = np.linspace(-1, 1, 201)
    sims = ops.similarity.similarity(cosines)
    assert np.all(np.diff(sims) >= 0) and sims[0] >= 0 and sims[-1] <= 100


def test_deletes_leave_no_vector_user_id_or_external_image_id_on_disk(ops: Rekognition, enrolled: dict[str, str],
                                                                    tmp_path: Path) -> None:
    face_id, user_id, external = enrolled["Jackie_Chan"], "staff-4711-Chan", "Jackie_Chan"
    ops.call("CreateUser", {"CollectionId": "door", "UserId": user_id, "ClientRequestToken": "enrol-4711"})
    ops.call("AssociateFaces", {"CollectionId": "door", "UserId": user_id, "FaceIds": [face_id]})
    vector = ops.store.get_face_vector("door", face_id).astype("<f4").tobytes()

    def holding(needle: bytes) -> list[str]:
        return [p.name for p in (tmp_path / "state").rglob("*") if p.is_file() and needle in p.read_bytes()]

    assert holding(vector) and holding(user_id.encode()) and holding(external.encode())  # the scan sees them
    ops.call("DeleteUser", {"CollectionId": "door", "UserId": user_id})
    assert holding(user_id.encode()) == []
    ops.call("DeleteFaces", {"CollectionId": "door", "FaceIds": [face_id]})
    assert face_id not in [f["FaceId"] for f in ops.call("ListFaces", {"CollectionId": "door"})["Faces"]]
    assert holding(vector) == [] and holding(external.encode()) == []
    ops.call("DeleteCollection", {"CollectionId": "door"})
    assert [name for name in enrolled if holding(name.encode())] == []


def test_searches_and_indexing_in_parallel(ops: Rekognition, enrolled: dict[str, str],
                                           photos: dict[str, list[bytes]], faces_dev: Path) -> None:
    """Several threads search while another enrols: no errors, and every search stays right."""
    from concurrent.futures import ThreadPoolExecutor

    newcomers = sorted(p for p in faces_dev.glob("*/*_0001.jpg") if p.parent.name not in PEOPLE)[:12]

    def search(name: str) -> str:
        image = photos[name][1 + len(name) % (len(photos[name]) - 1)]
        matches = ops.call("SearchFacesByImage", {"CollectionId": "door", "Image": b64(image),
                                                  "FaceMatchThreshold": 0, "MaxFaces": 1})["FaceMatches"]
        return matches[0]["Face"]["ExternalImageId"]

    def enrol(path: Path) -> int:
        return len(ops.call("IndexFaces", {"CollectionId": "door", "Image": b64(path.read_bytes()),
                                           "ExternalImageId": path.parent.name})["FaceRecords"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        indexed = pool.map(enrol, newcomers)
        searched = [pool.submit(search, name) for name in PEOPLE * 3]
        assert [f.result() for f in searched] == PEOPLE * 3
        assert sum(indexed) == len(newcomers)
    assert ops.call("DescribeCollection", {"CollectionId": "door"})["FaceCount"] == len(PEOPLE) + len(newcomers)


def test_client_request_tokens_are_remembered_across_a_restart(pipeline: FacePipeline, tmp_path: Path) -> None:
    state = tmp_path / "state"
    for attempt in range(2):  # the second after the store was closed and opened again, as by a restart
        with Store(state, checkpoint_interval_s=None) as store:
            ops = Rekognition(store, pipeline, ServiceSettings(), secret=token_secret(state))
            if attempt == 0:
                ops.call("CreateCollection", {"CollectionId": "door"})
            assert ops.call("CreateUser", {"CollectionId": "door", "UserId": "kept",
                                           "ClientRequestToken": "made-before-restart"}) == {}
    with Store(state, checkpoint_interval_s=None) as store:
        ops = Rekognition(store, pipeline, ServiceSettings(), secret=token_secret(state))
        assert refused(ops, "CreateUser", {"CollectionId": "door", "UserId": "kept"}).code == "ConflictException"


def test_a_facenet_collection_searched_through_its_graph_answers_as_exact_search(
    settings: PipelineSettings, people: list[list[Path]], tmp_path: Path
) -> None:
    """FaceNet's 512-d faces, the same photos enrolled in a collection searched exactly and in one past exact_max,
    whose graph holds their projection: each search answers the same best face, and the same faces above a
    threshold, with the same Similarity (the projection only picks the candidates the full vectors score)."""
    pipe = FacePipeline.from_settings(settings.model_copy(update={"embedder": "facenet_casia"}))
    stores = {"exact": Store(tmp_path / "exact", checkpoint_interval_s=None),
              "graph": Store(tmp_path / "graph", checkpoint_interval_s=None, exact_max=0)}
    try:
        apis = {name: Rekognition(store, pipe, ServiceSettings(), secret=token_secret(tmp_path / name))
                for name, store in stores.items()}
        for api in apis.values():
            api.call("CreateCollection", {"CollectionId": "door"})
        for photos in people:
            for api in apis.values():
                api.call("IndexFaces", {"CollectionId": "door", "Image": b64(photos[0].read_bytes()), "MaxFaces": 1,
                                        "ExternalImageId": photos[0].parent.name})
        assert (stores["exact"].index_kind("door"), stores["graph"].index_kind("door")) == ("exact", "hnsw")
        for photos in people:
            for max_faces, threshold in ((1, 0), (10, 80)):
                probe = {"CollectionId": "door", "Image": b64(photos[1].read_bytes()), "MaxFaces": max_faces,
                         "FaceMatchThreshold": threshold}
                answers = [[(m["Face"]["ExternalImageId"], m["Similarity"]) for m in api.call(
                    "SearchFacesByImage", probe)["FaceMatches"]] for api in apis.values()]
                assert answers[0] == answers[1] and (threshold or len(answers[0]) == 1)
    finally:
        for store in stores.values():
            store.close()
        pipe.close()
