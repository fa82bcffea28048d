"""Median time per photo through edge-face's pipeline, beside face_recognition, in one run.

Both run on the same photos with the same thread count, interleaved photo by photo so that
a noisy neighbour slows both alike. Also measures the embedder's GMAC/s against the core's
measured fp32 matrix-multiply peak. Results go to bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import cpu_model, limit_threads

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak_gmacs(size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 GMAC/s of a square matrix product with the current BLAS threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return size**3 / best / 1e9


def run(data: Path, threads: int, photos: int, peer: bool) -> dict[str, Any]:
    limit_threads(threads)
    from edge.config import Settings
    from edge.vision.embedder import Embedder
    from edge.vision.pipeline import STAGES, FacePipeline

    settings = Settings().pipeline.model_copy(update={"threads": threads})
    # The default for this CPU, and fp32 without the mirror pass (the default on AVX2-only CPUs).
    fp32 = settings.model_copy(update={"precision": "fp32", "flip_augment": "off"})
    configs = {"default": FacePipeline.from_settings(settings), "fp32": FacePipeline.from_settings(fp32)}
    pipeline = configs["default"]
    paths = sorted(data.glob("*/*.jpg"))
    paths = paths[:: max(1, len(paths) // photos)][:photos]
    fr = None
    if peer:
        from edge.evaluation.peer import import_face_recognition

        fr = import_face_recognition()
    ours: dict[str, dict[str, list[float]]] = {name: {s: [] for s in (*STAGES, "total")} for name in configs}
    theirs: dict[str, list[float]] = {s: [] for s in ("decode", "detect", "encode", "total")}
    for path in paths * 2:  # the first pass warms caches and is discarded below
        data_bytes = path.read_bytes()
        for name, pipe in configs.items():
            start = time.perf_counter()
            analysis = pipe.analyse(data_bytes, max_faces=1)
            total = time.perf_counter() - start
            for stage, seconds in analysis.timings.items():
                ours[name][stage].append(1000 * seconds)
            ours[name]["total"].append(1000 * total)
        if fr is not None:
            t0 = time.perf_counter()
            img = fr.load_image_file(str(path))
            t1 = time.perf_counter()
            boxes = fr.face_locations(img)
            t2 = time.perf_counter()
            if boxes:
                largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
                fr.face_encodings(img, known_face_locations=[largest])
            t3 = time.perf_counter()
            for key, value in zip(theirs, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                theirs[key].append(1000 * value)
    half = len(paths)
    result: dict[str, Any] = {
        "cpu": cpu_model(), "threads": threads, "photos": half,
        "edge_face_ms": {name: {k: float(np.median(v[half:])) for k, v in stages.items()}
                         for name, stages in ours.items()},
    }
    if fr is not None:
        result["face_recognition_ms"] = {k: float(np.median(v[half:])) for k, v in theirs.items()}
        result["speedup"] = {name: result["face_recognition_ms"]["total"] / stages["total"]
                             for name, stages in result["edge_face_ms"].items()}
    embedder = pipeline.embedder
    assert isinstance(embedder, Embedder)  # from_settings builds the real one
    result["embedder"] = {"default": embedder.artifact.name, "flip": embedder.flip_augment,
                          "fp32": embedder_roofline(embedder.artifact.family, settings.model_dir, threads)}
    return result


def embedder_roofline(family: str, model_dir: Path, threads: int, runs: int = 100) -> dict[str, float]:
    """The fp32 embedder's GMAC/s on one chip against the core's fp32 matrix-multiply peak."""
    from edge.vision.embedder import Embedder
    from edge.vision.models import ModelCatalog
    from edge.vision.runtime import select_backend

    catalog = ModelCatalog(model_dir)
    art = catalog.find("embedder", family, "fp32")
    embedder = Embedder(catalog, art, backend=select_backend(["cpu"]), threads=threads)
    chip = np.zeros((*art.input_size, 3), dtype=np.uint8)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        embedder.raw(chip)
        times.append(time.perf_counter() - start)
    ms = float(np.median(times) * 1000)
    gmac = float(art.info["gmac"])
    peak = matmul_peak_gmacs()
    return {"ms": ms, "gmac": gmac, "achieved_gmacs": gmac / (ms / 1000), "matmul_peak_gmacs": peak,
            "fraction_of_peak": gmac / (ms / 1000) / peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="a folder laid out like faces-dev")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    args = parser.parse_args()
    result = run(args.data, args.threads, args.photos, args.peer)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "pipeline.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
