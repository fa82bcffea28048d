"""FaceMesh: 468 landmarks per face, for alignment and head pose.

MediaPipe's recipe: a square region around the BlazeFace box (centre of the box, long side
x 1.5), rotated so the eyes are level, resampled to 192x192 with values in [0, 1].
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from edge.vision.detector import Detection
from edge.vision.runtime import Backend, LiteRTSession

MESH_INPUT = 192
REGION_SCALE = 1.5


class FaceMesh:
    """468-point face landmarks in the working image's pixel coordinates."""

    def __init__(self, model_path: Path, *, backend: Backend, threads: int = 1) -> None:
        self._session: LiteRTSession = backend.session(model_path, threads=threads)

    def landmarks(self, rgb: np.ndarray, det: Detection) -> tuple[np.ndarray, float]:
        """(468, 3) points (x, y in image pixels, z in the same scale) and a face-presence score."""
        x, y, w, h = (float(v) for v in det.box)
        centre = np.array([x + w / 2, y + h / 2])
        size = max(w, h) * REGION_SCALE
        right_eye, left_eye = det.keypoints[0], det.keypoints[1]
        angle = -math.atan2(-(left_eye[1] - right_eye[1]), left_eye[0] - right_eye[0])
        # Affine map from the 192x192 input to the rotated square region in the image.
        cos, sin = math.cos(angle) * size / MESH_INPUT, math.sin(angle) * size / MESH_INPUT
        to_image = np.array([[cos, -sin, 0.0], [sin, cos, 0.0]])
        to_image[:, 2] = centre - to_image[:, :2] @ np.array([MESH_INPUT / 2, MESH_INPUT / 2])
        crop = cv2.warpAffine(rgb, to_image, (MESH_INPUT, MESH_INPUT),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        tensor = (crop.astype(np.float32) / 255.0)[None]
        raw, presence = self._session.run(tensor)
        pts = raw.reshape(468, 3).astype(np.float64)
        out = np.empty_like(pts)
        out[:, :2] = pts[:, :2] @ to_image[:, :2].T + to_image[:, 2]
        out[:, 2] = pts[:, 2] * size / MESH_INPUT
        score = 1.0 / (1.0 + math.exp(-float(presence.reshape(-1)[0])))
        return out.astype(np.float32), score
