"""A real daemon in a subprocess, and the real clients pointed at it: the aws CLI, boto3 and raw signed HTTP."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from edge.server.credentials import CREDENTIALS_FILE, AccessKey, KeyStore

REPO = Path(__file__).resolve().parents[2]
AWS = Path(sys.executable).parent / "aws"
REGION = "us-east-1"
CONTENT_TYPE = "application/x-amz-json-1.1"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Reply:
    """A raw HTTP answer, with its JSON body parsed when it has one."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        return self.json.get("__type") if self.status >= 300 else None


@dataclass
class Daemon:
    """One `edge-face serve` process on a free port of 127.0.0.1, and its state directory."""

    state_dir: Path
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    ca_bundle: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def credentials(self) -> Path:
        return self.state_dir / CREDENTIALS_FILE

    def key(self, profile: str = "admin") -> AccessKey:
        return next(k for k in KeyStore(self.state_dir).all() if k.name == profile and k.revoked_at is None)

    def aws(self, *args: str, profile: str | None = "admin", credentials: Path | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`aws [--profile P] --endpoint-url URL rekognition ARGS`, as a user types it."""
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        cli_env.update(AWS_SHARED_CREDENTIALS_FILE=str(credentials or self.credentials), AWS_CONFIG_FILE=os.devnull,
                       AWS_PAGER="", AWS_EC2_METADATA_DISABLED="true", **(env or {}))
        command = [str(AWS), "--region", REGION, "--endpoint-url", self.url, "--output", "json"]
        if profile is not None:
            command += ["--profile", profile]
        if self.ca_bundle is not None:
            command += ["--ca-bundle", str(self.ca_bundle)]
        return subprocess.run([*command, "rekognition", *args], capture_output=True, text=True, env=cli_env,
                              timeout=timeout, check=False)

    def aws_json(self, *args: str, profile: str = "admin") -> Any:
        done = self.aws(*args, profile=profile)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def client(self, profile: str = "admin", **config: Any) -> Any:
        """A boto3 client reading this daemon's credentials file, with retries off unless asked (cached:
        making one costs a quarter of a second)."""
        if not config and profile in self._clients:
            return self._clients[profile]
        session = botocore.session.Session()
        session.set_config_variable("credentials_file", str(self.credentials))
        session.set_config_variable("config_file", os.devnull)
        cached = not config
        config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        client = boto3.Session(botocore_session=session, profile_name=profile).client(
            "rekognition", region_name=REGION, endpoint_url=self.url, config=Config(**config),
            verify=str(self.ca_bundle) if self.ca_bundle else None)
        if cached:
            self._clients[profile] = client
        return client

    def post(self, operation: str | None, body: bytes | Any, *, profile: str | None = "admin",
             headers: Mapping[str, str] | None = None) -> Reply:
        """POST / signed with botocore's SigV4 over exactly these bytes (unsigned when profile is None)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.request("POST", "/", data, self.signed_headers(operation, data, profile=profile, headers=headers))

    def signed_headers(self, operation: str | None, data: bytes, *, profile: str | None = "admin",
                       headers: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers botocore sends for this body: Host, Content-Type, X-Amz-Target, X-Amz-Date, Authorization."""
        request = AWSRequest("POST", self.url + "/", data=data, headers={"Content-Type": CONTENT_TYPE})
        if operation is not None:
            request.headers["X-Amz-Target"] = f"RekognitionService.{operation}"
        for name, value in (headers or {}).items():
            del request.headers[name]
            request.headers[name] = value
        if profile is not None:
            key = self.key(profile)
            SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), "rekognition", REGION).add_auth(request)
        return {"Host": urlsplit(self.url).netloc, **request.prepare().headers}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        if self.ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(self.ca_bundle))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, context=context, timeout=60)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            conn.request(method, path, body, dict(headers or {}))
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as systemd stops it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_daemon(state_dir: Path, *, env: Mapping[str, str] | None = None, ca_bundle: Path | None = None,
                 preexec: Callable[[], None] | None = None, port: int | None = None,
                 wrapper: Sequence[str] = ()) -> Daemon:
    """Start `edge-face serve` (on `port`, or a free one; under `wrapper`, a command such as strace) and wait until
    /readyz answers 200; `preexec` runs in the child before it (a umask or a file limit, as a service manager sets
    them)."""
    port = port or free_port()
    log = state_dir.with_name(state_dir.name + f"-{port}.log")
    daemon_env = {**os.environ, "EDGE_FACE_SERVER__SHUTDOWN_TIMEOUT_S": "20", **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "edge.cli", "serve", "--state-dir", str(state_dir), "--port", str(port)],
            cwd=REPO, env=daemon_env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
    scheme = "https" if ca_bundle else "http"
    daemon = Daemon(state_dir, f"{scheme}://127.0.0.1:{port}", process, log, ca_bundle, dict(env or {}))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if daemon.request("GET", "/readyz").status == 200:
                return daemon
        except OSError:
            pass
        time.sleep(0.1)
    daemon.stop()
    raise RuntimeError(f"daemon not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@contextmanager
def running_daemon(state_dir: Path, **options: Any) -> Iterator[Daemon]:
    daemon = start_daemon(state_dir, **options)
    try:
        yield daemon
    finally:
        daemon.stop()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the SAN is what clients check), made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the TLS tests")
    cert, key = directory / "device.crt", directory / "device.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def error_line(code: str, operation: str) -> str:
    """The line the CLI prints for a service error (and exits 255)."""
    return f"An error occurred ({code}) when calling the {operation} operation"
