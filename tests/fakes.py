"""Small stand-ins for the pipeline's models, for fast tests of the layers above the pipeline.

A "photo" is a PNG with coloured, textured squares on grey: each square is a face, and its colour
is the person. The fake detector finds the squares, the fake mesh puts a frontal face's key points
in them, and the fake embedder turns a square's colour into a unit vector, so two photos of the
same colour are the same person (cosine 1) and different colours are strangers. The real models
are tested on real photos beside these (test_operations.py, tests/server/).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import uvicorn

from edge.config import Settings
from edge.similarity import SimilarityCalibration
from edge.vision.detector import Detection
from edge.vision.embedder import FaceGeometry
from edge.vision.pipeline import FacePipeline

BACKGROUND = 128
CHIP = 150
#: Person -> face colour; the embedding is the colour centred on grey, so these are far apart.
PEOPLE = {"ann": (230, 40, 40), "bob": (40, 230, 40), "cyd": (40, 40, 230), "dee": (230, 230, 40)}
#: Cosine -> Similarity: cosine 0.9 is Similarity 80, 1.0 is 100.
CALIBRATION = SimilarityCalibration((-1.0, 0.5, 0.9, 1.0), (0.0, 30.0, 80.0, 100.0))
# FaceMesh points that pose, alignment and Rekognition's landmarks read, as fractions of the box.
_MESH_POINTS = {33: (0.3, 0.4), 263: (0.7, 0.4), 10: (0.5, 0.1), 152: (0.5, 0.95)}


def photo(*faces: tuple[str, int, int, int], size: tuple[int, int] = (480, 640)) -> bytes:
    """A PNG holding one square per (person, left, top, side), in working-image pixels."""
    rgb = np.full((*size, 3), BACKGROUND, dtype=np.uint8)
    for person, left, top, side in faces:
        square = np.array(PEOPLE[person], dtype=np.int16)
        # A checker texture makes the face sharp enough for IndexFaces' quality filter.
        checker = (np.indices((side, side)).sum(axis=0) // 6 % 2 * 24 - 12)[..., None]
        rgb[top:top + side, left:left + side] = np.clip(square + checker, 0, 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return png.tobytes()


class FakeDetector:
    """Every non-grey square is a face, largest first."""

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        mask = (np.abs(rgb.astype(np.int16) - BACKGROUND).max(axis=2) > 40).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        found = []
        for left, top, width, height, _ in stats[1:count]:
            box = np.array([left, top, width, height], dtype=np.float32)
            eyes = np.array([[left + 0.3 * width, top + 0.4 * height], [left + 0.7 * width, top + 0.4 * height]])
            found.append(Detection(box=box, score=0.99, keypoints=eyes.astype(np.float32)))
        return sorted(found, key=lambda d: -float(d.box[2] * d.box[3]))

    def close(self) -> None:
        pass


class FakeMesh:
    """A frontal face: the points pose and landmarks read, at fixed places in the box."""

    def landmarks(self, rgb: np.ndarray, det: Detection) -> tuple[np.ndarray, float]:
        x, y, w, h = (float(v) for v in det.box)
        mesh = np.zeros((468, 3), dtype=np.float32)
        mesh[:, :2] = (x + w / 2, y + h / 2)
        for index, (fx, fy) in _MESH_POINTS.items():
            mesh[index, :2] = (x + fx * w, y + fy * h)
        return mesh, 0.99


class FakeEmbedder:
    """The face's colour, centred on grey, as a unit vector."""

    version = "fake-1.0"
    dim = 3
    similarity = CALIBRATION

    @property
    def user_similarity(self) -> dict[int, SimilarityCalibration]:
        return {1: CALIBRATION}

    def crop(self, rgb: np.ndarray, face: FaceGeometry) -> np.ndarray:
        x, y, w, h = (int(v) for v in face.box)
        return cv2.resize(rgb[y:y + h, x:x + w], (CHIP, CHIP), interpolation=cv2.INTER_NEAREST)

    def embed(self, chip: np.ndarray) -> np.ndarray:
        vector = chip.reshape(-1, 3).mean(axis=0) - BACKGROUND
        return (vector / np.linalg.norm(vector)).astype(np.float32)


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, uvicorn.Server]]:
    """The real app with these fake models on a free loopback port, in a thread: (url, server)."""
    from edge.server.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(settings, make_pipeline=fake_pipeline), host="127.0.0.1",
                                           port=port, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the app did not start"
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)


def fake_pipeline(settings: object = None, *, observe: Callable[[dict[str, float]], None] | None = None
                  ) -> FacePipeline:
    """A pipeline of fakes; takes the arguments of `FacePipeline.from_settings`, so the daemon can make it."""
    return FacePipeline(FakeDetector(), FakeMesh(), FakeEmbedder(), min_face_presence=0.5, observe=observe)
