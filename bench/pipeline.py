"""Time per photo through edge-face's pipeline, stage by stage, beside face_recognition, in one run.

Both run on the same photos (250x250 LFW photos and 640x480 kiosk frames, `bench.photos`) with the
same thread count, in blocks of fifty photos taken in turn, so that a noisy neighbour slows both alike
and each runs on the caches it keeps warm itself (`--block 1`: photo by photo). edge-face runs twice:
on this CPU's defaults and on fp32 without the mirror pass (the AVX2 default).

Each model is also invoked alone on an input of its shape right after the stage that runs it: what a
stage costs beyond its model is the pre- and post-processing around it (the letterbox, the anchor
decoding and suppression for detection; the region warp and the output mapping for FaceMesh; the
chip's normalisation for the embedder) and the caches the other stages left it. Then the levers:
MediaPipe's FaceDetector task against the LiteRT detector that replaced it, the embedder on one
thread against two (what a lone request gains from the second core of an idle device), the chip and
its mirror as one batch of two against two passes, and the embedder's GMAC/s against the core's fp32
matrix-multiply peak; and both libraries back to back against each photo after a pause, the cost
of an idle spell before a door's photo. Results go to bench/results/pipeline.json.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.pipeline --data ../shared/data/faces-dev --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import after_pauses, cpu_model, limit_threads
from bench.photos import photo_sets

RESULTS = Path(__file__).resolve().parent / "results"
#: The default for this CPU, and fp32 without the mirror pass (the default on AVX2-only CPUs).
FP32 = {"precision": "fp32", "flip_augment": "off"}


def configs(threads: int) -> dict[str, tuple[Any, Any]]:
    """Both configurations: name -> (settings, the pipeline built from them)."""
    from edge.config import Settings
    from edge.vision.pipeline import FacePipeline

    settings = Settings().pipeline.model_copy(update={"threads": threads})
    chosen = {"default": settings, "fp32": settings.model_copy(update=FP32)}
    return {name: (s, FacePipeline.from_settings(s)) for name, s in chosen.items()}


def real_embedder(pipe: Any) -> Any:
    """The pipeline's Embedder (from_settings builds the real one), for its artifact and flip mode."""
    from edge.vision.embedder import Embedder

    embedder = pipe.embedder
    assert isinstance(embedder, Embedder)
    return embedder


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


def median_ms(step: Callable[[], object], runs: int = 200, warmup: int = 10) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 3)


class ModelsAlone:
    """Each model of a pipeline in its own interpreter, invoked on an input of its shape and nothing else."""

    def __init__(self, settings: Any, pipe: Any, threads: int) -> None:
        from edge.vision.models import ModelCatalog
        from edge.vision.runtime import LiteRTSession

        catalog = ModelCatalog(settings.model_dir)
        embedder = real_embedder(pipe)
        self._runs: dict[str, tuple[Any, np.ndarray]] = {}
        for stage, artifact in (("detect", catalog.find("detector", f"blazeface_{settings.detector}")),
                                ("landmarks", catalog.find("landmarks", "face_mesh")),
                                ("embed", embedder.artifact)):
            session = LiteRTSession(catalog.verified_path(artifact), threads=threads)
            batch = 2 if stage == "embed" and embedder.flip_augment else 1  # the mirror pass rides along
            self._runs[stage] = session, np.full((batch, *session.input_shape[1:]), 0.5, dtype=np.float32)

    def time_once(self) -> dict[str, float]:
        times = {}
        for stage, (session, tensor) in self._runs.items():
            start = time.perf_counter()
            session.run(tensor)
            times[stage] = time.perf_counter() - start
        return times


def stage_times(pipes: dict[str, Any], alone: dict[str, ModelsAlone], photos: list[bytes],
                fr: Any, block: int) -> dict[str, Any]:
    """Median ms per stage of every config, of its models alone, and of face_recognition, the photos in
    blocks of `block` that each config and then face_recognition take in turn (1: photo by photo, where
    each one runs on the caches the others left)."""
    from edge.vision.pipeline import STAGES

    ours: dict[str, dict[str, list[float]]] = {name: {s: [] for s in (*STAGES, "total")} for name in pipes}
    models: dict[str, dict[str, list[float]]] = {name: {} for name in pipes}
    theirs: dict[str, list[float]] = {s: [] for s in ("decode", "detect", "encode", "total")}
    sequence = photos * 2  # the first pass warms caches and is discarded below
    for first in range(0, len(sequence), block):
        chunk = sequence[first:first + block]
        for name, pipe in pipes.items():
            for data in chunk:
                start = time.perf_counter()
                analysis = pipe.analyse(data, max_faces=1)
                total = time.perf_counter() - start
                for stage, seconds in analysis.timings.items():
                    ours[name][stage].append(1000 * seconds)
                ours[name]["total"].append(1000 * total)
                for stage, seconds in alone[name].time_once().items():
                    models[name].setdefault(stage, []).append(1000 * seconds)
        for data in chunk if fr is not None else ():
            for key, value in zip(theirs, peer_encode(fr, data), strict=True):
                theirs[key].append(1000 * value)
    half = len(photos)

    def medians(runs: dict[str, list[float]]) -> dict[str, float]:
        return {k: round(float(np.median(v[half:])), 3) for k, v in runs.items()}

    result: dict[str, Any] = {
        "photos": half,
        "block": block,
        "edge_face_ms": {name: medians(stages) for name, stages in ours.items()},
        "models_alone_ms": {name: medians(stages) for name, stages in models.items()},
    }
    result["outside_the_model_ms"] = {
        name: {stage: round(result["edge_face_ms"][name][stage] - ms, 3) for stage, ms in alone_ms.items()}
        for name, alone_ms in result["models_alone_ms"].items()}
    if fr is not None:
        result["face_recognition_ms"] = {k: round(float(np.median(v[half:])), 3) for k, v in theirs.items()}
        result["speedup"] = {name: round(result["face_recognition_ms"]["total"] / stages["total"], 2)
                             for name, stages in result["edge_face_ms"].items()}
    return result


def two_threads(settings: Any, pipe: Any, photos: list[bytes]) -> dict[str, Any]:
    """The embedder on one thread and on two, interleaved photo by photo: what a lone request would
    gain by taking the second core of an idle two-core device."""
    from edge.vision.embedder import Embedder
    from edge.vision.models import ModelCatalog
    from edge.vision.runtime import select_backend

    catalog, own = ModelCatalog(settings.model_dir), real_embedder(pipe)
    embedders = {threads: Embedder(catalog, own.artifact, backend=select_backend(["cpu"]), threads=threads,
                                   flip_augment=own.flip_augment) for threads in (1, 2)}
    chips = [analysis.faces[0].chip for analysis in (pipe.analyse(p, embed=False) for p in photos) if analysis.faces]
    times: dict[int, list[float]] = {threads: [] for threads in embedders}
    for chip in chips * 2:
        for threads, embedder in embedders.items():
            start = time.perf_counter()
            embedder.embed(chip)
            times[threads].append(time.perf_counter() - start)
    result: dict[str, Any] = {f"{threads}_threads": round(1000 * float(np.median(t[len(chips):])), 3)
                              for threads, t in times.items()}
    # After a pause the second thread's CPU has been asleep: waking it is part of the price.
    result["after_a_pause"] = after_pauses({f"{threads}_threads": embedder.embed
                                            for threads, embedder in embedders.items()}, chips, (0, 5, 80))
    return result


def run(data: Path, threads: int, photos: int, peer: bool, block: int) -> dict[str, Any]:
    limit_threads(threads)
    built = configs(threads)
    pipes = {name: pipe for name, (_, pipe) in built.items()}
    fr = None
    if peer:
        from edge.evaluation.peer import import_face_recognition

        fr = import_face_recognition()
    sets = photo_sets(data, photos)
    embedders = {name: real_embedder(pipe) for name, pipe in pipes.items()}
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": threads,
                              "configs": {name: {"embedder": e.artifact.name, "flip": e.flip_augment}
                                          for name, e in embedders.items()}}
    alone = {name: ModelsAlone(settings, pipe, threads) for name, (settings, pipe) in built.items()}
    result["sets"] = {label: stage_times(pipes, alone, shots, fr, block) for label, shots in sets.items()}
    default_settings = built["default"][0]
    result["embedder"] = {"fp32": embedder_roofline(embedders["default"].artifact.family, default_settings.model_dir,
                                                    threads)}
    result["mirror_pair_ms"] = mirror_pair(default_settings.model_dir, threads)
    result["detector_after_ms"] = detector_after_traffic(pipes["default"], data, photos)
    if fr is not None:
        result["after_a_pause_ms"] = after_pauses({"edge_face": lambda d: pipes["default"].analyse(d, max_faces=1),
                                                   "face_recognition": lambda d: peer_encode(fr, d)},
                                                  sets["250x250"], (0, 5, 80))
    return result


def detector_task_vs_litert(data: Path, photos: int) -> dict[str, Any]:
    """MediaPipe's FaceDetector task against edge-face's LiteRT detector on the same model, image by
    image interleaved, per range and photo set (the lever that replaced the task)."""
    from bench.mediapipe_task import FaceDetectorTask
    from edge.config import Settings
    from edge.vision.detector import FaceDetector
    from edge.vision.image import decode_image
    from edge.vision.models import ModelCatalog

    catalog = ModelCatalog(Settings().pipeline.model_dir)
    images = {label: [decode_image(p).rgb for p in shots] for label, shots in photo_sets(data, photos).items()}
    out: dict[str, Any] = {}
    for detector in ("short", "full"):
        model = catalog.verified_path(catalog.find("detector", f"blazeface_{detector}"))
        task, ours = FaceDetectorTask(model), FaceDetector(model)
        for label, rgbs in images.items():
            times: dict[str, list[float]] = {"mediapipe_task": [], "litert": []}
            for rgb in rgbs * 2:
                for name, run in (("mediapipe_task", task.detect), ("litert", ours.detect)):
                    start = time.perf_counter()
                    run(rgb)
                    times[name].append(time.perf_counter() - start)
            out[f"{detector} {label}"] = {name: round(1000 * float(np.median(t[len(rgbs):])), 3)
                                          for name, t in times.items()}
        task.close()
    return out


def mirror_pair(model_dir: Path, threads: int, runs: int = 200) -> dict[str, dict[str, float]]:
    """The embedder on a chip and its mirror image: one batch of two against two single passes, interleaved."""
    from edge.vision.models import ModelCatalog
    from edge.vision.runtime import LiteRTSession

    catalog = ModelCatalog(model_dir)
    out = {}
    for precision in ("int8-dynamic", "fp32"):
        path = catalog.verified_path(catalog.find("embedder", "dlib_resnet_v1", precision))
        single, pair = LiteRTSession(path, threads=threads), LiteRTSession(path, threads=threads)
        one = np.full((1, *single.input_shape[1:]), 127.0, dtype=np.float32)
        two = np.concatenate([one, one[:, :, ::-1]])
        times: dict[str, list[float]] = {"two_single_passes": [], "batch_of_two": []}
        for _ in range(runs + 10):
            start = time.perf_counter()
            single.run(one)
            single.run(one[:, :, ::-1])
            middle = time.perf_counter()
            pair.run(two)
            times["two_single_passes"].append(middle - start)
            times["batch_of_two"].append(time.perf_counter() - middle)
        out[precision] = {name: round(1000 * float(np.median(t[10:])), 3) for name, t in times.items()}
    return out


def lone_request(data: Path, photos: int) -> dict[str, Any]:
    """The embed stage of both configs on one and two threads, before the one-core pin."""
    shots = photo_sets(data, photos)["250x250"]
    return {name: two_threads(settings, pipe, shots) for name, (settings, pipe) in configs(1).items()}


def detector_after_traffic(pipe: Any, data: Path, photos: int) -> dict[str, float]:
    """The detector on the same photos alone, right after the embedder, and right after 16 MB of memory
    traffic that runs no model: where the detect stage's time beyond its model goes in a pipeline."""
    from edge.vision.image import decode_image

    rgbs = [decode_image(p).rgb for p in photo_sets(data, photos)["250x250"]]
    chip = np.zeros((150, 150, 3), dtype=np.uint8)
    traffic = np.ones(2_000_000)
    between: dict[str, Callable[[], object]] = {
        "alone": lambda: None, "after_the_embedder": lambda: pipe.embedder.embed(chip),
        "after_16mb_of_memory_traffic": lambda: (traffic * 1.0).sum()}
    times: dict[str, list[float]] = {name: [] for name in between}
    for rgb in rgbs * 3:
        for name, before in between.items():
            before()
            start = time.perf_counter()
            pipe.detector.detect(rgb)
            times[name].append(time.perf_counter() - start)
    return {name: round(1000 * float(np.median(t[len(rgbs):])), 3) for name, t in times.items()}


def peer_encode(fr: Any, data: bytes) -> tuple[float, float, float, float]:
    """face_recognition's work on a photo (decode, HOG boxes, the largest face's encoding): seconds of
    each step and in all."""
    from io import BytesIO

    t0 = time.perf_counter()
    img = fr.load_image_file(BytesIO(data))
    t1 = time.perf_counter()
    boxes = fr.face_locations(img)
    t2 = time.perf_counter()
    if boxes:
        fr.face_encodings(img, known_face_locations=[max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))])
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, t3 - t0


def embedder_roofline(family: str, model_dir: Path, threads: int, runs: int = 100) -> dict[str, float]:
    """The fp32 embedder's GMAC/s on one chip against the core's fp32 matrix-multiply peak."""
    from edge.vision.embedder import Embedder
    from edge.vision.models import ModelCatalog
    from edge.vision.runtime import select_backend

    catalog = ModelCatalog(model_dir)
    art = catalog.find("embedder", family, "fp32")
    embedder = Embedder(catalog, art, backend=select_backend(["cpu"]), threads=threads)
    chip = np.zeros((*art.input_size, 3), dtype=np.uint8)
    ms = median_ms(lambda: embedder.raw(chip), runs=runs)
    gmac = float(art.info["gmac"])
    peak = matmul_peak_gmacs()
    return {"ms": ms, "gmac": gmac, "achieved_gmacs": gmac / (ms / 1000), "matmul_peak_gmacs": peak,
            "fraction_of_peak": gmac / (ms / 1000) / peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder laid out like faces-dev")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    parser.add_argument("--block", type=int, default=50,
                        help="photos each config and face_recognition take in turn (1: photo by photo)")
    args = parser.parse_args()
    # Before the one-core pin: the second core is one lever, MediaPipe's graph threads are in the other.
    lone = lone_request(args.data, args.photos)
    detectors = detector_task_vs_litert(args.data, args.photos)
    result = run(args.data, args.threads, args.photos, args.peer, args.block)
    result["lone_request_embed_ms"] = lone
    result["detector_ms"] = detectors
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "pipeline.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
