"""Face detection: MediaPipe's BlazeFace models run on LiteRT, decoded as MediaPipe decodes them.

MediaPipe's FaceDetector task runs the same model inside its calculator graph, whose threads and
packet copies cost more than the model itself on a busy two-core device (README, Speed). This is
the recipe of its face_detection_{short,full}_range graphs, in the caller's thread: the image
letterboxed into the model's square input (bilinear, zero border, values in [-1, 1]), SSD anchors,
sigmoid scores, weighted non-maximum suppression at IoU 0.3, and the letterbox removed again.
Scores and keypoints agree with the task's to within float rounding; boxes are kept in float
pixels and not clamped to the image (the task truncates them to integers and shifts a box that
leaves the frame back inside), so a face cut by the edge has a negative Left, as in Rekognition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.vision.runtime import LiteRTSession

NMS_IOU = 0.3
_SCORE_CLIP = 100.0
#: Pixel value -> model input in [-1, 1], as one table lookup per pixel.
_INPUT_SCALE = (np.arange(256, dtype=np.float32) * np.float32(2 / 255) - 1).reshape(1, 256)
#: Input side -> (anchor strides of the SSD layers, anchors per cell and layer), as in MediaPipe's
#: face_detection_short_range (128 px) and face_detection_full_range (192 px) graphs.
_SSD_LAYERS = {128: ((8, 16, 16, 16), 2), 192: ((4,), 1)}


@dataclass(frozen=True)
class Detection:
    """One face in working-image pixels: box (x, y, w, h), score 0-1, six BlazeFace keypoints.

    Keypoints, in MediaPipe's order: the subject's right eye, left eye, nose tip, mouth
    centre, right ear tragion, left ear tragion.
    """

    box: np.ndarray
    score: float
    keypoints: np.ndarray


def _anchor_centres(size: int) -> np.ndarray:
    """Anchor centres (x, y) in [0, 1], in the order of the model's outputs; layers of one stride share a grid."""
    strides, per_layer = _SSD_LAYERS[size]
    centres = []
    for stride in dict.fromkeys(strides):
        cells = size // stride
        y, x = np.mgrid[0:cells, 0:cells]
        grid = np.stack([(x + 0.5) / cells, (y + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_layer * strides.count(stride), axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


class FaceDetector:
    """BlazeFace on one LiteRT thread: the model is small enough that a second thread only adds hand-offs.

    The short-range model (128 px input) is for kiosk distance; the full-range model
    (192 px) finds the smaller faces of group photos.
    """

    def __init__(self, model_path: Path, *, min_confidence: float = 0.5) -> None:
        self._session = LiteRTSession(model_path, threads=1)
        self._size = self._session.input_shape[1]
        self._anchors = _anchor_centres(self._size)
        # Scores are compared as logits: the sigmoid is then computed for the few candidates only.
        self._min_logit = _logit(min_confidence)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """All faces above the confidence floor, largest first."""
        height, width = rgb.shape[:2]
        size = self._size
        scale = size / max(width, height)
        pad_x, pad_y = (size - width * scale) / 2, (size - height * scale) / 2
        letterbox = np.array([[scale, 0.0, pad_x], [0.0, scale, pad_y]])
        square = cv2.warpAffine(rgb, letterbox, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT)
        outputs = self._session.run(cv2.LUT(square, _INPUT_SCALE)[None])
        regressors, logits = sorted(outputs, key=lambda o: -o.shape[-1])
        logits = logits.reshape(-1)
        keep = np.flatnonzero(logits >= self._min_logit)
        # Per anchor: box centre, box size, six keypoints, in input pixels relative to the anchor.
        points = regressors.reshape(-1, 8, 2)[keep] / size
        sized = np.all(points[:, 1] > 0, axis=1)
        keep, points = keep[sized], points[sized]
        if not len(keep):
            return []
        scores = 1 / (1 + np.exp(-np.clip(logits[keep].astype(np.float64), -_SCORE_CLIP, _SCORE_CLIP)))
        points[:, [0, 2, 3, 4, 5, 6, 7]] += self._anchors[keep, None]
        found = []
        for merged, score in _weighted_nms(points, scores):
            pixels = (merged * size - (pad_x, pad_y)) / scale
            centre, side = pixels[0], merged[1] * size / scale
            found.append(Detection(box=np.array([*(centre - side / 2), *side], dtype=np.float32),
                                   score=score, keypoints=pixels[2:].astype(np.float32)))
        found.sort(key=lambda d: -float(d.box[2] * d.box[3]))
        return found

    def close(self) -> None:
        """Nothing beyond the interpreter, which goes with the detector."""


def _logit(probability: float) -> float:
    """The logit at or above which a sigmoid score reaches `probability` (0 and 1 map to -inf and inf)."""
    if probability <= 0:
        return -math.inf
    if probability >= 1:
        return math.inf
    return math.log(probability / (1 - probability))


def _weighted_nms(points: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's WEIGHTED suppression: the best remaining detection absorbs every one that overlaps it
    by more than NMS_IOU, as their score-weighted mean; it keeps its own score.

    The overlaps of all pairs are computed at once: the candidates are few, and a pass of small array
    operations per face costs more than the arithmetic."""
    low, high = points[:, 0] - points[:, 1] / 2, points[:, 0] + points[:, 1] / 2
    overlap = np.clip(np.minimum(high[:, None], high) - np.maximum(low[:, None], low), 0, None).prod(axis=2)
    areas = np.prod(high - low, axis=1)
    iou = overlap / np.maximum(areas[:, None] + areas - overlap, 1e-12)
    order = np.argsort(-scores, kind="stable")
    remaining = np.ones(len(scores), dtype=bool)
    merged = []
    for best in order:
        if not remaining[best]:
            continue
        absorbed = remaining & (iou[best] > NMS_IOU)
        absorbed[best] = True
        members = order[absorbed[order]]  # in score order, as MediaPipe sums them
        weights = scores[members]
        merged.append(((points[members] * weights[:, None, None]).sum(axis=0) / weights.sum(), float(scores[best])))
        remaining &= ~absorbed
    return merged
