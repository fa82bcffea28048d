"""SigV4 verification in-process: requests signed by botocore as the clients sign them, then tampered with."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from edge import errors
from edge.config import ServerSettings
from edge.server.auth import Authenticator, HttpRequest, Principal, is_loopback
from edge.server.credentials import SCOPES, AccessKey

ADMIN = AccessKey(name="admin", access_key_id="AKIAADMINADMINADMIN0", secret_access_key="a" * 40)
KIOSK = AccessKey(name="kiosk", access_key_id="AKIAKIOSKKIOSKKIOSK0", secret_access_key="k" * 40,
                  operations=SCOPES["read-only"])
KEYS = {k.access_key_id: k for k in (ADMIN, KIOSK)}
NOW = datetime.datetime(2026, 5, 1, 12, 0, 0)
SCOPE = "rekognition/aws4_request"
REGION = "eu-west-1"
BODY = json.dumps({"CollectionId": "door"}).encode()


def signed(*, key: AccessKey = ADMIN, secret: str | None = None, operation: str | None = "DescribeCollection",
           body: bytes = BODY, at: datetime.datetime = NOW, token: str | None = None, service: str = "rekognition",
           region: str = REGION, headers: dict[str, str] | None = None,
           tamper: Callable[[dict[str, str]], object] | None = None, client: str = "127.0.0.1") -> HttpRequest:
    """What the daemon receives from botocore signing this request (then `tamper` edits the headers)."""
    request = AWSRequest("POST", "http://127.0.0.1:8080/", data=body,
                         headers={"Content-Type": "application/x-amz-json-1.1", **(headers or {})})
    if operation is not None:
        request.headers["X-Amz-Target"] = f"RekognitionService.{operation}"
    credentials = Credentials(key.access_key_id, secret or key.secret_access_key, token)
    with mock.patch("botocore.auth.get_current_datetime", return_value=at):
        SigV4Auth(credentials, service, region).add_auth(request)
    sent = {k.lower(): v for k, v in request.prepare().headers.items()}
    sent["host"] = "127.0.0.1:8080"
    if tamper is not None:
        tamper(sent)
    return HttpRequest("POST", "/", "", list(sent.items()), client)


def authenticator(**settings: object) -> Authenticator:
    now = NOW.replace(tzinfo=datetime.UTC).timestamp()
    return Authenticator(KEYS, ServerSettings.model_validate(settings), clock=lambda: now)


def verify(request: HttpRequest, body: bytes = BODY, **settings: object) -> Principal:
    return authenticator(**settings).begin(request).verify(body)


def refused(request: HttpRequest, body: bytes = BODY, **settings: object) -> errors.RekognitionError:
    with pytest.raises(errors.RekognitionError) as raised:
        verify(request, body, **settings)
    return raised.value


def test_botocore_signatures_verify_with_the_keys_scope() -> None:
    assert verify(signed()) == Principal(ADMIN.access_key_id)
    kiosk = verify(signed(key=KIOSK))
    assert kiosk == Principal(KIOSK.access_key_id, SCOPES["read-only"])
    kiosk.authorize("SearchFacesByImage")
    with pytest.raises(errors.AccessDeniedException):
        kiosk.authorize("IndexFaces")


def test_any_region_and_a_clock_within_five_minutes() -> None:
    for region in ("us-east-1", "ap-southeast-2", "edge"):
        verify(signed(region=region))
    for minutes in (-4, 4):
        verify(signed(at=NOW + datetime.timedelta(minutes=minutes)))


def test_tampering_is_an_invalid_signature() -> None:
    def retarget(headers: dict[str, str]) -> None:
        headers["x-amz-target"] = "RekognitionService.DeleteCollection"  # same body, other operation

    for request, body in ((signed(secret="b" * 40), BODY), (signed(), BODY.replace(b"door", b"roof")),
                          (signed(tamper=retarget), BODY)):
        error = refused(request, body)
        assert isinstance(error, errors.InvalidSignatureException)
        assert error.message.startswith("The request signature we calculated does not match")


def test_unknown_key_and_session_tokens() -> None:
    stranger = AccessKey(name="x", access_key_id="AKIASTRANGERSTRANGER", secret_access_key="s" * 40)
    for request in (signed(key=stranger), signed(token="session-token")):
        error = refused(request)
        assert isinstance(error, errors.UnrecognizedClientException)
        assert error.message == "The security token included in the request is invalid."
    assert verify(signed(token="session-token"), allow_session_tokens=True).is_admin


def test_expired_and_future_dates() -> None:
    expired = refused(signed(at=NOW - datetime.timedelta(minutes=10)))
    assert isinstance(expired, errors.InvalidSignatureException)
    assert expired.message == ("Signature expired: 20260501T115000Z is now earlier than 20260501T115500Z "
                               "(20260501T120000Z - 5 min.)")
    future = refused(signed(at=NOW + datetime.timedelta(minutes=10)))
    assert future.message.startswith("Signature not yet current: 20260501T121000Z is still later than")


def test_missing_and_malformed_authorization() -> None:
    def drop(name: str) -> Callable[[dict[str, str]], object]:
        return lambda headers: headers.pop(name)

    def replace(name: str, value: str) -> Callable[[dict[str, str]], object]:
        return lambda headers: headers.__setitem__(name, value)

    assert isinstance(refused(signed(tamper=drop("authorization"))), errors.MissingAuthenticationTokenException)
    incomplete = [
        # no SignedHeaders, no Signature
        replace("authorization", f"AWS4-HMAC-SHA256 Credential={ADMIN.access_key_id}/20260501/x/{SCOPE}"),
        replace("authorization", "Bearer abc"),
        replace("authorization", ""),
        drop("x-amz-date"),
        replace("x-amz-date", "2026-05-01T12:00:00Z"),
    ]
    for tamper in incomplete:
        assert isinstance(refused(signed(tamper=tamper)), errors.IncompleteSignatureException)
    wrong_service = refused(signed(service="s3"))
    assert wrong_service.message == "Credential should be scoped to correct service: 'rekognition'."


def test_the_target_must_be_signed() -> None:
    """A signature that leaves X-Amz-Target out would let a captured read be replayed as a delete."""
    def add_target(headers: dict[str, str]) -> None:
        headers["x-amz-target"] = "RekognitionService.DeleteCollection"

    error = refused(signed(operation=None, tamper=add_target))
    assert isinstance(error, errors.IncompleteSignatureException)
    assert error.message == "'x-amz-target' must be a 'SignedHeader' in the AWS Authorization."


def test_the_payload_is_always_signed() -> None:
    """A signed `x-amz-content-sha256: UNSIGNED-PAYLOAD` would leave the body open to change: refused."""
    request = signed(headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert isinstance(refused(request), errors.InvalidSignatureException)
    digest = hashlib.sha256(BODY).hexdigest()
    assert verify(signed(headers={"X-Amz-Content-SHA256": digest})).is_admin


def test_unsigned_requests_only_when_enabled_and_only_from_loopback() -> None:
    def unsigned(client: str) -> HttpRequest:
        return HttpRequest("POST", "/", "", [("host", "device:8080"), ("content-type", "application/x-amz-json-1.1")],
                           client)

    assert isinstance(refused(unsigned("127.0.0.1")), errors.MissingAuthenticationTokenException)
    for client in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert verify(unsigned(client), allow_unsigned=True) == Principal(None)
    for client in ("192.168.1.20", "10.0.0.1", "::ffff:10.0.0.1", "testclient"):
        assert isinstance(refused(unsigned(client), allow_unsigned=True), errors.MissingAuthenticationTokenException)
    assert is_loopback("localhost") and not is_loopback(None)


def test_the_headers_the_client_chose_to_sign() -> None:
    """Another SDK may sign headers botocore never signs (User-Agent); the daemon verifies the client's set."""
    class SignsUserAgent(SigV4Auth):
        def headers_to_sign(self, request: AWSRequest) -> Any:
            headers = super().headers_to_sign(request)
            headers["user-agent"] = request.headers["User-Agent"]
            return headers

    request = AWSRequest("POST", "http://127.0.0.1:8080/", data=BODY, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "RekognitionService.DescribeCollection",
        "User-Agent": "aws-sdk-other/1.0"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SignsUserAgent(Credentials(ADMIN.access_key_id, ADMIN.secret_access_key), "rekognition", REGION).add_auth(
            request)
    assert "user-agent" in request.headers["Authorization"]
    headers = [(k.lower(), v) for k, v in request.prepare().headers.items()] + [("host", "127.0.0.1:8080")]
    assert verify(HttpRequest("POST", "/", "", headers, "127.0.0.1")).is_admin
