"""MediaPipe's own FaceDetector task (the test extra), the reference edge-face's LiteRT detector is held to.

MediaPipe 1.2.3's package `__init__` imports its drawing utilities, which need matplotlib (not
installed): the detector task is imported alone, its parent packages registered without running
their `__init__`.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


@cache
def _face_detector_module() -> types.ModuleType:
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("mediapipe (the test extra) is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for sub in ("", "tasks", "tasks/python", "tasks/python/vision"):
        name = ".".join(["mediapipe", *filter(None, sub.split("/"))])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root / sub)]
            sys.modules[name] = package
    from mediapipe.tasks.python.vision import face_detector

    return face_detector


@dataclass(frozen=True)
class TaskDetection:
    """What the task reports of a face: its score and six keypoints in image pixels."""

    score: float
    keypoints: np.ndarray


class FaceDetectorTask:
    """MediaPipe Tasks' FaceDetector in IMAGE mode, as edge-face ran it before detecting on LiteRT."""

    def __init__(self, model_path: Path, *, min_confidence: float = 0.5) -> None:
        fd = _face_detector_module()
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision.core.image import Image, ImageFormat

        self._image, self._srgb = Image, ImageFormat.SRGB
        options = fd.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model_path)),
                                         min_detection_confidence=min_confidence, min_suppression_threshold=0.3)
        self._task: Any = fd.FaceDetector.create_from_options(options)

    def detect(self, rgb: np.ndarray) -> list[TaskDetection]:
        height, width = rgb.shape[:2]
        result = self._task.detect(self._image(image_format=self._srgb, data=np.ascontiguousarray(rgb)))
        return [TaskDetection(float(det.categories[0].score),
                              np.array([[kp.x * width, kp.y * height] for kp in det.keypoints], dtype=np.float32))
                for det in result.detections]

    def close(self) -> None:
        self._task.close()
