"""SigV4 verification of incoming requests, and what each key's scope may call.

The expected signature is computed by botocore's own `SigV4Auth` over an `AWSRequest` rebuilt from
the request as received (method, raw path, query, the headers the client says it signed, the body)
at the client's timestamp, so the canonicalisation is exactly the one the clients use. Everything
that needs no body (the Authorization header, the key, the date, the token) is checked first, by
`begin`, so a request without a valid key is refused before its body is read.

Errors are the ones AWS's front end sends, worded as AWS words them, so clients print familiar text.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from edge import errors
from edge.config import ServerSettings
from edge.server.credentials import AccessKey

SERVICE = "rekognition"
ALGORITHM = "AWS4-HMAC-SHA256"
#: Headers a signature must cover: without x-amz-target, a captured DescribeCollection could be
#: replayed as DeleteCollection (same body); without x-amz-date, replayed forever.
REQUIRED_SIGNED = ("host", "x-amz-date", "x-amz-target")
INVALID_TOKEN = "The security token included in the request is invalid."
SIGNATURE_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your "
                      "AWS Secret Access Key and signing method. Consult the service documentation for details.")


@dataclass(frozen=True)
class HttpRequest:
    """What the signature covers, as received: raw path and query, headers in order with lower-case names."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    client_host: str | None

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any]) -> HttpRequest:
        client = scope.get("client")
        return cls(method=scope["method"], path=scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
                   query=scope.get("query_string", b"").decode("latin-1"),
                   headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
                   client_host=client[0] if client else None)

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def header(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None


#: Operations that read no collection's data, so a key limited to some collections may still call them.
WITHOUT_COLLECTION = frozenset({"DetectFaces", "CompareFaces"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id and what it may do (None: anything), or None for an unsigned loopback
    client (admin)."""

    access_key_id: str | None
    operations: frozenset[str] | None = None
    collections: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return self.operations is None and self.collections is None

    def authorize(self, operation: str) -> None:
        """Refuse an operation outside the key's scope, before the body is even parsed."""
        if self.operations is not None and operation not in self.operations:
            raise errors.AccessDeniedException(
                f"User: {self.access_key_id} is not authorized to perform: rekognition:{operation}")

    def authorize_collection(self, operation: str, collection_id: object) -> None:
        """Refuse a collection outside the key's scope, before anything is read or changed.

        `collection_id` is the request's CollectionId as sent (not yet validated): anything but one of
        the key's collections is refused for a key limited to some.
        """
        if self.collections is None or operation in WITHOUT_COLLECTION:
            return
        if collection_id not in self.collections:
            resource = f"collection/{collection_id}" if isinstance(collection_id, str) else "collection/*"
            raise errors.AccessDeniedException(
                f"User: {self.access_key_id} is not authorized to perform: rekognition:{operation} "
                f"on resource: {resource}")


@dataclass(frozen=True)
class Claim:
    """A request whose header checks passed; `verify` checks its signature over the body, and its date
    again: a body trickled in for minutes must not carry a signature past its lifetime."""

    request: HttpRequest
    key: AccessKey | None
    timestamp: str = ""
    region: str = ""
    signed_headers: tuple[str, ...] = ()
    signature: str = ""
    authenticator: Authenticator | None = None

    def verify(self, body: bytes) -> Principal:
        if self.key is None:
            return Principal(None)
        if self.authenticator is not None:
            self.authenticator.check_date(self.timestamp, self.timestamp[:8])
        declared = self.request.header("x-amz-content-sha256")
        if "x-amz-content-sha256" in self.signed_headers and declared != hashlib.sha256(body).hexdigest():
            # Also refuses UNSIGNED-PAYLOAD: the body is always part of what is signed.
            raise errors.InvalidSignatureException(
                "The provided 'x-amz-content-sha256' header does not match what was computed.")
        # Only the URL's path and query enter the canonical request (Host comes from the signed headers);
        # http:// makes botocore hash the payload, as it always must be here.
        url = f"http://edge-face{self.request.path}" + (f"?{self.request.query}" if self.request.query else "")
        aws_request = AWSRequest(method=self.request.method, url=url, data=body)
        for name in self.signed_headers:
            for value in self.request.values(name):
                aws_request.headers[name] = value  # HTTPHeaders appends: repeated headers stay repeated
        aws_request.context["timestamp"] = self.timestamp
        signer = _ClientChosenHeaders(
            Credentials(self.key.access_key_id, self.key.secret_access_key), SERVICE, self.region)
        expected = signer.signature(signer.string_to_sign(aws_request, signer.canonical_request(aws_request)),
                                    aws_request)
        if not hmac.compare_digest(expected.encode(), self.signature.encode()):
            raise errors.InvalidSignatureException(SIGNATURE_MISMATCH)
        return Principal(self.key.access_key_id, self.key.operations, self.key.collections)


class Keys(Protocol):
    """The live keys by access key id (a `KeyStore`, which follows its file, or a plain dict)."""

    def get(self, access_key_id: str, /) -> AccessKey | None: ...


class Authenticator:
    """Checks requests against the daemon's keys; `clock` is injectable so expiry can be tested."""

    def __init__(self, keys: Keys, settings: ServerSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self._settings = settings
        self._clock = clock

    def begin(self, request: HttpRequest, required: tuple[str, ...] = REQUIRED_SIGNED) -> Claim:
        """Every check that needs no body: header syntax, known key, token, date, scope, signed headers
        (`required`: a GET of the metrics has no target to sign)."""
        authorization = request.header("authorization")
        if authorization is None:
            if self._settings.allow_unsigned and is_loopback(request.client_host):
                return Claim(request, None)
            raise errors.MissingAuthenticationTokenException("Missing Authentication Token")
        algorithm, _, rest = authorization.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise errors.IncompleteSignatureException(f"Unsupported AWS 'algorithm': '{algorithm}'")
        fields = dict(part.strip().partition("=")[::2] for part in rest.split(","))
        missing = [f"Authorization header requires '{name}' parameter."
                   for name in ("Credential", "Signature", "SignedHeaders") if not fields.get(name)]
        timestamp = request.header("x-amz-date")
        if timestamp is None:
            missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        if missing:
            raise errors.IncompleteSignatureException(" ".join(missing))
        assert timestamp is not None
        key_id, date, region, service, terminator = (fields["Credential"].split("/") + [""] * 5)[:5]
        key = self._keys.get(key_id)
        token = request.header("x-amz-security-token")
        if key is None or (token is not None and not self._settings.allow_session_tokens):
            raise errors.UnrecognizedClientException(INVALID_TOKEN)
        self.check_date(timestamp, date)
        if service != SERVICE:
            raise errors.InvalidSignatureException(f"Credential should be scoped to correct service: '{SERVICE}'.")
        if terminator != "aws4_request" or not region:
            raise errors.IncompleteSignatureException(
                f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'.")
        signed = tuple(fields["SignedHeaders"].lower().split(";"))
        for name in required + (("x-amz-security-token",) if token is not None else ()):
            if name not in signed:
                raise errors.IncompleteSignatureException(
                    f"'{name}' must be a 'SignedHeader' in the AWS Authorization.")
        return Claim(request, key, timestamp, region, signed, fields["Signature"], self)

    def check_date(self, timestamp: str, scope_date: str) -> None:
        """X-Amz-Date must parse, match the credential scope and lie within the allowed clock skew."""
        try:
            if len(timestamp) != len("20240101T000000Z"):
                raise ValueError(timestamp)
            signed_at = datetime.strptime(timestamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
        except ValueError:
            raise errors.IncompleteSignatureException(
                f"Date must be in ISO-8601 'basic format'. Got '{timestamp}'.") from None
        if scope_date != timestamp[:8]:
            raise errors.InvalidSignatureException(
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{scope_date}' != '{timestamp[:8]}', from '{timestamp}'.")
        now = datetime.fromtimestamp(self._clock(), UTC)
        skew = timedelta(seconds=self._settings.clock_skew_s)
        minutes = f"{self._settings.clock_skew_s / 60:g} min."
        if signed_at < now - skew:
            raise errors.InvalidSignatureException(
                f"Signature expired: {timestamp} is now earlier than {_stamp(now - skew)} ({_stamp(now)} - {minutes})")
        if signed_at > now + skew:
            raise errors.InvalidSignatureException(
                f"Signature not yet current: {timestamp} is still later than {_stamp(now + skew)} "
                f"({_stamp(now)} + {minutes})")


class _ClientChosenHeaders(SigV4Auth):
    """botocore's SigV4 over exactly the headers the client signed (botocore picks its own set when signing)."""

    def headers_to_sign(self, request: AWSRequest) -> Any:
        return request.headers


def _stamp(moment: datetime) -> str:
    return moment.strftime(SIGV4_TIMESTAMP)


def key_id(request: HttpRequest) -> str:
    """The access key id a request claims, for the log of failed logins ("-" if none, "?" if malformed)."""
    authorization = request.header("authorization")
    if authorization is None:
        return "-"
    found = re.search(r"Credential=([A-Za-z0-9]{1,128})/", authorization)
    return found.group(1) if found else "?"


class HostCheck:
    """The Host names a request may be signed for: a signature made for AWS itself or for another device
    must not be replayable here. By default the device's own names: the address the client connected to,
    the listen address, the host name (with `.local`, mDNS), its FQDN, `localhost` on loopback, and the
    names and addresses in the TLS certificate; `server.allowed_hosts` replaces them."""

    def __init__(self, settings: ServerSettings) -> None:
        self._configured = settings.allowed_hosts is not None
        names = set(settings.allowed_hosts or ())
        if not self._configured:
            hostname = socket.gethostname()
            names |= {settings.host, hostname, f"{hostname}.local", socket.getfqdn()}
            names |= certificate_names(settings.tls_cert) if settings.tls_cert else set()
        self._names = {_normal(name) for name in names if name}

    def allows(self, host_header: str | None, local_address: str | None) -> bool:
        if host_header is None:
            return False
        host = _normal(_strip_port(host_header))
        if host in self._names:
            return True
        if self._configured:
            return False
        return host == _normal(local_address or "") or (host == "localhost" and is_loopback(local_address))


def certificate_names(path: Path) -> set[str]:
    """The DNS names and IP addresses a PEM certificate is valid for (subjectAltName, else its CN)."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError):
        return set()
    names = {value for kind, value in decoded.get("subjectAltName", ()) if kind in ("DNS", "IP Address")}
    if not names:
        names = {value for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName"}
    return names


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [::1]:8080
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _normal(host: str) -> str:
    """Lower case without a trailing dot; IP addresses in their canonical spelling."""
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def is_loopback(host: str | None) -> bool:
    """Whether an address (or `localhost`) is this machine: plain HTTP and unsigned access stay there."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
