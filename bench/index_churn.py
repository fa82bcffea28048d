"""Search quality of an HNSW graph as faces come and go, beside a graph built afresh over the same faces.

Rounds of: a fraction of the faces deleted, a checkpoint (the graph saved, which takes the deleted faces'
vectors out of the file, and loaded again, as the store does), and as many faces enrolled. Then recall@1 of
fresh samples of enrolled people against exact search, the faces whose own vector does not find them first,
and the search time, for the churned graph and for one built over the surviving faces (what compaction
gives). Results are merged into bench/results/index_churn.json.

    python -m bench.index_churn --faces 30000 --rounds 4 --fraction 0.05
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.store_scale import FACES_PER_IDENTITY, RESULTS, write_runs
from bench.synthetic import SyntheticFaces
from edge.store.index import HnswIndex, HnswParams
from edge.store.models import CollectionRecord

DIM = 128
RECORD = CollectionRecord("churn", "arn:churn", "bench", DIM, 0.0, "churn")


def _quality(index: HnswIndex, faces: dict[int, np.ndarray], probes: np.ndarray) -> dict[str, Any]:
    labels, stored = np.fromiter(faces, dtype=np.int64), np.stack(list(faces.values()))
    truth = labels[np.concatenate([np.argmax(chunk @ stored.T, axis=1) for chunk in np.array_split(probes, 10)])]
    latencies, right = [], 0
    for probe, want in zip(probes, truth, strict=True):
        began = time.perf_counter()
        found = index.search(probe, 1)[0]
        latencies.append(time.perf_counter() - began)
        right += int(found[0] == want)
    lost = sum(int(index.search(vector, 1)[0][0] != label) for label, vector in faces.items())
    return {"recall_at_1": right / len(probes), "lost": lost, "p50_ms": round(1000 * float(np.median(latencies)), 3),
            "elements": index.element_count, "deleted": index.deleted, "ef": index.ef}


def churn(size: int, rounds: int, fraction: float, queries: int, seed: int) -> dict[str, Any]:
    identities = -(-size // FACES_PER_IDENTITY)
    syn = SyntheticFaces(DIM, identities, seed=seed)
    rng = np.random.default_rng(seed)
    vectors = syn.sample(np.arange(size) // FACES_PER_IDENTITY, stream=0)
    faces = {label: vectors[label] for label in range(size)}
    params = HnswParams()
    index = HnswIndex.build(DIM, params, np.arange(size, dtype=np.int64), vectors)
    label = size
    with tempfile.TemporaryDirectory() as scratch:
        for stream in range(1, rounds + 1):
            doomed = rng.choice(np.fromiter(faces, dtype=np.int64), int(fraction * len(faces)), replace=False)
            index.remove(doomed)
            for gone in doomed.tolist():
                del faces[gone]
            index.save(Path(scratch), RECORD, change_seq=stream)
            index, _ = HnswIndex.load(Path(scratch), RECORD, params)
            enrolled = syn.sample(rng.integers(0, identities, len(doomed)), stream=stream)
            new = np.arange(label, label + len(doomed), dtype=np.int64)
            index.add(new, enrolled)
            faces.update(zip(new.tolist(), enrolled, strict=True))
            label += len(doomed)
    probes = syn.sample(rng.integers(0, identities, queries), stream=rounds + 1)
    rebuilt = HnswIndex.build(DIM, params, np.fromiter(faces, dtype=np.int64), np.stack(list(faces.values())))
    row = {"faces": size, "rounds": rounds, "fraction": fraction, "queries": queries, "seed": seed,
           "churned": _quality(index, faces, probes), "rebuilt": _quality(rebuilt, faces, probes)}
    print(json.dumps(row), flush=True)
    return row


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["faces"], row["rounds"], row["fraction"], row["seed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=0.05, help="of the faces deleted each round")
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--seeds", default="0", help="comma-separated: one run each")
    parser.add_argument("--out", type=Path, default=RESULTS / "index_churn.json")
    args = parser.parse_args()
    rows = [churn(args.faces, args.rounds, args.fraction, args.queries, int(seed)) for seed in args.seeds.split(",")]
    write_runs(args.out, rows, _key)


if __name__ == "__main__":
    main()
