"""A deterministic stream of feed batches, shared by the crash worker and the test that checks its store."""

from __future__ import annotations

import numpy as np

from bench.synthetic import SyntheticFaces
from edge.store import BoundingBox, FaceRecord, FeedSlice, FeedUpdate

COLLECTION = "door"
SOURCE_UID = "central-uid-1"
MODEL = "edge-test-1"
DIM = 128
PER_BATCH = 200
_SYN = SyntheticFaces(DIM, 500, seed=7)
_BOX = BoundingBox(0.2, 0.3, 0.4, 0.1)


def face_ids(batch: int) -> list[str]:
    return [f"face-{batch:05d}-{i:04d}" for i in range(PER_BATCH)]


def deleted_by(batch: int) -> list[str]:
    """Each batch deletes every other face of the batch three before it."""
    return face_ids(batch - 3)[::2] if batch > 3 else []


def expected_faces(seq: int) -> set[str]:
    """The face ids a store holds once it applied every batch up to sequence `seq` (batch k ends at k)."""
    alive: set[str] = set()
    for batch in range(1, seq + 1):
        alive.update(face_ids(batch))
        alive.difference_update(deleted_by(batch))
    return alive


def vectors(batch: int) -> np.ndarray:
    return _SYN.sample(np.arange(PER_BATCH) % 500, stream=batch)


def update(batch: int) -> FeedUpdate:
    """Batch `batch` covers (batch - 1, batch]; batch 0 is the (empty) snapshot that creates the copy."""
    faces = [FaceRecord(fid, COLLECTION, f"image-{batch}", f"ext-{fid}", _BOX, 99.0, MODEL, None, 0.0)
             for fid in (face_ids(batch) if batch else [])]
    changes = FeedSlice(max(batch - 1, 0), batch, faces, vectors(batch) if batch else np.zeros((0, DIM), np.float32),
                        [], deleted_by(batch), [])
    return FeedUpdate(COLLECTION, "http://central", SOURCE_UID, "arn", MODEL, DIM, snapshot=batch == 0,
                      changes=changes, valid_until=4e9, head_seq=batch)
