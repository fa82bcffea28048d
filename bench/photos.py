"""The benchmarks' photos: 250x250 LFW photos as they are, and 640x480 kiosk frames made from them.

A kiosk camera sees one person at arm's length in a 4:3 frame. Each frame holds one faces-dev photo
scaled 1.6x (the face about a quarter of the frame's width) at a repeatable position, on a blurred,
stretched copy of the same photo, so that detectors scan a textured background, not a flat one.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FRAME = (640, 480)
SCALE = 1.6
JPEG_QUALITY = 90


def lfw_paths(faces_dev: Path, count: int) -> list[Path]:
    """`count` photos spread over every person in faces-dev (a fixed stride through the sorted list)."""
    paths = sorted(faces_dev.glob("*/*.jpg"))
    return paths[:: max(1, len(paths) // count)][:count]


def _jpeg(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return encoded.tobytes()


def query_photo(misc: Path) -> bytes:
    """A 640x480 JPEG with one face: the 4:3 centre of a large one-face photo, as a kiosk camera frames it."""
    image = cv2.imread(str(misc / "large_4352x2903_one_face.jpg"))
    if image is None:
        raise FileNotFoundError(misc / "large_4352x2903_one_face.jpg")
    height, width = image.shape[:2]
    crop = int(height * 4 / 3)
    left = (width - crop) // 2
    return _jpeg(cv2.resize(image[:, left:left + crop], FRAME, interpolation=cv2.INTER_AREA))


def kiosk_frame(photo: bytes, seed: int) -> bytes:
    """A 640x480 JPEG with the photo's face where a kiosk would see it."""
    image = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an image OpenCV can decode")
    width, height = FRAME
    frame = cv2.GaussianBlur(cv2.resize(image, FRAME, interpolation=cv2.INTER_LINEAR), (0, 0), 12)
    side = round(min(image.shape[:2]) * SCALE)
    face = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(seed)
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    frame[top:top + side, left:left + side] = face
    return _jpeg(frame)


def photo_sets(faces_dev: Path, count: int) -> dict[str, list[bytes]]:
    """The same `count` people's photos as 250x250 LFW files and as 640x480 kiosk frames."""
    photos = [path.read_bytes() for path in lfw_paths(faces_dev, count)]
    return {"250x250": photos, "640x480": [kiosk_frame(photo, seed) for seed, photo in enumerate(photos)]}
