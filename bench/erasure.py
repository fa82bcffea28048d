"""What an erasure costs: DeleteFaces and DeleteUser until nothing of them is left on disk, by store size.

The store scrubs after every deletion: deleted rows are zeroed where they lie (secure_delete), the
database is rewritten (VACUUM, which also drops the copies b-tree rebalancing left in free space),
index files are saved without the deleted vectors and the write-ahead log is truncated. This times
`delete_faces` + `erase()` of one face and `delete_user` + `erase()` of one user, the way the
operations layer calls them, on stores of clustered synthetic faces (HNSW above `exact_max`, as in
production), and the same deletions without the rewrite for comparison. Results go to
bench/results/erasure.json.

    python -m bench.erasure --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import cpu_model
from bench.synthetic import SyntheticFaces, new_faces
from edge.store import Store

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "bench-model"
BATCH = 10_000
REPEATS = 5


def timed(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure(size: int, dim: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        with Store(state, checkpoint_interval_s=None, reserve_bytes=0) as store:
            store.create_collection("c", face_model_version=MODEL, dim=dim, arn="arn")
            faces = SyntheticFaces(dim, size // 5 + 1, seed=3)
            ids: list[str] = []
            for start in range(0, size, BATCH):
                vectors = faces.sample(np.arange(start, min(size, start + BATCH)) // 5, stream=start)
                ids += [f.face_id for f in store.add_faces("c", new_faces(vectors), model_version=MODEL)]
            for i in range(REPEATS):
                store.create_user("c", f"user-{i}")
            store.checkpoint()
            db_bytes = (state / "store.sqlite3").stat().st_size

            def delete_face(i: int) -> None:
                store.delete_faces("c", [ids[i]])
                assert store.erase()

            def delete_user(i: int) -> None:
                store.delete_user("c", f"user-{i}")
                assert store.erase()

            def delete_face_unscrubbed(i: int) -> None:  # what a plain checkpoint costs, for comparison
                store.delete_faces("c", [ids[REPEATS + i]])
                store._erasure_due = False
                store.checkpoint()

            face = [timed(lambda i=i: delete_face(i)) for i in range(REPEATS)]
            user = [timed(lambda i=i: delete_user(i)) for i in range(REPEATS)]
            plain = [timed(lambda i=i: delete_face_unscrubbed(i)) for i in range(REPEATS)]
    return {"faces": size, "dim": dim, "db_mb": round(db_bytes / 1e6, 1),
            "delete_faces_and_scrub_ms": round(1000 * statistics.median(face), 1),
            "delete_user_and_scrub_ms": round(1000 * statistics.median(user), 1),
            "delete_faces_checkpoint_without_rewrite_ms": round(1000 * statistics.median(plain), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(size, args.dim))
        print(rows[-1], flush=True)
    result = {"repeats": REPEATS, "rows": rows,
              "machine": {"cpu": cpu_model(), "python": platform.python_version()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "erasure.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
