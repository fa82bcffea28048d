"""Face detection with MediaPipe Tasks' FaceDetector (BlazeFace).

MediaPipe 1.2.3's package `__init__` eagerly imports its drawing utilities, which need
matplotlib; face detection does not. `_face_detector_module` imports the detector task
alone by registering the parent packages without running their `__init__`, so matplotlib,
sounddevice and opencv-contrib stay out of the environment (see pyproject's uv overrides).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

# Packages whose __init__ pulls in GUI or audio modules the detector never uses.
_SKIPPED_INITS = ("", "tasks", "tasks/python", "tasks/python/vision")


@cache
def _face_detector_module() -> types.ModuleType:
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mediapipe is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for sub in _SKIPPED_INITS:
        name = ".".join(["mediapipe", *filter(None, sub.split("/"))])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root / sub)]
            sys.modules[name] = package
    from mediapipe.tasks.python.vision import face_detector

    return face_detector


@dataclass(frozen=True)
class Detection:
    """One face in working-image pixels: box (x, y, w, h), score 0-1, six BlazeFace keypoints.

    Keypoints, in MediaPipe's order: the subject's right eye, left eye, nose tip, mouth
    centre, right ear tragion, left ear tragion.
    """

    box: np.ndarray
    score: float
    keypoints: np.ndarray


class FaceDetector:
    """BlazeFace through MediaPipe Tasks, in IMAGE mode.

    The short-range model (128 px input) is for kiosk distance; the full-range model
    (192 px) finds the smaller faces of group photos.
    """

    def __init__(self, model_path: Path, *, min_confidence: float = 0.5) -> None:
        fd = _face_detector_module()
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision.core.image import Image, ImageFormat

        self._image = Image
        self._srgb = ImageFormat.SRGB
        options = fd.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            min_detection_confidence=min_confidence,
            min_suppression_threshold=0.3,
        )
        self._detector: Any = fd.FaceDetector.create_from_options(options)
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """All faces above the confidence floor, largest first."""
        height, width = rgb.shape[:2]
        image = self._image(image_format=self._srgb, data=np.ascontiguousarray(rgb))
        with self._lock:
            result = self._detector.detect(image)
        found = []
        for det in result.detections:
            bb = det.bounding_box
            keypoints = np.array([[kp.x * width, kp.y * height] for kp in det.keypoints or []],
                                 dtype=np.float32).reshape(-1, 2)
            found.append(Detection(
                box=np.array([bb.origin_x, bb.origin_y, bb.width, bb.height], dtype=np.float32),
                score=float(det.categories[0].score) if det.categories else 0.0,
                keypoints=keypoints,
            ))
        found.sort(key=lambda d: -float(d.box[2] * d.box[3]))
        return found

    def close(self) -> None:
        self._detector.close()
