"""The access log: kept through a crash, pruned to its retention, and erased with the people it names."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from store_support import DIM, MODEL, OpenStore

from bench.synthetic import SyntheticFaces, new_faces
from edge.store import Store
from edge.store.access_log import LOG_FILE, AccessLog, Decision


def _decision(face_id: str | None, user_id: str | None = None, at: float | None = None) -> Decision:
    return Decision(at=at or time.time(), operation="SearchFacesByImage", key_id="AKIAKIOSK", collection_id="door",
                    face_id=face_id, user_id=user_id, external_image_id=None, similarity=91.0 if face_id else None,
                    threshold=80.0)


def _files_holding(state_dir: Path, text: str) -> list[str]:
    return sorted(p.name for p in state_dir.rglob("*") if p.is_file() and text.encode() in p.read_bytes())


def _door(store: Store, count: int) -> list[str]:
    store.create_collection("door", face_model_version=MODEL, dim=DIM, arn="arn:door")
    vectors = SyntheticFaces(DIM, count, seed=3).sample(np.arange(count), stream=0)
    return [f.face_id for f in store.add_faces("door", new_faces(vectors), model_version=MODEL)]


def test_deleting_a_face_or_a_user_erases_their_decisions(open_store: OpenStore, state_dir: Path) -> None:
    store = open_store()
    kept, erased = _door(store, 2)
    store.create_user("door", "staff-0042")
    store.associate_faces("door", "staff-0042", [kept])
    for decision in (_decision(kept, "staff-0042"), _decision(erased), _decision(None)):
        store.access_log.record(decision)
    assert _files_holding(state_dir, erased), "the scan must see the row before it is erased"
    store.delete_faces("door", [erased])
    store.delete_user("door", "staff-0042")
    assert [d.face_id for d in store.access_log.query()] == [None]
    log_files = [name for name in (*_files_holding(state_dir, erased), *_files_holding(state_dir, "staff-0042"))
                 if name.startswith(LOG_FILE)]
    assert log_files == []

def test_rows_of_people_deleted_before_a_crash_are_erased_at_the_next_start(state_dir: Path) -> None:
    store = Store(state_dir, checkpoint_interval_s=None)
    kept, erased = _door(store, 2)
    store.delete_faces("door", [erased])
    store.close()
    # As if the daemon had died between the deletion's commit and the log's erasure.
    log = AccessLog(state_dir / LOG_FILE)
    for decision in (_decision(kept), _decision(erased), _decision(None, "a-user-deleted-too")):
        log.record(decision)
    log.close()
    store = Store(state_dir, checkpoint_interval_s=None)
    assert [d.face_id for d in store.access_log.query()] == [kept]
    store.close()

def test_decisions_older_than_the_retention_are_pruned(open_store: OpenStore) -> None:
    store = open_store(access_log_days=30)
    now = time.time()
    store.access_log.record(_decision(None, at=now - 31 * 86400))
    store.access_log.record(_decision(None, at=now - 29 * 86400))
    store.checkpoint()
    assert [round((now - d.at) / 86400) for d in store.access_log.query()] == [29]


_WRITER = """
import sys, time
from pathlib import Path
from edge.store.access_log import AccessLog, Decision
log = AccessLog(Path(sys.argv[1]))
for i in range(100_000):
    log.record(Decision(time.time(), "SearchFacesByImage", "AKIAKIOSK", "door", f"face-{i}", None, None, 90.0, 80.0))
    print(i, flush=True)
"""


def test_every_acknowledged_decision_survives_kill_9(tmp_path: Path) -> None:
    """A decision is acknowledged once `record` returns (the writer then prints it); SIGKILL keeps it."""
    path = tmp_path / LOG_FILE
    out = tmp_path / "acknowledged.txt"
    with out.open("w") as printed:
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=printed)
        deadline = time.monotonic() + 60
        while out.read_text().count("\n") < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    acknowledged = out.read_text().count("\n")
    assert acknowledged >= 200
    log = AccessLog(path)
    assert len(log.query()) >= acknowledged
    log.close()
