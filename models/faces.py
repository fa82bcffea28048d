"""Aligned face chips for int8 calibration and parity references, cut with dlib itself.

Full-int8 ranges drift unless calibrated on what the embedders really see, so the chips come
from real photos (a folder laid out as Person/Person_NNNN.jpg), aligned the way each model's
runtime will align them.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np

log = logging.getLogger(__name__)

DLIB_CHIP = 150
DLIB_PADDING = 0.25
FACENET_CROP = 160
FACENET_MARGIN = 0.2  # of the dlib box side, on each side (MTCNN's 32 px margin at 160 px)


@dataclass
class FaceSet:
    """Chips of one split: dlib 150x150 chips and FaceNet 160x160 crops (RGB uint8), with sources."""

    files: list[str]
    dlib_chips: np.ndarray
    facenet_crops: np.ndarray


def facenet_crop(rgb: np.ndarray, box: dlib.rectangle) -> np.ndarray:
    """Square crop around the dlib box, widened by FACENET_MARGIN per side; outside is black."""
    side = max(box.width(), box.height()) * (1 + 2 * FACENET_MARGIN)
    cx = (box.left() + box.right()) / 2
    cy = (box.top() + box.bottom()) / 2
    scale = FACENET_CROP / side
    warp = np.array([[scale, 0, FACENET_CROP / 2 - cx * scale], [0, scale, FACENET_CROP / 2 - cy * scale]])
    return cv2.warpAffine(rgb, warp, (FACENET_CROP, FACENET_CROP), flags=cv2.INTER_LINEAR)


def load_faces(folder: Path, models: Path, calibration: int, parity: int) -> tuple[FaceSet, FaceSet]:
    """Detect the largest face in an evenly spaced, sorted subset of ``folder``.

    Every fourth face found goes to the parity split, the rest to calibration, so the two are
    disjoint and both span the identities.
    """
    files = sorted(folder.glob("*/*.jpg"))
    if not files:
        raise FileNotFoundError(f"no */*.jpg under {folder}")
    step = max(1, len(files) // ((calibration + parity) * 5 // 4))
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    splits: dict[str, tuple[list[str], list[np.ndarray], list[np.ndarray]]] = {
        "calibration": ([], [], []), "parity": ([], [], []),
    }
    quota = {"calibration": calibration, "parity": parity}
    found = 0
    for path in files[::step]:
        if all(len(splits[k][0]) >= n for k, n in quota.items()):
            break
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        boxes = detector(rgb, 1)
        if not boxes:
            continue
        box = max(boxes, key=lambda b: b.area())
        name = "parity" if found % 4 == 0 else "calibration"
        found += 1
        names, chips, crops = splits[name]
        if len(names) >= quota[name]:
            continue
        names.append(str(path.relative_to(folder)))
        chips.append(dlib.get_face_chip(rgb, predictor(rgb, box), size=DLIB_CHIP, padding=DLIB_PADDING))
        crops.append(facenet_crop(rgb, box))
    result = [FaceSet(n, np.stack(c), np.stack(f)) for n, c, f in splits.values()]
    log.info("faces: %d calibration and %d parity chips (every %d-th of %d images)",
             len(result[0].files), len(result[1].files), step, len(files))
    return result[0], result[1]
