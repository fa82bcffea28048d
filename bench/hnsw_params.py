"""Which HNSW graph to build: recall@1 and latency of hnswlib alone over a sweep of search breadths.

The store's defaults (M, ef_construction, and the ef rule of `edge.store.index.auto_ef`) were chosen
with this: one graph per (size, M, ef_construction) of the clustered synthetic faces that
bench/store_scale.py enrols, built in the store's batches, then searched at each ef with fresh
samples of enrolled people, against exact search. No SQLite and no store around it, so a sweep
costs one graph build; bench/store_scale.py then checks the chosen settings through the store.
Results are appended to bench/results/hnsw_params.json.

    python -m bench.hnsw_params --size 1000000 --m 32 --ef-construction 200 --efs 64,96,128,192
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import hnswlib
import numpy as np

from bench.machine import cpu_model
from bench.store_scale import BATCH, FACES_PER_IDENTITY, QUERY_STREAM, RESULTS
from bench.synthetic import SyntheticFaces
from edge.store.index import HNSWLIB_VERSION, SPACE


def sweep(size: int, dim: int, m: int, ef_construction: int, efs: list[int], queries: int) -> list[dict[str, object]]:
    syn = SyntheticFaces(dim, -(-size // FACES_PER_IDENTITY), seed=size + dim)
    data = np.empty((size, dim), dtype=np.float32)
    for start in range(0, size, BATCH):
        batch = np.arange(start, min(start + BATCH, size))
        data[batch] = syn.sample(batch // FACES_PER_IDENTITY, stream=start)
    identities = np.random.default_rng(size * dim).integers(0, len(syn.centres), queries)
    probe = syn.sample(identities, stream=QUERY_STREAM)
    truth = np.concatenate([np.argmax(chunk @ data.T, axis=1) for chunk in np.array_split(probe, 20)])
    graph = hnswlib.Index(space=SPACE, dim=dim)
    graph.init_index(max_elements=size, M=m, ef_construction=ef_construction)
    began = time.perf_counter()
    for start in range(0, size, BATCH):
        graph.add_items(data[start:start + BATCH], np.arange(start, min(start + BATCH, size)))
    build_s = time.perf_counter() - began
    rows: list[dict[str, object]] = []
    for ef in efs:
        graph.set_ef(ef)
        graph.knn_query(probe[:50], k=10, num_threads=1)
        latencies, top = [], np.empty(queries, dtype=np.int64)
        for i, query in enumerate(probe):
            began = time.perf_counter()
            labels, _ = graph.knn_query(query, k=10, num_threads=1)
            latencies.append(time.perf_counter() - began)
            top[i] = labels[0][0]
        rows.append({"faces": size, "dim": dim, "m": m, "ef_construction": ef_construction, "ef": ef,
                     "build_s": round(build_s), "recall_at_1": float(np.mean(top == truth)),
                     "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 3),
                     "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 3), "queries": queries})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--efs", default="64,96,128,192")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS / "hnsw_params.json")
    args = parser.parse_args()
    rows = sweep(args.size, args.dim, args.m, args.ef_construction, [int(e) for e in args.efs.split(",")],
                 args.queries)
    previous = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_model(), "hnswlib": HNSWLIB_VERSION, "runs": previous + rows}, indent=2))


if __name__ == "__main__":
    main()
