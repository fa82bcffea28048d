"""The face pipeline: decode, detect, landmarks, align, quality and embed, timed per stage.

Bytes in, typed faces out: nothing here knows about collections, Rekognition's JSON or HTTP (the
operations layer shapes the result). The parts are passed in, so a test can run the pipeline with
small fakes; `FacePipeline.from_settings` loads the real models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

from edge.config import PipelineSettings
from edge.similarity import SimilarityCalibration
from edge.vision.detector import Detection, FaceDetector
from edge.vision.embedder import Embedder, FaceGeometry
from edge.vision.image import MAX_IMAGE_BYTES, DecodedImage, decode_image
from edge.vision.landmarks import FaceMesh
from edge.vision.models import ModelCatalog, ModelError
from edge.vision.quality import Pose, Quality, measure_quality, pose_from_mesh
from edge.vision.runtime import default_threads, select_backend

STAGES = ("decode", "detect", "landmarks", "align", "embed")


@dataclass
class Face:
    """A detected face with everything the operations need to report, filter and search it."""

    detection: Detection
    mesh: np.ndarray
    mesh_score: float
    chip: np.ndarray
    embedding: np.ndarray | None = None

    @cached_property
    def pose(self) -> Pose:
        """Measured when first asked for: a search with no quality filter reports neither pose nor quality."""
        return pose_from_mesh(self.mesh)

    @cached_property
    def quality(self) -> Quality:
        return measure_quality(self.chip)

    @property
    def confidence(self) -> float:
        """Detection confidence on Rekognition's 0-100 scale."""
        return round(100.0 * self.detection.score, 4)

    def vector(self) -> np.ndarray:
        """The embedding of a face the pipeline was asked to embed."""
        if self.embedding is None:
            raise ValueError("this face was not embedded")
        return self.embedding

    def box_side(self, image: DecodedImage) -> float:
        """The box's shorter side in the client's original pixels."""
        return float(min(self.detection.box[2], self.detection.box[3])) * image.scale


#: Which faces to embed, given the image and a face with everything but its embedding.
FaceSelector = Callable[[DecodedImage, Face], bool]


@dataclass
class Analysis:
    image: DecodedImage
    faces: list[Face]
    timings: dict[str, float] = field(default_factory=dict)


class Detector(Protocol):
    """Finds faces: boxes, scores and keypoints in working-image pixels, largest first."""

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...

    def close(self) -> None: ...


class Landmarker(Protocol):
    """468 FaceMesh points of one detected face and its face-presence score (0-1)."""

    def landmarks(self, rgb: np.ndarray, det: Detection) -> tuple[np.ndarray, float]: ...


class FaceEmbedder(Protocol):
    """Cuts a face's chip and turns it into a unit vector of one face model."""

    @property
    def version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def similarity(self) -> SimilarityCalibration | None: ...

    @property
    def user_similarity(self) -> dict[int, SimilarityCalibration]: ...

    def crop(self, rgb: np.ndarray, face: FaceGeometry) -> np.ndarray: ...

    def embed(self, chip: np.ndarray) -> np.ndarray: ...


class FacePipeline:
    """Runs its parts in order; `analyse` is safe to call from one thread at a time per pipeline."""

    def __init__(self, detector: Detector, mesh: Landmarker, embedder: FaceEmbedder, *,
                 min_face_presence: float, observe: Callable[[dict[str, float]], None] | None = None,
                 info: dict[str, str] | None = None) -> None:
        """`observe` receives every analysis' stage timings in seconds (the daemon's metrics); `info` says
        which models run where, for an operator (`edge-face status`)."""
        self.info = info or {}
        self.detector = detector
        self.mesh = mesh
        self.embedder = embedder
        self._min_face_presence = min_face_presence
        self._observe = observe

    @classmethod
    def from_settings(cls, settings: PipelineSettings, *,
                      observe: Callable[[dict[str, float]], None] | None = None) -> FacePipeline:
        """The production pipeline: verified models from the catalog on the preferred backend."""
        catalog = ModelCatalog(settings.model_dir)
        threads = settings.threads or default_threads()
        backend = select_backend(settings.backends)
        cpu = select_backend(["cpu"])
        detector = FaceDetector(catalog.verified_path(catalog.find("detector", f"blazeface_{settings.detector}")),
                                min_confidence=settings.min_detection_confidence)
        mesh = FaceMesh(catalog.verified_path(catalog.find("landmarks", "face_mesh")), backend=cpu, threads=threads)
        precision = backend.precision if settings.precision == "auto" else settings.precision
        try:
            artifact = catalog.find("embedder", settings.embedder, precision)
        except ModelError:
            if settings.precision != "auto":
                raise
            artifact = catalog.find("embedder", settings.embedder, "fp32")
            backend = cpu
        flip = settings.flip_augment == "on" or (
            settings.flip_augment == "auto" and not (backend.name == "cpu" and artifact.precision == "fp32"))
        embedder = Embedder(catalog, artifact, backend=backend, threads=threads, flip_augment=flip)
        info = {"embedder": artifact.name, "face_model_version": embedder.version, "precision": artifact.precision,
                "backend": backend.name, "flip_augment": "on" if flip else "off",
                "detector": f"blazeface_{settings.detector}", "threads": str(threads)}
        return cls(detector, mesh, embedder, min_face_presence=settings.min_face_presence, observe=observe,
                   info=info)

    @property
    def face_model_version(self) -> str:
        return self.embedder.version

    def analyse(self, data: bytes | DecodedImage, *, embed: bool | FaceSelector = True,
                max_faces: int | None = None, max_bytes: int = MAX_IMAGE_BYTES,
                largest_only: bool = False) -> Analysis:
        """Every face in the image, largest first, the first `max_faces` that `embed` selects embedded.

        `max_bytes` is the decode limit: 5 MB for request bytes, 15 MB for an S3 object. `largest_only`
        stops at the largest face (a search reports no other), sparing the landmarks of the rest.
        """
        timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)

        @contextmanager
        def stage(name: str) -> Iterator[None]:
            start = time.perf_counter()
            yield
            timings[name] += time.perf_counter() - start

        if isinstance(data, DecodedImage):
            image = data
        else:
            with stage("decode"):
                image = decode_image(data, max_bytes=max_bytes)
        with stage("detect"):
            detections = self.detector.detect(image.rgb)
        faces: list[Face] = []
        embedded = 0
        for det in detections:
            with stage("landmarks"):
                mesh, mesh_score = self.mesh.landmarks(image.rgb, det)
            if mesh_score < self._min_face_presence:
                continue
            with stage("align"):
                chip = self.embedder.crop(image.rgb, FaceGeometry(det.box, mesh))
                face = Face(det, mesh, mesh_score, chip)
            wanted = embed(image, face) if callable(embed) else embed
            if wanted and (max_faces is None or embedded < max_faces):
                with stage("embed"):
                    face.embedding = self.embedder.embed(chip)
                embedded += 1
            faces.append(face)
            if largest_only:
                break
        if self._observe is not None:
            self._observe(timings)
        return Analysis(image, faces, timings)

    def close(self) -> None:
        self.detector.close()
