"""The daemon's configuration (`server:` in the YAML file, `EDGE_FACE_SERVER__...` in the environment).

Kept apart from `edge.server.app` so `edge.config` can import it without pulling in FastAPI.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The one fixed port clients are told about (`--endpoint-url http://device:8080`).
DEFAULT_PORT = 8080


class ServerSettings(BaseModel):
    """Where the daemon listens, what it accepts and how much work it takes on at once."""

    model_config = ConfigDict(extra="forbid")

    #: Loopback by default: face images must not cross a LAN in clear text (configure TLS first).
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    #: A 5 MB image is ~7 MB of base64 JSON; up to this, oversized images reach the operations'
    #: validation (ValidationException); beyond it the body is refused unread.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    #: Image operations run on this many threads, each with its own pipeline; None: one per CPU.
    pool_size: int | None = Field(default=None, ge=1, le=64)
    #: Image requests that may wait for a free thread; beyond, ThrottlingException (clients back off).
    queue_size: int = Field(default=32, ge=0)
    #: PEM certificate (chain) and key: with both the daemon serves HTTPS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Accept requests without a signature (admin rights), and only from loopback clients.
    allow_unsigned: bool = False
    #: Accept signed requests that carry X-Amz-Security-Token (the token itself is not checked:
    #: there is no STS on the device, only the long-term key's signature is).
    allow_session_tokens: bool = False
    #: How far X-Amz-Date may be from the device's clock, as AWS allows.
    clock_skew_s: int = Field(default=300, ge=1)
    #: How long in-flight requests may take to finish on SIGTERM before they are cut off.
    shutdown_timeout_s: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("server.tls_cert and server.tls_key must be set together")
        return self
