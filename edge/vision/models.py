"""The model catalog: the build's manifest, with every artifact's sha256 checked at load.

Artifacts are built by `models/build.py` into a cache directory (never into git); a file
whose hash differs from the manifest is refused, never run.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.similarity import SimilarityCalibration


class ModelError(RuntimeError):
    """A model is missing or does not match its manifest."""


@dataclass(frozen=True)
class Artifact:
    """One built model file and what the runtime must know to feed it."""

    name: str
    family: str
    kind: str
    precision: str
    version: str
    path: Path
    sha256: str
    input_size: tuple[int, int]
    embedding_size: int | None
    #: Cosine -> Similarity maps by flip mode ("single", "flip"); empty until calibrated.
    similarity: dict[str, SimilarityCalibration]
    #: Maps for a photo against the centroid of a user's n faces, by flip mode and n (n >= 2).
    user_similarity: dict[str, dict[int, SimilarityCalibration]]
    info: dict[str, Any] = field(repr=False, compare=False)


_verified: dict[tuple[Path, int, int], str] = {}
_verify_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelCatalog:
    """Reads `manifest.json` in the model directory and hands out verified artifacts."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        manifest = model_dir / "manifest.json"
        if not manifest.is_file():
            raise ModelError(f"no model manifest at {manifest}: build the models with `make models`")
        data = json.loads(manifest.read_text())
        self.artifacts = [self._artifact(entry) for entry in data["artifacts"]]

    def _artifact(self, entry: dict[str, Any]) -> Artifact:
        size = entry.get("input", {}).get("size", [0, 0])
        similarity = entry.get("similarity") or {}
        return Artifact(
            name=entry["name"], family=entry["family"], kind=entry["kind"],
            precision=entry.get("precision", "fp32"), version=entry.get("version", entry["family"]),
            path=self.model_dir / entry["file"], sha256=entry["sha256"],
            input_size=(int(size[0]), int(size[1])), embedding_size=entry.get("embedding_size"),
            similarity={mode: SimilarityCalibration.from_dict(similarity[mode])
                        for mode in ("single", "flip") if mode in similarity},
            user_similarity={mode: {int(n): SimilarityCalibration.from_dict(d) for n, d in maps.items()}
                             for mode, maps in similarity.get("users", {}).items()},
            info=entry,
        )

    def find(self, kind: str, family: str | None = None, precision: str | None = None) -> Artifact:
        for art in self.artifacts:
            if art.kind == kind and family in (None, art.family) and precision in (None, art.precision):
                return art
        have = sorted(f"{a.family}/{a.precision}" for a in self.artifacts if a.kind == kind)
        raise ModelError(f"no {kind} model {family or ''}/{precision or ''} in {self.model_dir}; built: {have}")

    def verified_path(self, art: Artifact) -> Path:
        """The artifact's path once its bytes match the manifest's sha256."""
        if not art.path.is_file():
            raise ModelError(f"model file {art.path} is missing: rebuild with `make models`")
        stat = art.path.stat()
        key = (art.path, stat.st_size, stat.st_mtime_ns)
        with _verify_lock:
            if _verified.get(key) != art.sha256:
                actual = sha256_file(art.path)
                if actual != art.sha256:
                    raise ModelError(f"model file {art.path} has sha256 {actual}, the manifest says "
                                     f"{art.sha256}: refusing to load it; rebuild with `make models`")
                _verified[key] = actual
        return art.path
