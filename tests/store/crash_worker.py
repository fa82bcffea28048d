"""Enrols and deletes faces forever, printing each operation only after the store acknowledged it.

Run by test_store_crash.py, which SIGKILLs it at random moments: every printed line is a promise the
store must keep after restart.  Lines: "READY", "A <face_id> <base64 vector>", "D <face_id>".
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import numpy as np
from store_support import DIM, MODEL

from bench.synthetic import SyntheticFaces, new_faces
from edge.store import Store


def main(state_dir: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    syn = SyntheticFaces(DIM, 500, seed=3)
    # Frequent checkpoints and eager compaction, so kills also land in saves and rebuilds.
    store = Store(state_dir, exact_max=0, checkpoint_interval_s=0.05, compact_ratio=0.05)
    print("READY", flush=True)
    acknowledged: list[str] = []
    for step in range(1_000_000):
        vectors = syn.sample(rng.integers(0, 500, rng.integers(1, 4)), stream=seed * 1_000_000 + step)
        for face, vector in zip(store.add_faces("c", new_faces(vectors), model_version=MODEL), vectors, strict=True):
            acknowledged.append(face.face_id)
            print("A", face.face_id, base64.b64encode(vector.tobytes()).decode(), flush=True)
        if step % 4 == 3:
            victim = acknowledged.pop(int(rng.integers(len(acknowledged))))
            print("X", victim, flush=True)
            store.delete_faces("c", [victim])
            print("D", victim, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
