"""Configuration: embedded defaults, a YAML file, then `EDGE_FACE_...` environment variables.

Unknown keys are an error (`extra="forbid"`), so a typo in a fleet's config fails loudly
at start-up instead of silently running on a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from edge.server.settings import ServerSettings


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
    #: Embed the mirrored chip too and average the two: TAR at FMR 1e-5 rises by about 8 points
    #: for a second inference per face. "auto" does it where the embedder runs quantised or on
    #: an accelerator (a few ms) and not for fp32 on the CPU, which keeps every CPU 10x faster
    #: than face_recognition.
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


class StoreSettings(BaseModel):
    """How collections are indexed (edge/store): exact search for small ones, HNSW above."""

    model_config = ConfigDict(extra="forbid")

    #: Collections with at most this many faces are searched exactly; larger ones use HNSW.
    exact_max: int = Field(default=20_000, ge=0)
    #: Graph degree: more links per face find the nearest of near-identical faces with a narrower
    #: (faster) search, for more memory and a slower build (bench/store_scale.py, README).
    hnsw_m: int = Field(default=32, ge=2, le=128)
    hnsw_ef_construction: int = Field(default=200, ge=8)
    #: Search breadth; unset, it grows with the collection (edge.store.index.EF_BY_SIZE) so that
    #: recall stays put as the collection grows. A number fixes it for every size.
    hnsw_ef: int | None = Field(default=None, ge=8)
    #: How often changed indexes are saved and the write-ahead log truncated.
    checkpoint_interval_s: float = Field(default=300.0, gt=0)


class Settings(BaseSettings):
    """Everything the daemon and the CLI read at start-up."""

    model_config = SettingsConfigDict(env_prefix="EDGE_FACE_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

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
