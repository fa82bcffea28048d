"""Configuration: embedded defaults, a YAML file, then `EDGE_FACE_...` environment variables.

Unknown keys are an error (`extra="forbid"`), so a typo in a fleet's config fails loudly
at start-up instead of silently running on a default. This module imports nothing of `edge` and
holds the only copy of every default: every layer reads its section from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


def default_model_dir() -> Path:
    """Built models live in the user's cache: they are rebuilt from PyPI wheels, never committed."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edge-face" / "models"


class PipelineSettings(BaseModel):
    """How faces are found and embedded."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(default_factory=default_model_dir)
    #: Embedder family: dlib's ResNet (default) or FaceNet.
    embedder: Literal["dlib_resnet_v1", "facenet_casia"] = "dlib_resnet_v1"
    #: "auto" takes the precision that pays on the selected backend (fp32 on CPU).
    precision: Literal["auto", "fp32", "fp16", "int8-dynamic", "int8"] = "auto"
    #: Accelerator preference order; the first available one runs the embedder.
    backends: list[str] = ["edgetpu", "gpu", "cpu"]
    #: LiteRT threads per model; None means every core the process may use.
    threads: int | None = Field(default=None, ge=1, le=64)
    #: BlazeFace short range (faces within ~2 m, kiosk distance) or full range (group photos).
    detector: Literal["short", "full"] = "short"
    #: Detections below this BlazeFace score (0-1) are not faces.
    min_detection_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    #: FaceMesh's face-presence score (0-1) a detection must also reach, as in MediaPipe's
    #: FaceLandmarker: BlazeFace alone takes dog faces and textures for faces.
    min_face_presence: float = Field(default=0.5, ge=0.0, le=1.0)
    #: Embed the mirrored chip too and average the two: more true matches at low false-match
    #: rates for a second inference per face (README, "Accuracy"). "auto" does it where the
    #: embedder runs quantised or on an accelerator, where the second pass is cheap.
    flip_augment: Literal["auto", "on", "off"] = "auto"


def default_state_dir() -> Path:
    """Collections live in the user's data directory unless the daemon is given another."""
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "edge-face"


class ServiceSettings(BaseModel):
    """What the Rekognition operations report about themselves and where S3 images come from."""

    model_config = ConfigDict(extra="forbid")

    #: Region and account in ARNs; clients sign for any region.
    region: str = "us-east-1"
    account_id: str = Field(default="000000000000", pattern=r"^[0-9]{12}$")
    #: S3Object images are read from local directories: bucket name -> directory (kiosks drop
    #: snapshots on disk). An unmapped bucket or a missing key is InvalidS3ObjectException.
    buckets: dict[str, Path] = {}
    #: How long the answer to a ClientRequestToken is kept: a retry within it gets the same answer.
    request_token_ttl_s: float = Field(default=86400.0, gt=0)


class StoreSettings(BaseModel):
    """How collections are indexed (edge/store): exact search for small ones, HNSW above."""

    model_config = ConfigDict(extra="forbid")

    #: Collections with at most this many faces are searched exactly; larger ones use HNSW.
    exact_max: int = Field(default=20_000, ge=0)
    #: Graph degree: more links per face find the nearest of near-identical faces with a narrower
    #: (faster) search, for more memory and a slower build (bench/store_scale.py, README).
    hnsw_m: int = Field(default=32, ge=2, le=128)
    hnsw_ef_construction: int = Field(default=200, ge=8)
    #: Search breadth; unset, it grows with the collection (edge.store.index.auto_ef) so that
    #: recall stays put as the collection grows. A number fixes it for every size.
    hnsw_ef: int | None = Field(default=None, ge=8)
    #: How often changed indexes are saved and the write-ahead log truncated.
    checkpoint_interval_s: float = Field(default=300.0, gt=0)
    #: An HNSW index is rebuilt once this fraction of its slots holds deleted faces.
    compact_ratio: float = Field(default=0.25, gt=0, le=1)
    #: How long the access log keeps each search decision (pruned at every checkpoint).
    access_log_days: float = Field(default=30.0, gt=0)
    #: How long the change log keeps a row (a future sync reads it); rows that recovery still needs stay
    #: longer, and rows naming a deleted user or collection go at once.
    change_log_retention_s: float = Field(default=7 * 86400.0, ge=0)
    #: Disk space held in a file of zeros for erasures, released when a deletion finds the disk full;
    #: with less than this free, /readyz reports the store unwritable.
    reserve_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    #: Where collections live: SQLite in the state directory (a device, `make run`), or PostgreSQL (a central;
    #: several instances may share one database, each keeping its own vector index current from the log).
    backend: Literal["sqlite", "postgres"] = "sqlite"
    #: libpq connection string, e.g. "host=/var/run/postgresql dbname=edgeface user=edgeface".
    postgres_dsn: str | None = None
    postgres_pool_size: int = Field(default=8, ge=1, le=256)

    @model_validator(mode="after")
    def _postgres_dsn(self) -> StoreSettings:
        if self.backend == "postgres" and not self.postgres_dsn:
            raise ValueError("store.backend postgres needs store.postgres_dsn")
        return self


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
    #: Host names requests may be signed for; None: the device's own (listen and connected address, host
    #: name, name.local, FQDN, localhost on loopback, the TLS certificate's names).
    allowed_hosts: list[str] | None = None
    #: Who may read /metrics and /readyz's detail: loopback clients, or requests signed by an admin key.
    metrics_access: Literal["loopback", "signed"] = "loopback"
    #: Label face counts by collection id in /metrics (ids can name sites or customers).
    metrics_collection_names: bool = False
    #: Connections held at once. Beyond it the one idle longest (no request in progress) is closed to make
    #: room, or the newcomer gets 503 when all are busy. The unit's LimitNOFILE must exceed it.
    max_connections: int = Field(default=1024, ge=1)
    #: A connection must send a request's complete headers within this, from its start or its last answer.
    header_timeout_s: float = Field(default=10.0, gt=0)
    #: A request's body must arrive in full within this after its headers (a 7 MB image at 1 Mbit/s: 56 s).
    body_timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("server.tls_cert and server.tls_key must be set together")
        return self


class FeedSettings(BaseModel):
    """The central's side of fleet sync (edge/sync/publisher.py): how the signed feed is cut and kept fresh."""

    model_config = ConfigDict(extra="forbid")

    #: How long the feed's signed metadata (TUF timestamp, snapshot, targets) stays valid. A device
    #: refuses expired metadata and stops matching a synced collection once its last verified
    #: metadata expired: this is how long a device cut off from the central may keep serving, and so
    #: how long it may still match a person deleted at the central meanwhile. Re-signed at half-life.
    metadata_lifetime_s: float = Field(default=3 * 86400.0, ge=1)
    #: How often the central looks for new changes to publish (a device's poll also publishes at once).
    publish_interval_s: float = Field(default=2.0, gt=0)
    #: A new snapshot bundle is cut once the batches since the last one outweigh it (or this many bytes).
    compact_min_bytes: int = Field(default=4 * 1024 * 1024, ge=0)
    #: Snapshots of at least this many faces also ship an HNSW graph the central builds over them, so a
    #: joining device need not build its own (bench/sync.py measures both; README, "Central and devices").
    ship_index_min_faces: int = Field(default=20_000, ge=1)
    #: Where the feed's signing keys live: root (rotation only; keep it offline in production) and the
    #: online key the central signs with. Every central instance of one database reads the same ones.
    keys_dir: Path | None = None
    #: The central's devices file (access keys scoped to collections); default: state_dir/devices.json.
    devices_file: Path | None = None


class SyncSettings(BaseModel):
    """A device's side of fleet sync (edge/sync/applier.py): which collections it follows, from where."""

    model_config = ConfigDict(extra="forbid")

    #: The central's URL (http(s)://host:port); unset, the device syncs nothing.
    central_url: str | None = None
    #: The device's own access key at the central: it may read only its collections' feeds.
    access_key_id: str | None = None
    secret_access_key: str | None = None
    #: The collections this device follows; each is read-only here (enrol at the central).
    collections: list[str] = []
    #: The feed's trusted root metadata, provisioned with the device (`edge-face central add-device`).
    root: Path | None = None
    #: Seconds between syncs, spread by +-jitter (a fraction) so a fleet does not poll in step.
    interval_s: float = Field(default=30.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    #: After failures the interval doubles up to this.
    max_backoff_s: float = Field(default=600.0, gt=0)
    #: Per-request timeout against the central.
    timeout_s: float = Field(default=60.0, gt=0)
    #: CA bundle that signs the central's certificate (https).
    ca_bundle: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> SyncSettings:
        if self.central_url and not (self.access_key_id and self.secret_access_key and self.root):
            raise ValueError("sync.central_url needs sync.access_key_id, sync.secret_access_key and sync.root")
        return self


class Settings(BaseSettings):
    """Everything the daemon and the CLI read at start-up."""

    model_config = SettingsConfigDict(env_prefix="EDGE_FACE_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    #: "central" publishes every collection's signed feed to devices; "device" may follow one (sync).
    role: Literal["device", "central"] = "device"
    feed: FeedSettings = Field(default_factory=FeedSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[Any] = [init_settings, env_settings]
        config_file = os.environ.get("EDGE_FACE_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)
