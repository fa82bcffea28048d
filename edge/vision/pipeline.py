"""The face pipeline: decode, detect, landmarks, align, quality and embed, timed per stage.

The operations layer calls `FacePipeline.analyse`; nothing here knows about collections
or HTTP. Rekognition's FaceDetail shape is produced by `face_detail`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.config import PipelineSettings
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
    pose: Pose
    quality: Quality
    chip: np.ndarray
    embedding: np.ndarray | None = None

    @property
    def confidence(self) -> float:
        """Detection confidence on Rekognition's 0-100 scale."""
        return round(100.0 * self.detection.score, 4)

    def box_side(self, image: DecodedImage) -> float:
        """The box's shorter side in the client's original pixels."""
        return float(min(self.detection.box[2], self.detection.box[3])) * image.scale

    def area(self) -> float:
        return float(self.detection.box[2] * self.detection.box[3])


#: Which faces to embed, given the image and a face with everything but its embedding.
FaceSelector = Callable[[DecodedImage, Face], bool]


@dataclass
class Analysis:
    image: DecodedImage
    faces: list[Face]
    timings: dict[str, float] = field(default_factory=dict)


class FacePipeline:
    """Loads every model once; `analyse` is safe to call from one thread at a time per pipeline."""

    def __init__(self, settings: PipelineSettings, *,
                 observe: Callable[[dict[str, float]], None] | None = None) -> None:
        """`observe` receives every analysis' stage timings in seconds (the daemon's metrics)."""
        self.settings = settings
        self._observe = observe
        catalog = ModelCatalog(settings.model_dir)
        threads = settings.threads or default_threads()
        backend = select_backend(settings.backends)
        cpu = select_backend(["cpu"])
        detector = catalog.find("detector", f"blazeface_{settings.detector}")
        self.detector = FaceDetector(catalog.verified_path(detector),
                                     min_confidence=settings.min_detection_confidence)
        mesh = catalog.find("landmarks", "face_mesh")
        self.mesh = FaceMesh(catalog.verified_path(mesh), backend=cpu, threads=threads)
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
        self.embedder = Embedder(catalog, artifact, backend=backend, threads=threads, flip_augment=flip)

    @property
    def face_model_version(self) -> str:
        return self.embedder.version

    def analyse(self, data: bytes | DecodedImage, *, embed: bool | FaceSelector = True,
                max_faces: int | None = None, max_bytes: int = MAX_IMAGE_BYTES) -> Analysis:
        """Every face in the image, largest first, the first `max_faces` that `embed` selects embedded.

        `max_bytes` is the decode limit: 5 MB for request bytes, 15 MB for an S3 object.
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
            if mesh_score < self.settings.min_face_presence:
                continue
            with stage("align"):
                chip = self.embedder.crop(image.rgb, FaceGeometry(det.box, mesh))
                face = Face(det, mesh, mesh_score, pose_from_mesh(mesh), measure_quality(chip), chip)
            wanted = embed(image, face) if callable(embed) else embed
            if wanted and (max_faces is None or embedded < max_faces):
                with stage("embed"):
                    face.embedding = self.embedder.embed(chip)
                embedded += 1
            faces.append(face)
        if self._observe is not None:
            self._observe(timings)
        return Analysis(image, faces, timings)

    def close(self) -> None:
        self.detector.close()


# Rekognition landmark name -> FaceMesh indices averaged. "Left"/"Right" follow Rekognition:
# eyeLeft is the eye on the image's left (the subject's right eye).
MESH_LANDMARKS: dict[str, tuple[int, ...]] = {
    "eyeLeft": (33, 133, 159, 145), "eyeRight": (263, 362, 386, 374), "nose": (1,),
    "mouthLeft": (61,), "mouthRight": (291,),
    "leftEyeBrowLeft": (70,), "leftEyeBrowRight": (107,), "leftEyeBrowUp": (105,),
    "rightEyeBrowLeft": (336,), "rightEyeBrowRight": (300,), "rightEyeBrowUp": (334,),
    "leftEyeLeft": (33,), "leftEyeRight": (133,), "leftEyeUp": (159,), "leftEyeDown": (145,),
    "rightEyeLeft": (362,), "rightEyeRight": (263,), "rightEyeUp": (386,), "rightEyeDown": (374,),
    "noseLeft": (129,), "noseRight": (358,), "mouthUp": (0,), "mouthDown": (17,),
    "leftPupil": (33, 133, 159, 145), "rightPupil": (263, 362, 386, 374),
    "upperJawlineLeft": (234,), "midJawlineLeft": (172,), "chinBottom": (152,),
    "midJawlineRight": (397,), "upperJawlineRight": (454,),
}
DEFAULT_LANDMARKS = ("eyeLeft", "eyeRight", "mouthLeft", "mouthRight", "nose")


def bounding_box(image: DecodedImage, box: np.ndarray) -> dict[str, float]:
    """A working-pixel box as Rekognition's ratios of the original image."""
    w, h = image.rgb.shape[1], image.rgb.shape[0]
    return {"Width": float(box[2]) / w, "Height": float(box[3]) / h,
            "Left": float(box[0]) / w, "Top": float(box[1]) / h}


def face_detail(image: DecodedImage, face: Face, *, all_attributes: bool = False) -> dict[str, Any]:
    """Rekognition's FaceDetail for DEFAULT (or ALL, as far as edge-face measures) attributes."""
    w, h = image.rgb.shape[1], image.rgb.shape[0]
    names = MESH_LANDMARKS if all_attributes else DEFAULT_LANDMARKS
    landmarks = []
    for name in names:
        x, y = face.mesh[list(MESH_LANDMARKS[name]), :2].mean(axis=0)
        landmarks.append({"Type": name, "X": float(x) / w, "Y": float(y) / h})
    return {
        "BoundingBox": bounding_box(image, face.detection.box),
        "Landmarks": landmarks,
        "Pose": {"Roll": face.pose.roll, "Yaw": face.pose.yaw, "Pitch": face.pose.pitch},
        "Quality": {"Brightness": face.quality.brightness, "Sharpness": face.quality.sharpness},
        "Confidence": face.confidence,
    }
