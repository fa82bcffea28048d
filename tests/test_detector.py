"""BlazeFace on LiteRT against MediaPipe's own FaceDetector task, and the letterbox taken off again."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.mediapipe_task import FaceDetectorTask
from edge.config import PipelineSettings
from edge.vision.detector import MAX_CANDIDATES, FaceDetector
from edge.vision.image import decode_image
from edge.vision.models import ModelCatalog

PHOTOS = 60


def _images(faces_dev: Path, misc: Path) -> list[np.ndarray]:
    """LFW photos as they are and scaled into a 640x480 frame, and the misc photos."""
    paths = sorted(faces_dev.glob("*/*.jpg"))
    photos = [decode_image(p.read_bytes()).rgb for p in paths[:: len(paths) // PHOTOS][:PHOTOS]]
    frames = []
    for i, photo in enumerate(photos):
        frame = np.zeros((480, 640, 3), np.uint8)
        left = 37 * i % 240
        frame[40:440, left:left + 400] = cv2.resize(photo, (400, 400))
        frames.append(frame)
    others = [decode_image(p.read_bytes()).rgb for p in sorted(misc.glob("*.jpg")) if "webp" not in p.name]
    return photos + frames + others


@pytest.mark.parametrize("detector", ["short", "full"])
def test_detections_match_mediapipes_face_detector_task(settings: PipelineSettings, faces_dev: Path, misc: Path,
                                                        detector: str) -> None:
    catalog = ModelCatalog(settings.model_dir)
    model = catalog.verified_path(catalog.find("detector", f"blazeface_{detector}"))
    try:
        task = FaceDetectorTask(model, min_confidence=0.5)
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))
    ours = FaceDetector(model, min_confidence=0.5)
    images = _images(faces_dev, misc)
    other_counts, worst_keypoint, worst_score = 0, 0.0, 0.0
    for rgb in images:
        theirs, found = task.detect(rgb), ours.detect(rgb)
        if len(found) != len(theirs):
            other_counts += 1
            continue
        for det in theirs:
            match = min(found, key=lambda d: float(np.abs(d.keypoints - det.keypoints).max()))
            worst_keypoint = max(worst_keypoint, float(np.abs(match.keypoints - det.keypoints).max()))
            worst_score = max(worst_score, abs(match.score - det.score))
    task.close()
    # A detection scored within rounding of the 0.5 floor may fall on either side of it.
    assert other_counts <= len(images) // 100 + 1, other_counts
    assert worst_keypoint < 2.0 and worst_score < 0.01, (worst_keypoint, worst_score)


def test_letterbox_is_removed_whatever_the_frame(settings: PipelineSettings, faces_dev: Path) -> None:
    """The same face padded into a wide and a tall frame is found at the same place in each."""
    catalog = ModelCatalog(settings.model_dir)
    detector = FaceDetector(catalog.verified_path(catalog.find("detector", "blazeface_short")))
    for path in sorted(faces_dev.glob("*/*.jpg"))[:40:4]:
        rgb = decode_image(path.read_bytes()).rgb
        (alone, *_) = detector.detect(rgb)
        (wide, *_) = detector.detect(cv2.copyMakeBorder(rgb, 0, 0, 150, 0, cv2.BORDER_CONSTANT))
        (tall, *_) = detector.detect(cv2.copyMakeBorder(rgb, 150, 0, 0, 0, cv2.BORDER_CONSTANT))
        side = float(alone.box[2])
        # Padded, the face is smaller in the model's input than alone: allow 10% of its size for that.
        assert np.abs(wide.keypoints[:3] - (150, 0) - alone.keypoints[:3]).max() < 0.1 * side  # eyes, nose tip
        assert np.abs(tall.keypoints[:3] - (0, 150) - alone.keypoints[:3]).max() < 0.1 * side
        # The two padded frames show it at the same scale: only the side the padding is on differs.
        assert np.abs(wide.keypoints[:3] - (150, 0) - (tall.keypoints[:3] - (0, 150))).max() < 0.03 * side


def test_the_confidence_floor_holds_at_its_ends(settings: PipelineSettings, faces_dev: Path) -> None:
    """A floor of 0 keeps the votes of the MAX_CANDIDATES best-scoring anchors (the face found at 0.5 among them,
    moved a little by the weak votes merged into it; no score outside [0, 1]); a floor of 1 no sigmoid score
    reaches."""
    catalog = ModelCatalog(settings.model_dir)
    model = catalog.verified_path(catalog.find("detector", "blazeface_short"))
    everything, usual, nothing = (FaceDetector(model, min_confidence=c) for c in (0.0, 0.5, 1.0))
    for path in sorted(faces_dev.glob("*/*.jpg"))[:30:3]:
        rgb = decode_image(path.read_bytes()).rgb
        (face, *_) = usual.detect(rgb)
        found = everything.detect(rgb)
        assert all(0.0 <= d.score <= 1.0 for d in found)
        assert min(float(np.abs(d.keypoints - face.keypoints).max()) for d in found) < 0.1 * float(face.box[2])
        assert nothing.detect(rgb) == []


def test_an_image_lighting_up_every_anchor_is_decoded_to_its_best_candidates(settings: PipelineSettings,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every anchor of the full-range model above the floor, as boxes too small to overlap: the suppression keeps
    the MAX_CANDIDATES best-scoring, each a face of its own, rather than working through all 2,304 (a stand-in
    for the model's outputs: no photo makes them)."""
    catalog = ModelCatalog(settings.model_dir)
    detector = FaceDetector(catalog.verified_path(catalog.find("detector", "blazeface_full")))
    anchors = 2304
    regressors = np.zeros((1, anchors, 16), np.float32)
    regressors[0, :, 2:4] = 1.0  # a 1-pixel box at each anchor's centre; anchors lie 4 pixels apart
    logits = np.linspace(1.0, 5.0, anchors, dtype=np.float32).reshape(1, anchors, 1)  # later anchors score higher

    class Outputs:
        def run(self, inputs: np.ndarray) -> list[np.ndarray]:
            return [regressors.copy(), logits.copy()]

    monkeypatch.setattr(detector, "_session", Outputs())
    found = detector.detect(np.zeros((192, 192, 3), np.uint8))
    assert len(found) == MAX_CANDIDATES
    floor = 1 / (1 + np.exp(-float(logits[0, anchors - MAX_CANDIDATES, 0])))
    assert min(d.score for d in found) >= floor - 1e-6
    assert all(d.box[2] == d.box[3] == 1.0 for d in found)
