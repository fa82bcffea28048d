"""kill -9 while a device applies its feed: each batch and its sequence are wholly there or wholly absent."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from feed_batches import COLLECTION, MODEL, expected_faces, face_ids, vectors

from edge.store import Store

WORKER = Path(__file__).with_name("apply_worker.py")
ROOT = Path(__file__).parents[2]
ROUNDS = 6


def _run_and_kill(state_dir: Path, delay_s: float) -> int:
    """Start the worker, SIGKILL it delay_s after it opened the store; returns the last sequence it printed."""
    log = state_dir.parent / "worker.log"
    with log.open("w") as out:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKER.parent), str(ROOT / "tests")])}
        proc = subprocess.Popen([sys.executable, str(WORKER), str(state_dir)], stdout=out, env=env)
        deadline = time.monotonic() + 60
        while "READY" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay_s)
        proc.kill()
        proc.wait()
    lines = [line.split() for line in log.read_text().split("\n")[:-1]]
    assert lines[:1] == [["READY"]], lines[:3]
    return max([int(line[1]) for line in lines if line[0] == "APPLIED"], default=-1)


def test_a_batch_is_wholly_applied_or_wholly_absent_after_sigkill(tmp_path: Path) -> None:
    seeder = random.Random(20261129)
    state_dir = tmp_path / "state"
    printed = -1
    for _ in range(ROUNDS):
        printed = max(printed, _run_and_kill(state_dir, seeder.uniform(0.2, 1.5)))
        with Store(state_dir, exact_max=500, checkpoint_interval_s=None) as store:
            state = store.sync_states().get(COLLECTION)
            if state is None:
                assert printed < 0
                continue
            assert state.applied_seq >= printed  # nothing acknowledged is lost
            stored = {f.face_id for f in store.list_faces(COLLECTION, limit=100_000)[0]}
            assert stored == expected_faces(state.applied_seq)  # and nothing half-applied is there
            batch = state.applied_seq
            if batch > 0:
                hit = store.search(COLLECTION, vectors(batch)[7], model_version=MODEL, k=1)[0]
                assert hit.face.face_id == face_ids(batch)[7] and hit.similarity > 0.9999
    assert printed >= 3, printed
