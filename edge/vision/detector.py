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
#: Candidates decoded at most, the best-scoring first. Photos give a few per face (README, Speed); this bounds
#: the suppression's work on an image made to light up every anchor.
MAX_CANDIDATES = 512
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


def _anchor_offsets(size: int) -> np.ndarray:
    """Per anchor, in the order of the model's outputs, what its 16 regressed values (box centre, box size, six
    keypoints; x, y each) are offset by, in units of the input side: the anchor's centre, but for the box size.
    Layers of one stride share a grid."""
    strides, per_layer = _SSD_LAYERS[size]
    grids = []
    for stride in dict.fromkeys(strides):
        cells = size // stride
        y, x = np.mgrid[0:cells, 0:cells]
        grid = np.stack([(x + 0.5) / cells, (y + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        grids.append(np.repeat(grid, per_layer * strides.count(stride), axis=1).reshape(-1, 2))
    centres = np.concatenate(grids)
    offsets = np.zeros((len(centres), 8, 2), dtype=np.float32)
    offsets[:, [0, 2, 3, 4, 5, 6, 7]] = centres[:, None]
    return offsets.reshape(len(centres), 16)


class FaceDetector:
    """BlazeFace on one LiteRT thread: the model is small enough that a second thread only adds hand-offs.

    The short-range model (128 px input) is for kiosk distance; the full-range model
    (192 px) finds the smaller faces of group photos.
    """

    def __init__(self, model_path: Path, *, min_confidence: float = 0.5) -> None:
        self._session = LiteRTSession(model_path, threads=1)
        self._size = self._session.input_shape[1]
        self._offsets = _anchor_offsets(self._size)
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
        if len(keep) > MAX_CANDIDATES:
            keep = np.sort(keep[np.argpartition(-logits[keep], MAX_CANDIDATES)[:MAX_CANDIDATES]])
        # Per anchor: box centre, box size, six keypoints, in input pixels relative to the anchor. The few
        # candidates are decoded in Python: after the models have run, each small array operation costs
        # more in cold caches than the arithmetic it does (README, Speed).
        rows = (regressors.reshape(-1, 16)[keep] / size + self._offsets[keep]).tolist()
        candidates = [(_sigmoid(logit), row) for row, logit in zip(rows, logits[keep].tolist(), strict=True)
                      if row[2] > 0 and row[3] > 0]
        found = []
        for score, merged in _weighted_nms(candidates):
            xs = [(x * size - pad_x) / scale for x in merged[0::2]]
            ys = [(y * size - pad_y) / scale for y in merged[1::2]]
            width, height = merged[2] * size / scale, merged[3] * size / scale
            box = np.array([xs[0] - width / 2, ys[0] - height / 2, width, height], dtype=np.float32)
            keypoints = np.array([xs[2:], ys[2:]], dtype=np.float32).T.copy()
            found.append(Detection(box=box, score=score, keypoints=keypoints))
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


def _sigmoid(logit: float) -> float:
    return 1 / (1 + math.exp(-min(max(logit, -_SCORE_CLIP), _SCORE_CLIP)))


def _weighted_nms(candidates: list[tuple[float, list[float]]]) -> list[tuple[float, list[float]]]:
    """MediaPipe's WEIGHTED suppression of (score, regressed row) candidates: the best remaining one absorbs
    every one that overlaps its box by more than NMS_IOU, as their score-weighted mean; it keeps its own score.
    Ties in score keep the anchors' order, as MediaPipe's stable sort does."""
    remaining = sorted(candidates, key=lambda c: -c[0])
    merged = []
    while remaining:
        best_score, best = remaining[0]
        left, top = best[0] - best[2] / 2, best[1] - best[3] / 2
        right, bottom, area = left + best[2], top + best[3], best[2] * best[3]
        members, rest = [remaining[0]], list[tuple[float, list[float]]]()
        for candidate in remaining[1:]:
            row = candidate[1]
            x, y = row[0] - row[2] / 2, row[1] - row[3] / 2
            width, height = min(right, x + row[2]) - max(left, x), min(bottom, y + row[3]) - max(top, y)
            overlap = width * height if width > 0 and height > 0 else 0.0
            iou = overlap / max(area + row[2] * row[3] - overlap, 1e-12)
            (members if iou > NMS_IOU else rest).append(candidate)
        total = sum(score for score, _ in members)
        merged.append((best_score, [sum(score * row[i] for score, row in members) / total for i in range(16)]))
        remaining = rest
    return merged
