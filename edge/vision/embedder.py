"""Face embedders: an aligned crop in, a unit vector out.

Each family declares the crop it was trained on; the artifact (and so its precision) is
picked from the model catalog for the backend that runs it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from edge.similarity import SimilarityCalibration
from edge.vision.align import MESH_DLIB5, box_crop, dlib_chip
from edge.vision.models import Artifact, ModelCatalog
from edge.vision.runtime import Backend, LiteRTSession, spread_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceGeometry:
    """Where a face is in the working image: detector box and FaceMesh points."""

    box: np.ndarray
    mesh: np.ndarray


def _dlib_crop(rgb: np.ndarray, face: FaceGeometry, size: int) -> np.ndarray:
    return dlib_chip(rgb, face.mesh[list(MESH_DLIB5), :2], size=size, padding=0.25)


def _facenet_crop(rgb: np.ndarray, face: FaceGeometry, size: int) -> np.ndarray:
    return box_crop(rgb, face.box, size=size, margin=0.2)


_CROPS = {"dlib_resnet_v1": _dlib_crop, "facenet_casia": _facenet_crop}


def unit(vec: np.ndarray) -> np.ndarray:
    return (vec / np.linalg.norm(vec)).astype(np.float32)


class Embedder:
    """One embedder artifact on one backend."""

    def __init__(self, catalog: ModelCatalog, artifact: Artifact, *, backend: Backend, threads: int,
                 flip_augment: bool = False) -> None:
        self.artifact = artifact
        self._path = catalog.verified_path(artifact)
        self._backend = backend
        self._crop = _CROPS[artifact.family]
        normalise = artifact.info.get("input", {})
        self._mean = float(normalise.get("mean", 0.0))
        self._std = float(normalise.get("std", 1.0))
        self.flip_augment = flip_augment
        # Accelerator models are compiled for one input shape; on the CPU the pair is a batch of two where the
        # model's graph allows it (`_session` finds out).
        self._pairs = flip_augment and backend.delegate_library is None
        self._threads = threads
        self._sessions: dict[int, LiteRTSession] = {}
        self._sessions_lock = threading.Lock()
        self._session(threads)

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def dim(self) -> int:
        """Length of the embedding; the manifest records it for every embedder."""
        if self.artifact.embedding_size is None:
            raise ValueError(f"{self.artifact.name} has no embedding size in the manifest")
        return self.artifact.embedding_size

    @property
    def size(self) -> int:
        return self.artifact.input_size[0]

    def crop(self, rgb: np.ndarray, face: FaceGeometry) -> np.ndarray:
        return self._crop(rgb, face, self.size)

    @property
    def similarity(self) -> SimilarityCalibration | None:
        """The cosine -> Similarity map fitted for this embedder in this flip mode."""
        return self.artifact.similarity.get(self._mode)

    @property
    def user_similarity(self) -> dict[int, SimilarityCalibration]:
        """Maps for a photo against the centroid of a user's n faces, by n; n = 1 is the face map."""
        face = self.similarity
        users = self.artifact.user_similarity.get(self._mode, {})
        return {1: face, **users} if face is not None and users else {}

    @property
    def _mode(self) -> str:
        return "flip" if self.flip_augment else "single"

    def embed(self, chip: np.ndarray) -> np.ndarray:
        """The L2-normalised embedding of one aligned chip (RGB uint8).

        With flip augmentation on the CPU the chip and its mirror image run as one batch of two: one
        invocation reuses each layer's weights for both and gives the same numbers as two.
        """
        if not self.flip_augment:
            return unit(self.raw(chip))
        pair = np.stack([chip, chip[:, ::-1]])
        if self._pairs:
            return unit(self._outputs(pair).sum(axis=0))
        return unit(self.raw(pair[0]) + self.raw(pair[1]))

    def raw(self, chip: np.ndarray) -> np.ndarray:
        """The model's output for one chip, as it comes (dlib's is not unit length)."""
        return self._outputs(chip[None])[0]

    def _outputs(self, chips: np.ndarray) -> np.ndarray:
        tensor = (chips.astype(np.float32) - self._mean) / self._std
        session = self._session(max(self._threads, spread_threads() or 0))
        return session.run(tensor)[0].reshape(len(chips), -1).astype(np.float64)

    def _session(self, threads: int) -> LiteRTSession:
        """The interpreter with this many threads, made on first use (an accelerator's keeps its own)."""
        if self._backend.delegate_library is not None:
            threads = self._threads
        with self._sessions_lock:
            session = self._sessions.get(threads)
            if session is None:
                session = self._backend.session(self._path, threads=threads)
                if self._pairs:
                    try:
                        session.run(np.zeros((2, *session.input_shape[1:]), dtype=np.float32))  # sized once
                    except RuntimeError as exc:  # a graph that fixes its batch at one (FaceNet's reshapes)
                        log.info("%s takes one chip at a time (%s); the mirror runs as a second pass",
                                 self.artifact.name, exc)
                        self._pairs = False
                        session = self._backend.session(self._path, threads=threads)
                self._sessions[threads] = session
            return session
