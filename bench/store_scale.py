"""How the face store scales: build time, search latency, recall, memory, disk and start-up.

For each size and dimension it enrols clustered synthetic faces through Store.add_faces (SQLite and
HNSW, as in production), closes the store, then reopens it in a fresh process so that start-up time
and resident memory are the serving process's own, not the builder's.  Recall@1 compares the store's
top hit with an exact scan of all vectors.  Results are merged into bench/results/store_scale.json.

Each store is built once and served once per search breadth in `--efs`; `auto` is the store's own
size-scaled breadth (`edge.store.index.auto_ef`), what a daemon on its defaults uses.

    python -m bench.store_scale --sizes 100000,1000000 --dims 128,512 --efs auto,256,512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import cpu_model
from bench.synthetic import SyntheticFaces, new_faces
from edge.store import HnswParams, Store
from edge.store.index import HNSWLIB_VERSION, ExactIndex, auto_ef, graph_dim
from edge.store.store import RESERVE_FILE

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "bench-model"
COLLECTION = "bench"
FACES_PER_IDENTITY = 5
BATCH = 10_000
"""Faces per add_faces call, i.e. per SQLite transaction."""
K = 10
QUERY_STREAM = 2**31 - 1
"""Noise stream of the queries: fresh samples of enrolled identities, never an enrolled vector."""


def _memory_mb() -> dict[str, float]:
    """Resident and peak resident memory of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def _disk_bytes(state_dir: Path) -> dict[str, int]:
    sizes = {"db": 0, "index": 0}
    for path in state_dir.rglob("*"):
        if path.is_file() and path.name != RESERVE_FILE:  # zeros held for erasures, not the store's size
            sizes["index" if path.parent != state_dir else "db"] += path.stat().st_size
    return sizes


def _percentile_ms(seconds: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(seconds, q)), 3)


def serve(state_dir: Path, queries_file: Path, params: HnswParams) -> dict[str, Any]:
    """Child process: open the store, then search every query once, single-threaded."""
    start = time.perf_counter()
    store = Store(state_dir, hnsw=params, checkpoint_interval_s=None)
    open_s = time.perf_counter() - start
    after_open = _memory_mb()["VmRSS"]
    queries = np.load(queries_file)
    store.search(COLLECTION, queries[0], model_version=MODEL, k=K)  # first touch of the pages
    latencies, top1, top1_similarity = [], [], []
    for query in queries:
        start = time.perf_counter()
        hits = store.search(COLLECTION, query, model_version=MODEL, k=K)
        latencies.append(time.perf_counter() - start)
        top1.append(hits[0].face.face_id)
        top1_similarity.append(hits[0].similarity)
    store.close()
    return {
        "open_s": round(open_s, 3),
        "recovery": store.recovery[COLLECTION].kind,
        "search_p50_ms": _percentile_ms(latencies, 50),
        "search_p99_ms": _percentile_ms(latencies, 99),
        "rss_after_open_mb": round(after_open, 1),
        "rss_peak_mb": round(_memory_mb()["VmHWM"], 1),
        "top1": top1,
        "top1_similarity": top1_similarity,
    }


def measure(
    size: int, dim: int, queries: int, workdir: Path, params: HnswParams, efs: list[int | None],
    built: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Build one store, then serve it once per search breadth `ef`; one result row per ef.

    `built`: the build row of a store this benchmark left in `workdir` before; it is served again (at
    other breadths) instead of rebuilt, and a search counts as right when its top similarity is the
    exact one (the faces' ids of that build are not kept)."""
    state_dir = workdir / f"store-{size}-{dim}"
    syn = SyntheticFaces(dim, -(-size // FACES_PER_IDENTITY), seed=size + dim)
    data = np.empty((size, dim), dtype=np.float32)
    face_ids: list[str] = []
    if built is not None:
        for start in range(0, size, BATCH):
            rows = np.arange(start, min(start + BATCH, size))
            data[rows] = syn.sample(rows // FACES_PER_IDENTITY, stream=start)
        build_s, close_s = built["build_s"], built["close_s"]
    else:
        shutil.rmtree(state_dir, ignore_errors=True)
        store = Store(state_dir, hnsw=params, checkpoint_interval_s=None)
        store.create_collection(COLLECTION, face_model_version=MODEL, dim=dim, arn=f"arn:bench:{size}:{dim}")
        build_s = 0.0
        for start in range(0, size, BATCH):
            rows = np.arange(start, min(start + BATCH, size))
            data[rows] = syn.sample(rows // FACES_PER_IDENTITY, stream=start)
            begin = time.perf_counter()
            face_ids += [f.face_id for f in store.add_faces(COLLECTION, new_faces(data[rows]), model_version=MODEL)]
            build_s += time.perf_counter() - begin
        begin = time.perf_counter()
        store.close()
        close_s = time.perf_counter() - begin

    identities = np.random.default_rng(size * dim).integers(0, len(syn.centres), queries)
    probe = syn.sample(identities, stream=QUERY_STREAM)
    truth_parts, best_parts = [], []
    for chunk in np.array_split(probe, 20):
        scores = chunk @ data.T
        truth_parts.append(np.argmax(scores, axis=1))
        best_parts.append(np.max(scores, axis=1))
    truth, best = np.concatenate(truth_parts), np.concatenate(best_parts)
    exact = ExactIndex(dim)
    exact.add(np.arange(size, dtype=np.int64), data)
    exact_latencies = []
    for query in probe[:200]:
        begin = time.perf_counter()
        exact.search(query, K)
        exact_latencies.append(time.perf_counter() - begin)
    del exact, data

    queries_file = workdir / "queries.npy"
    np.save(queries_file, probe)
    row_of = {face_id: row for row, face_id in enumerate(face_ids)}
    results = []
    for ef in efs:
        flags = ["--m", str(params.m), "--ef-construction", str(params.ef_construction), "--efs", str(ef or "auto")]
        child = subprocess.run(
            [sys.executable, "-m", "bench.store_scale", "--serve", str(state_dir), "--queries-file", str(queries_file),
             *flags],
            cwd=Path(__file__).resolve().parents[1],  # the repository root, where `bench` is a package
            check=True,
            capture_output=True,
            text=True,
        )
        served = json.loads(child.stdout)
        top1, top_similarity = served.pop("top1"), np.array(served.pop("top1_similarity"))
        if built is None:
            top_rows = np.array([row_of[face_id] for face_id in top1])
            recall, same_person = np.mean(top_rows == truth), np.mean(top_rows // FACES_PER_IDENTITY == identities)
        else:
            recall, same_person = np.mean(np.abs(top_similarity - best) < 1e-5), np.nan
        results.append(
            {
                "faces": size,
                "dim": dim,
                "m": params.m,
                "ef_construction": params.ef_construction,
                "ef": ef or auto_ef(size),
                "graph_dim": graph_dim(dim),
                "ef_auto": ef is None,
                "build_s": round(build_s, 1),
                "faces_per_s": round(size / build_s),
                "close_s": round(close_s, 2),
                **served,
                "exact_p50_ms": _percentile_ms(exact_latencies, 50),
                "recall_at_1": round(float(recall), 4),
                "identity_at_1": None if built is not None else round(float(same_person), 4),
                "disk_bytes": _disk_bytes(state_dir),
                "queries": queries,
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| faces | dim | M | ef | build s | faces/s | open s | p50 ms | p99 ms | exact p50 ms | recall@1 "
        "| same person@1 | RSS open MB | RSS peak MB | db MB | index MB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['faces']:,} | {r['dim']} | {r['m']} | {r['ef']}{' (auto)' if r['ef_auto'] else ''} "
            f"| {r['build_s']} | {r['faces_per_s']:,} | {r['open_s']} "
            f"| {r['search_p50_ms']} | {r['search_p99_ms']} | {r['exact_p50_ms']} | {r['recall_at_1']} "
            f"| {r['identity_at_1']} "
            f"| {r['rss_after_open_mb']:,.0f} | {r['rss_peak_mb']:,.0f} | {r['disk_bytes']['db'] / 2**20:,.0f} "
            f"| {r['disk_bytes']['index'] / 2**20:,.0f} |"
        )
    return "\n".join(lines)


def _key(row: dict[str, Any]) -> tuple[int, ...]:
    """Runs with another graph or breadth are kept beside these; the same one is replaced."""
    return (row["faces"], row["dim"], row.get("m", 0), row.get("ef_construction", 0), row["ef"],
            row.get("ef_auto", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="comma-separated face counts")
    parser.add_argument("--dims", default="128,512", help="comma-separated embedding dimensions")
    parser.add_argument("--queries", type=int, default=2000)
    defaults = HnswParams()
    parser.add_argument("--m", type=int, default=defaults.m)
    parser.add_argument("--ef-construction", type=int, default=defaults.ef_construction)
    parser.add_argument("--efs", default="auto", help="comma-separated search breadths, `auto` for the store's own")
    parser.add_argument("--workdir", type=Path, help="where stores are built (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true",
                        help="serve the stores an earlier run left in --workdir at other --efs instead of rebuilding")
    parser.add_argument("--out", type=Path, default=RESULTS / "store_scale.json")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    efs = [None if ef == "auto" else int(ef) for ef in args.efs.split(",")]
    params = HnswParams(m=args.m, ef_construction=args.ef_construction, ef=efs[0])
    if args.serve:
        print(json.dumps(serve(args.serve, args.queries_file, params)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="store-scale-"))
    previous = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    rows = []
    try:
        for size in map(int, args.sizes.split(",")):
            for dim in map(int, args.dims.split(",")):
                built = None
                if args.reuse:
                    built = next((r for r in previous if (r["faces"], r["dim"], r.get("m"), r.get("ef_construction"))
                                  == (size, dim, params.m, params.ef_construction)), None)
                    if built is None or not (workdir / f"store-{size}-{dim}").is_dir():
                        raise SystemExit(f"--reuse: no store of {size} x {dim} with these parameters in {workdir}")
                rows += measure(size, dim, args.queries, workdir, params, efs, built)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    write_runs(args.out, rows, _key)
    print(_markdown(rows))


def write_runs(path: Path, rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Any, ...]]) -> None:
    """Merge `rows` into the runs a results file holds (a run with the same key is replaced), with this machine's
    description."""
    previous = json.loads(path.read_text())["runs"] if path.is_file() else []
    fresh = {key(r) for r in rows}
    runs = sorted([r for r in previous if key(r) not in fresh] + rows, key=key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "hnswlib": HNSWLIB_VERSION},
        "runs": runs,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
