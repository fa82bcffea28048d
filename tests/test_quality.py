"""Quality measures move the way a person would expect, and the filter levels cut in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.vision.pipeline import FacePipeline
from edge.vision.quality import CUTOFFS, Pose, Quality, QualityFilter, filter_reasons


def _encode(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def test_blur_lowers_sharpness_and_darkness_lowers_brightness(pipeline: FacePipeline, misc: Path) -> None:
    original = pipeline.analyse((misc / "large_4352x2903_one_face.jpg").read_bytes(), embed=False)
    rgb = original.image.rgb
    face = original.faces[0].quality
    blurred = pipeline.analyse(_encode(cv2.GaussianBlur(rgb, (0, 0), 6)), embed=False).faces[0].quality
    dark = pipeline.analyse(_encode((rgb * 0.35).astype(np.uint8)), embed=False).faces[0].quality
    assert blurred.sharpness < face.sharpness / 2
    assert dark.brightness < face.brightness * 0.5
    assert face.sharpness > CUTOFFS[QualityFilter.HIGH].sharpness


def test_head_turn_is_read_as_yaw(pipeline: FacePipeline, misc: Path) -> None:
    frontal = pipeline.analyse((misc / "small_face_427x240.jpg").read_bytes(), embed=False).faces[0]
    turned = pipeline.analyse((misc / "turned_head_bw_portrait.jpg").read_bytes(), embed=False).faces[0]
    assert abs(frontal.pose.yaw) < 10 and abs(frontal.pose.roll) < 10
    assert abs(turned.pose.yaw) > 15


def test_mirroring_a_face_flips_the_sign_of_yaw_and_roll(pipeline: FacePipeline, misc: Path) -> None:
    data = (misc / "turned_head_bw_portrait.jpg").read_bytes()
    face = pipeline.analyse(data, embed=False)
    mirrored = pipeline.analyse(_encode(face.image.rgb[:, ::-1].copy()), embed=False).faces[0]
    assert np.sign(mirrored.pose.yaw) == -np.sign(face.faces[0].pose.yaw)
    assert abs(mirrored.pose.yaw + face.faces[0].pose.yaw) < 5


def test_filter_levels_are_nested_and_name_the_reasons() -> None:
    good: dict[str, Any] = dict(confidence=99.0, box_side=200.0, pose=Pose(0, 5, 5), quality=Quality(60, 60))
    for level in QualityFilter:
        assert filter_reasons(level, **good) == []
    poor: dict[str, Any] = dict(confidence=75.0, box_side=50.0, pose=Pose(0, 50, 5), quality=Quality(60, 60))
    assert filter_reasons(QualityFilter.LOW, **poor) == []
    assert filter_reasons(QualityFilter.AUTO, **poor) == []
    assert set(filter_reasons(QualityFilter.HIGH, **poor)) == {"EXTREME_POSE", "LOW_CONFIDENCE", "SMALL_BOUNDING_BOX"}
    bad: dict[str, Any] = dict(confidence=40.0, box_side=10.0, pose=Pose(0, 80, 70), quality=Quality(2, 1))
    assert set(filter_reasons(QualityFilter.LOW, **bad)) == {
        "EXTREME_POSE", "LOW_BRIGHTNESS", "LOW_SHARPNESS", "LOW_CONFIDENCE", "SMALL_BOUNDING_BOX"}
    assert filter_reasons(QualityFilter.NONE, **bad) == []
