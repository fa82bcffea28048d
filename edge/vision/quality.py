"""Face quality: Rekognition's Brightness, Sharpness and Pose, and its QualityFilter levels.

Brightness is the mean luma of the aligned face, 0-100. Sharpness is the variance of the
Laplacian on the aligned face's grey levels, mapped to 0-100 (`SHARPNESS_SCALE`: a
variance of that much is 63). Pose comes from the 3-D FaceMesh: the eye line and the
forehead-chin line span the head's frame. Measuring on the aligned chip, not the photo,
makes every number independent of how large the face is in the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

SHARPNESS_SCALE = 120.0

_EYE_OUTER_RIGHT, _EYE_OUTER_LEFT, _FOREHEAD, _CHIN = 33, 263, 10, 152


@dataclass(frozen=True)
class Pose:
    roll: float
    yaw: float
    pitch: float


@dataclass(frozen=True)
class Quality:
    brightness: float
    sharpness: float


def pose_from_mesh(mesh: np.ndarray) -> Pose:
    """Roll, yaw and pitch in degrees from 3-D FaceMesh points (image x right, y down, z away)."""
    x = mesh[_EYE_OUTER_LEFT].astype(np.float64) - mesh[_EYE_OUTER_RIGHT]
    y = mesh[_CHIN].astype(np.float64) - mesh[_FOREHEAD]
    x /= np.linalg.norm(x)
    y -= x * float(y @ x)
    y /= np.linalg.norm(y)
    roll = math.degrees(math.atan2(x[1], x[0]))
    yaw = math.degrees(math.asin(float(np.clip(x[2], -1, 1))))
    pitch = math.degrees(math.asin(float(np.clip(-y[2], -1, 1))))
    return Pose(roll=round(roll, 4), yaw=round(yaw, 4), pitch=round(pitch, 4))


def measure_quality(chip: np.ndarray) -> Quality:
    """Brightness and sharpness of an aligned face chip (RGB uint8)."""
    h, w = chip.shape[:2]
    # The central part of the chip is face; the borders are hair and background.
    core = chip[h // 5 : h - h // 10, w // 5 : w - w // 5]
    grey = cv2.cvtColor(core, cv2.COLOR_RGB2GRAY)
    brightness = float(grey.mean()) / 255.0 * 100.0
    variance = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    sharpness = 100.0 * (1.0 - math.exp(-variance / SHARPNESS_SCALE))
    return Quality(brightness=round(brightness, 4), sharpness=round(sharpness, 4))


class QualityFilter(StrEnum):
    NONE = "NONE"
    AUTO = "AUTO"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


@dataclass(frozen=True)
class Cutoffs:
    """The least a face may have to pass a level (confidence 0-100, box side in original pixels)."""

    confidence: float
    box_side: float
    yaw: float
    pitch: float
    brightness: float
    sharpness: float


#: The documented cut-offs per QualityFilter level; AUTO is MEDIUM.
CUTOFFS: dict[QualityFilter, Cutoffs] = {
    QualityFilter.LOW: Cutoffs(confidence=50, box_side=20, yaw=75, pitch=60, brightness=5, sharpness=2),
    QualityFilter.MEDIUM: Cutoffs(confidence=70, box_side=40, yaw=60, pitch=45, brightness=10, sharpness=5),
    QualityFilter.HIGH: Cutoffs(confidence=90, box_side=60, yaw=40, pitch=30, brightness=20, sharpness=15),
}
CUTOFFS[QualityFilter.AUTO] = CUTOFFS[QualityFilter.MEDIUM]


def filter_reasons(level: QualityFilter, *, confidence: float, box_side: float, pose: Pose,
                   quality: Quality) -> list[str]:
    """Rekognition's UnindexedFaces reasons for a face that fails `level` (empty: it passes)."""
    if level == QualityFilter.NONE:
        return []
    cut = CUTOFFS[level]
    reasons = []
    if abs(pose.yaw) > cut.yaw or abs(pose.pitch) > cut.pitch:
        reasons.append("EXTREME_POSE")
    if quality.brightness < cut.brightness:
        reasons.append("LOW_BRIGHTNESS")
    if quality.sharpness < cut.sharpness:
        reasons.append("LOW_SHARPNESS")
    if confidence < cut.confidence:
        reasons.append("LOW_CONFIDENCE")
    if box_side < cut.box_side:
        reasons.append("SMALL_BOUNDING_BOX")
    return reasons
