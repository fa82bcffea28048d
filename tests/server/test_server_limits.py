"""A daemon configured tight: connections that never finish (deadlines, the connection cap, the file limit),
and who may read its metrics."""

from __future__ import annotations

import json
import resource
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from server_support import REGION, Daemon, running_daemon

#: Short deadlines so that the tests wait seconds, not minutes; a cap small enough to reach; metrics only
#: for admin signatures, with collection names.
LIMITS = {"EDGE_FACE_SERVER__HEADER_TIMEOUT_S": "1", "EDGE_FACE_SERVER__BODY_TIMEOUT_S": "4",
          "EDGE_FACE_SERVER__CLOCK_SKEW_S": "2", "EDGE_FACE_SERVER__MAX_CONNECTIONS": "6",
          "EDGE_FACE_SERVER__METRICS_ACCESS": "signed", "EDGE_FACE_SERVER__METRICS_COLLECTION_NAMES": "true"}
#: The soft and hard file limit most Linux systems give a process that nobody configured.
DEFAULT_NOFILE = 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("limits") / "state", env=LIMITS) as running:
        yield running


def _connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(daemon.url.rsplit(":", 1)[1])), timeout=10)


def _head(daemon: Daemon, operation: str, body: bytes) -> bytes:
    """A request's head as botocore signs it (now) for `body`."""
    headers = daemon.signed_headers(operation, body)
    return ("POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of the response, read until the server closes (every answer here closes)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        _answer(sock)
    except TimeoutError:
        return False
    return True


def test_a_connection_that_never_completes_its_headers_is_closed(daemon: Daemon) -> None:
    with _connect(daemon) as silent, _connect(daemon) as partial:
        partial.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert _closed_within(silent, 5) and _closed_within(partial, 5)


def test_a_body_trickled_past_its_deadline_is_refused(daemon: Daemon) -> None:
    body = json.dumps({"CollectionIds": "x" * 40}).encode()
    with _connect(daemon) as sock:
        sock.sendall(_head(daemon, "ListCollections", body))
        started = time.monotonic()
        for byte in body:
            sock.sendall(bytes([byte]))
            if select_readable(sock, 0.5):
                break
        status, answer = _answer(sock)
    assert status == 408 and json.loads(answer)["__type"] == "RequestTimeoutException"
    assert time.monotonic() - started < 10


def test_the_signature_date_is_checked_when_the_body_has_arrived(daemon: Daemon) -> None:
    """Signed now, finished after the allowed skew (2 s here): expired, as if it had been sent late."""
    body = b"{}"
    with _connect(daemon) as sock:
        sock.sendall(_head(daemon, "ListCollections", body) + body[:1])
        time.sleep(2.5)
        sock.sendall(body[1:])
        status, answer = _answer_one(sock)
    assert status == 400 and json.loads(answer)["__type"] == "InvalidSignatureException"
    assert json.loads(answer)["message"].startswith("Signature expired")


def test_beyond_the_cap_idle_connections_make_room_and_busy_ones_refuse(daemon: Daemon) -> None:
    """max_connections 6: idle connections are closed to let a newcomer in; when every connection is in
    the middle of a request, the newcomer gets 503 at once (clients retry it)."""
    with ExitStack() as stack:
        idle = [stack.enter_context(_connect(daemon)) for _ in range(10)]
        assert daemon.request("GET", "/healthz").status == 200
        assert sum(_closed_within(sock, 0.5) for sock in idle) >= 5  # the oldest were closed to make room
    with ExitStack() as stack:
        busy = [stack.enter_context(_connect(daemon)) for _ in range(6)]
        for sock in busy:  # a signed head and half the body: a request in progress
            sock.sendall(_head(daemon, "ListCollections", b"{}") + b"{")
        time.sleep(0.3)
        reply = daemon.request("GET", "/healthz")
        assert reply.status == 503 and reply.json["__type"] == "ServiceUnavailableException"
    assert daemon.request("GET", "/healthz").status == 200


def test_metrics_and_readiness_detail_only_for_admin_signatures_when_configured(daemon: Daemon) -> None:
    """metrics_access: signed; /healthz stays open, /readyz says only its status to the unsigned."""
    daemon.client().create_collection(CollectionId="lobby")
    assert daemon.request("GET", "/healthz").status == 200
    refused = daemon.request("GET", "/metrics")
    assert (refused.status, refused.code) == (403, "AccessDeniedException")
    assert daemon.request("GET", "/readyz").json == {"status": "ready"}
    for profile, status in (("kiosk", 403), ("admin", 200)):
        key = daemon.key(profile)
        request = AWSRequest("GET", daemon.url + "/metrics")
        SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), "rekognition", REGION).add_auth(request)
        reply = daemon.request("GET", "/metrics", headers={"Host": urlsplit(daemon.url).netloc,
                                                           **request.prepare().headers})
        assert reply.status == status, profile
    assert 'edge_face_collection_faces{collection="lobby"} 0.0' in reply.body.decode()


@pytest.mark.slow
def test_idle_sockets_beyond_the_file_limit_leave_new_clients_served(tmp_path: Path) -> None:
    """1,100 idle connections to a daemon with the default 1,024-file limit: /healthz and boto3 still
    answer, and the log does not fill with accept() tracebacks."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"this test needs 1,300 files of its own; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))

    def default_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (DEFAULT_NOFILE, DEFAULT_NOFILE))

    with running_daemon(tmp_path / "state", preexec=default_limit) as daemon, ExitStack() as stack:
        logged = daemon.log.stat().st_size
        for _ in range(1100):
            stack.enter_context(_connect(daemon))
        time.sleep(1)
        started = time.monotonic()
        assert daemon.request("GET", "/healthz").status == 200
        assert daemon.client().list_collections()["CollectionIds"] == []
        assert time.monotonic() - started < 10
        time.sleep(1)
        grown = daemon.log.read_bytes()[logged:]
        assert len(grown) < 4096 and b"Traceback" not in grown, grown[-2000:]


def _answer_one(sock: socket.socket) -> tuple[int, bytes]:
    """One response with a Content-Length body, on a connection the server may keep open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def select_readable(sock: socket.socket, seconds: float) -> bool:
    return bool(select.select([sock], [], [], seconds)[0])
