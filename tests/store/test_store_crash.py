"""kill -9 at random moments: every acknowledged add/delete survives and no index file is served corrupt."""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from store_support import DIM, MODEL, OpenStore

from edge.store import FaceNotFound

WORKER = Path(__file__).with_name("crash_worker.py")
ROOT = Path(__file__).parents[2]
ROUNDS = 8
STARTUP_TIMEOUT_S = 60


def _run_and_kill(state_dir: Path, seed: int, delay_s: float) -> list[str]:
    """Start the worker, SIGKILL it delay_s after it opened the store, return the lines it completed.

    Its output goes to a file, not a pipe: a full pipe would park the worker in print() and let
    the kill land only at quiet moments.
    """
    log = state_dir.parent / f"worker-{seed}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(WORKER), str(state_dir), str(seed)], stdout=out,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not log.read_text().startswith("READY") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay_s)
        proc.kill()
        proc.wait()
    lines = log.read_text().split("\n")[:-1]  # the last piece is empty or a line cut short by the kill
    assert lines[:1] == ["READY"], f"worker did not start: {lines[:3]}"
    return lines[1:]


@pytest.mark.sqlite_only
def test_acknowledged_writes_survive_sigkill(open_store: OpenStore, state_dir: Path) -> None:
    seeder = random.Random(20240517)
    store = open_store(exact_max=0)
    store.create_collection("c", face_model_version=MODEL, dim=DIM, arn="arn:c")
    store.close()
    alive: dict[str, np.ndarray] = {}
    deleted: set[str] = set()
    outcomes = []
    for round_ in range(1, ROUNDS + 1):
        for line in _run_and_kill(state_dir, round_, seeder.uniform(0.05, 1.0)):
            kind, *rest = line.split(" ")
            if kind == "A":
                alive[rest[0]] = np.frombuffer(base64.b64decode(rest[1]), dtype=np.float32)
            elif kind == "X":
                alive.pop(rest[0])
            elif kind == "D":
                deleted.add(rest[0])

        store = open_store(exact_max=0)
        recovery = store.recovery["c"]
        outcomes.append(recovery.kind)
        # Atomic saves mean a kill never leaves a file that fails its checks: at worst none was saved yet.
        assert recovery.kind in ("loaded", "replayed", "exact") or recovery.detail == "no saved index", recovery
        assert store.face_count("c") >= len(alive)
        for face_id, vector in alive.items():
            hit = store.search("c", vector, model_version=MODEL, k=1)[0]
            assert hit.face.face_id == face_id and hit.similarity > 0.9999
        for face_id in deleted:
            with pytest.raises(FaceNotFound):
                store.get_face("c", face_id)
        store.close()
    assert len(alive) > 50 and "replayed" in outcomes, (len(alive), outcomes)
