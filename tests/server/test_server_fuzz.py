"""Malformed requests, properly signed: every one refused with a client error, none a 500, nothing changed."""

from __future__ import annotations

import base64
import json
import random
import select
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_support import Daemon, running_daemon

MAX_BODY = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with a 4 MB body limit, so the limit is cheap to cross."""
    with running_daemon(tmp_path_factory.mktemp("fuzz") / "state",
                        env={"EDGE_FACE_SERVER__MAX_BODY_BYTES": str(MAX_BODY)}) as running:
        yield running


@pytest.fixture(scope="module")
def photo(people: list[list[Path]]) -> bytes:
    return people[0][0].read_bytes()


@pytest.fixture(scope="module")
def enrolled(daemon: Daemon, photo: bytes) -> str:
    """Collection `fuzz` with one face and one user: the state no rejected request may change."""
    client = daemon.client()
    client.create_collection(CollectionId="fuzz")
    client.index_faces(CollectionId="fuzz", Image={"Bytes": photo})
    client.create_user(CollectionId="fuzz", UserId="someone")
    return "fuzz"


def snapshot(daemon: Daemon) -> Any:
    client = daemon.client()
    return (client.list_collections()["CollectionIds"], client.list_faces(CollectionId="fuzz")["Faces"],
            client.list_users(CollectionId="fuzz")["Users"])


def corpus(photo: bytes) -> list[tuple[str, bytes]]:
    """(operation, body) pairs, every one of them invalid."""
    rng = random.Random(5)
    b64 = base64.b64encode(photo).decode()

    def image(data: bytes) -> bytes:
        return json.dumps({"CollectionId": "fuzz", "Image": {"Bytes": base64.b64encode(data).decode()}}).encode()

    def body(**params: Any) -> bytes:
        return json.dumps(params).encode()

    huge_jpeg = b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9) + (
        b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00") + bytes(64)
    huge_png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 90000, 90000, 8, 2, 0,
                                                                                    0, 0) + bytes(4)
    tiny_png = huge_png.replace(struct.pack(">II", 90000, 90000), struct.pack(">II", 10, 10))
    index, search = "IndexFaces", "SearchFacesByImage"
    return [
        # truncated and non-JSON bodies
        (index, b'{"CollectionId": "fuzz"'), (index, b"{"), (index, b'{"Image": {"Bytes": "/9j/'),
        (index, b"\xff\xfe\x00garbage"), (index, bytes(rng.getrandbits(8) for _ in range(4096))),
        (index, b"null"), (index, b"[]"), (index, b'"CollectionId"'), (index, b"42"), (index, b"true"),
        (index, b"[" * 100_000), (index, b'{"a":' * 50_000), (index, b""),
        # wrong types
        ("CreateCollection", body(CollectionId=5)), ("CreateCollection", body(CollectionId=["fuzz2"])),
        ("CreateCollection", body(CollectionId={"id": "fuzz2"})), (search, body(CollectionId="fuzz", MaxFaces="ten",
                                                                                 Image={"Bytes": b64})),
        (search, body(CollectionId="fuzz", MaxFaces=1.5, Image={"Bytes": b64})),
        (search, body(CollectionId="fuzz", FaceMatchThreshold="high", Image={"Bytes": b64})),
        (index, body(CollectionId="fuzz", Image="abc")), (index, body(CollectionId="fuzz", Image={"Bytes": 12})),
        (index, body(CollectionId="fuzz", Image={"Bytes": "!!not base64!!"})),
        ("DeleteFaces", body(CollectionId="fuzz", FaceIds="abc")), ("DeleteFaces", body(CollectionId="fuzz",
                                                                                        FaceIds=[1, 2])),
        ("DeleteCollection", body(CollectionId=None)), ("DeleteUser", body(CollectionId="fuzz", UserId=True)),
        # nested garbage
        (index, body(CollectionId="fuzz", Image={"S3Object": {"Bucket": {"a": [[[[]]]]}, "Name": [{}]}})),
        (index, body(CollectionId="fuzz", Image={"Bytes": b64, "S3Object": {"Bucket": "b", "Name": "n"}})),
        (index, body(CollectionId="fuzz", Image={})),
        (index, body(CollectionId="fuzz", Image={"S3Object": {"Bucket": "unmapped", "Name": "../../etc/passwd"}})),
        ("AssociateFaces", body(CollectionId="fuzz", UserId="someone", FaceIds=[{"FaceId": "x"}])),
        # huge numbers and out-of-range values
        (search, body(CollectionId="fuzz", MaxFaces=10**30, Image={"Bytes": b64})),
        (search, body(CollectionId="fuzz", MaxFaces=1e308, Image={"Bytes": b64})),
        (search, b'{"CollectionId": "fuzz", "FaceMatchThreshold": 1e999, "Image": {"Bytes": "' + b64.encode() + b'"}}'),
        (search, b'{"CollectionId": "fuzz", "FaceMatchThreshold": NaN, "Image": {"Bytes": "' + b64.encode() + b'"}}'),
        ("ListFaces", b'{"CollectionId": "fuzz", "MaxResults": ' + b"9" * 5000 + b"}"),
        ("ListFaces", body(CollectionId="fuzz", MaxResults=-1)), ("ListFaces", body(CollectionId="fuzz",
                                                                                    NextToken="forged")),
        ("CreateCollection", body(CollectionId="a" * 100_000)),
        (index, body(CollectionId="fuzz", Image={"Bytes": b64}, MaxFaces=0)),
        # truncated and lying images
        (index, image(photo[: len(photo) // 2])), (index, image(photo[:100])), (index, image(photo[:4])),
        (index, image(huge_jpeg)), (index, image(huge_png)), (index, image(tiny_png)),
        (index, image(bytes(rng.getrandbits(8) for _ in range(50_000)))),
        ("CompareFaces", json.dumps({"SourceImage": {"Bytes": b64},
                                     "TargetImage": {"Bytes": base64.b64encode(photo[:300]).decode()}}).encode()),
        ("DetectFaces", image(b"GIF89a" + bytes(100))),
    ]


def test_malformed_bodies_are_client_errors_and_change_nothing(daemon: Daemon, enrolled: str, photo: bytes) -> None:
    before = snapshot(daemon)
    answers = []
    for operation, body in corpus(photo):
        reply = daemon.post(operation, body)
        answers.append((operation, body[:60], reply.status, reply.json.get("__type")))
        assert 400 <= reply.status < 500, answers[-1]
        assert reply.json["message"] and "x-amzn-requestid" in reply.headers
    assert snapshot(daemon) == before
    assert daemon.request("GET", "/healthz").status == 200
    assert "InternalServerError" not in daemon.request("GET", "/metrics").body.decode()


@pytest.mark.parametrize(("headers", "operation", "code"), [
    ({"Content-Type": "text/plain"}, "ListCollections", "UnknownOperationException"),
    ({"Content-Type": "application/xml"}, "DeleteCollection", "UnknownOperationException"),
    ({}, "DetectLabels", "UnknownOperationException"),
    ({"X-Amz-Target": "DynamoDB_20120810.ListTables"}, None, "UnknownOperationException"),
    ({"X-Amz-Target": "RekognitionService."}, None, "UnknownOperationException"),
])
def test_what_is_not_a_rekognition_operation(daemon: Daemon, enrolled: str, headers: dict[str, str],
                                             operation: str | None, code: str) -> None:
    before = snapshot(daemon)
    reply = daemon.post(operation, {"CollectionId": "fuzz"}, headers=headers)
    assert (reply.status, reply.code) == (400, code)
    assert snapshot(daemon) == before


def test_other_paths_and_methods_get_aws_style_errors(daemon: Daemon) -> None:
    for method, path, status in (("GET", "/", 405), ("POST", "/2016-06-27/collections", 404), ("PUT", "/", 405)):
        reply = daemon.request(method, path)
        assert (reply.status, reply.code) == (status, "UnknownOperationException")


def test_declared_oversized_body_is_refused_unread(daemon: Daemon) -> None:
    """Content-Length over the limit: refused from the headers alone (the client never sends the body)."""
    with _connect(daemon) as sock:
        sock.sendall(_head(daemon, f"Content-Length: {MAX_BODY + 1}"))
        status, body = _response(sock)
    assert status == 413 and json.loads(body)["__type"] == "RequestEntityTooLargeException"


def test_streamed_body_is_cut_off_at_the_limit(daemon: Daemon) -> None:
    """A chunked body declares no length: reading stops as it crosses the limit."""
    chunk = b"x" * (256 * 1024)
    with _connect(daemon) as sock:
        sock.sendall(_head(daemon, "Transfer-Encoding: chunked"))
        sent = 0
        while not select.select([sock], [], [], 0.05)[0]:
            assert sent <= 2 * MAX_BODY, "the daemon read past twice its limit"
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        status, body = _response(sock)
    assert status == 413 and json.loads(body)["__type"] == "RequestEntityTooLargeException"
    assert sent > MAX_BODY


def _connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(daemon.url.rsplit(":", 1)[1])), timeout=30)


def _head(daemon: Daemon, framing: str) -> bytes:
    """Request headers, signed for an empty body (the limit is checked before the signature)."""
    headers = daemon.signed_headers("IndexFaces", b"")
    lines = [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    return ("POST / HTTP/1.1\r\n" + "\r\n".join([*lines, framing]) + "\r\n\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    found = [line.split(":", 1)[1] for line in head.split("\r\n") if line.startswith("content-length:")]
    return int(found[0]) if found else 0
