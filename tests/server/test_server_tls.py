"""HTTPS with a device certificate, and unsigned access where it is explicitly allowed (loopback only)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
from botocore.exceptions import SSLError
from server_support import Daemon, make_certificate, running_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon serving HTTPS with a self-signed certificate for 127.0.0.1, unsigned requests allowed."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(root)
    env = {"EDGE_FACE_SERVER__TLS_CERT": str(cert), "EDGE_FACE_SERVER__TLS_KEY": str(key),
           "EDGE_FACE_SERVER__ALLOW_UNSIGNED": "true"}
    with running_daemon(root / "state", env=env, ca_bundle=cert) as running:
        yield running


def test_cli_with_ca_bundle_and_boto3_with_verify(daemon: Daemon) -> None:
    assert daemon.url.startswith("https://")
    created = daemon.aws_json("create-collection", "--collection-id", "lobby")
    assert created["StatusCode"] == 200
    assert daemon.client().describe_collection(CollectionId="lobby")["FaceCount"] == 0
    hint = f"--endpoint-url {daemon.url} --ca-bundle {daemon.ca_bundle} rekognition list-collections"
    assert hint in daemon.log.read_text()


def test_an_unknown_certificate_is_refused_by_the_clients(daemon: Daemon) -> None:
    untrusted = Daemon(daemon.state_dir, daemon.url, daemon.process, daemon.log)
    done = untrusted.aws("list-collections", env={"AWS_MAX_ATTEMPTS": "1"})  # the CLI retries SSL errors
    assert done.returncode == 255 and "SSL validation failed" in done.stderr
    with pytest.raises(SSLError):
        untrusted.client().list_collections()


def test_plain_http_gets_no_answer(daemon: Daemon) -> None:
    plain = Daemon(daemon.state_dir, daemon.url.replace("https://", "http://"), daemon.process, daemon.log)
    with pytest.raises((ConnectionError, OSError, ssl.SSLError)):
        plain.request("GET", "/healthz")


def test_unsigned_requests_from_loopback_when_allowed(daemon: Daemon) -> None:
    done = daemon.aws("list-collections", "--no-sign-request", profile=None)
    assert done.returncode == 0, done.stderr
    # Still signed requests are checked: a bad signature is not waved through as "unsigned".
    assert daemon.post("ListCollections", {}, profile="kiosk").status == 200
    forged = daemon.signed_headers("ListCollections", b"{}")
    forged["Authorization"] = forged["Authorization"].rsplit("Signature=", 1)[0] + "Signature=" + "0" * 64
    reply = daemon.request("POST", "/", b"{}", forged)
    assert reply.code == "InvalidSignatureException"
