"""SearchFacesByImage over HTTP: latency and throughput of the daemon against a 10k-face collection.

A 640x480 JPEG (one face) is searched at concurrency 1, 4 and 16, first as raw signed HTTP (one
keep-alive connection per client thread, botocore's SigV4 per request), then through boto3 (the
SDK's own serialisation, signing and connection pool). The collection is filled before the daemon
starts: a few real faces through the operations layer, the rest synthetic vectors clustered like
real embeddings (`bench.synthetic`), written straight through `Store.add_faces` with the
collection's model version. The daemon runs as `edge-face serve` in its own process, with its
defaults (pool = one thread per CPU). Clients run on the same machine, so they take CPU from it.
Results go to bench/results/http.json.

    EDGE_FACE_PIPELINE__MODEL_DIR=~/.cache/edge-face/models .venv/bin/python -m bench.http
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import cv2
import numpy as np
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from prometheus_client.parser import text_string_to_metric_families

from bench.machine import cpu_model
from bench.synthetic import SyntheticFaces, new_faces
from edge.config import Settings
from edge.evaluation.dataset import data_root
from edge.rekognition.operations import Rekognition
from edge.rekognition.tokens import token_secret
from edge.server.credentials import KeyStore
from edge.store import Store
from edge.vision.pipeline import STAGES, FacePipeline

RESULTS = Path(__file__).resolve().parent / "results"
COLLECTION = "bench"
REGION = "us-east-1"
#: Faces per synthetic person, as a gallery of several photos per person would hold.
FACES_PER_IDENTITY = 5


def query_photo(misc: Path) -> bytes:
    """A 640x480 JPEG with one face: the 4:3 centre of a large one-face photo, as a kiosk camera frames it."""
    image = cv2.imread(str(misc / "large_4352x2903_one_face.jpg"))
    if image is None:
        raise FileNotFoundError(misc / "large_4352x2903_one_face.jpg")
    height, width = image.shape[:2]
    crop = int(height * 4 / 3)
    left = (width - crop) // 2
    frame = cv2.resize(image[:, left:left + crop], (640, 480), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


def fill(state_dir: Path, settings: Settings, query: bytes, faces_dev: Path, total: int) -> dict[str, Any]:
    """The collection: the query photo's face, a few real faces, synthetic faces up to `total`."""
    real = [query] + [p.read_bytes() for p in sorted(faces_dev.glob("*/*.jpg"))[:20]]
    pipeline = FacePipeline.from_settings(settings.pipeline)
    with Store(state_dir) as store:
        rekognition = Rekognition(store, pipeline, settings.service, secret=token_secret(state_dir))
        rekognition.call("CreateCollection", {"CollectionId": COLLECTION})
        for photo in real:
            rekognition.call("IndexFaces", {"CollectionId": COLLECTION, "MaxFaces": 1,
                                            "Image": {"Bytes": base64.b64encode(photo).decode()}})
        record = store.get_collection(COLLECTION)
        synthetic = total - store.face_count(COLLECTION)
        faces = SyntheticFaces(record.dim, identities=synthetic // FACES_PER_IDENTITY + 1, seed=7)
        identities = np.arange(synthetic) // FACES_PER_IDENTITY
        for start in range(0, synthetic, 1000):
            vectors = faces.sample(identities[start:start + 1000], stream=start)
            store.add_faces(COLLECTION, new_faces(vectors, image_id=f"synthetic-{start}"),
                            model_version=record.face_model_version)
        count = store.face_count(COLLECTION)
    pipeline.close()
    return {"faces": count, "real_faces": count - synthetic, "dim": record.dim,
            "model": record.face_model_version}


def start(state_dir: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`edge-face serve`, as systemd runs it (with `env` added to this environment); returns once /readyz answers."""
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--state-dir", str(state_dir),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the daemon did not become ready")


def raw_client(port: int, key: Credentials, body: bytes) -> Callable[[], Callable[[], int]]:
    """Per thread: a keep-alive connection; per call: a freshly signed POST, returning the HTTP status."""
    def make() -> Callable[[], int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def call() -> int:
            request = AWSRequest("POST", f"http://127.0.0.1:{port}/", data=body, headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "RekognitionService.SearchFacesByImage"})
            SigV4Auth(key, "rekognition", REGION).add_auth(request)
            conn.request("POST", "/", body, dict(request.prepare().headers))
            response = conn.getresponse()
            response.read()
            return response.status
        return call
    return make


def boto3_client(port: int, key: Credentials, photo: bytes, concurrency: int) -> Callable[[], Callable[[], int]]:
    """One client shared by all threads (boto3 clients are thread-safe), pool sized to the threads."""
    client = boto3.client("rekognition", region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}",
                          aws_access_key_id=key.access_key, aws_secret_access_key=key.secret_key,
                          config=Config(max_pool_connections=concurrency, retries={"max_attempts": 1}))

    def call() -> int:
        reply = client.search_faces_by_image(CollectionId=COLLECTION, Image={"Bytes": photo}, MaxFaces=10)
        return int(reply["ResponseMetadata"]["HTTPStatusCode"])
    return lambda: call


def stage_means(port: int) -> dict[str, float]:
    """Mean milliseconds per pipeline stage over all runs, as the daemon reports them (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.labels.get("stage")
            if sample.name.endswith(("_seconds_sum", "_seconds_count")) and name in STAGES:
                sums[f"{name}:{sample.name.rsplit('_', 1)[1]}"] = sample.value
    names = sorted({key.split(":")[0] for key in sums})
    return {name: round(1000 * sums[f"{name}:sum"] / sums[f"{name}:count"], 2) for name in names}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(make: Callable[[], Callable[[], int]], concurrency: int, duration: float, daemon: int) -> dict[str, Any]:
    """`concurrency` threads calling back to back for `duration` seconds (after one warm-up call each);
    also the daemon's CPU time per request, to tell its cost from the client's on a shared machine."""
    latencies: list[float] = []
    failures: list[int] = []
    ready = threading.Barrier(concurrency + 1)
    stop = threading.Event()

    def worker() -> None:
        call = make()
        call()
        ready.wait()
        while not stop.is_set():
            started = time.perf_counter()
            status = call()
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(status)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    began, cpu = time.perf_counter(), cpu_seconds(daemon)
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - began, cpu_seconds(daemon) - cpu
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(failures),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "mean_ms": round(float(ms.mean()), 1),
            "requests_per_s": round(len(latencies) / wall, 1),
            "daemon_cpu_ms_per_request": round(1000 * cpu / max(1, len(latencies)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--data", type=Path, default=data_root())
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    settings = Settings()
    query = query_photo(args.data / "misc")
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp) / "state"
        collection = fill(state_dir, settings, query, args.data / "faces-dev", args.faces)
        keys, _ = KeyStore.open(state_dir)
        admin = next(k for k in keys.all() if k.scope == "admin")
        key = Credentials(admin.access_key_id, admin.secret_access_key)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        daemon = start(state_dir, port)
        body = json.dumps({"CollectionId": COLLECTION, "MaxFaces": 10,
                           "Image": {"Bytes": base64.b64encode(query).decode()}}).encode()
        try:
            runs: dict[str, list[dict[str, Any]]] = {"http": [], "boto3": []}
            for level in levels:
                runs["http"].append(load(raw_client(port, key, body), level, args.duration, daemon.pid))
                print("http ", runs["http"][-1], flush=True)
                runs["boto3"].append(load(boto3_client(port, key, query, level), level, args.duration, daemon.pid))
                print("boto3", runs["boto3"][-1], flush=True)
            stages = stage_means(port)
        finally:
            daemon.terminate()
            daemon.wait(60)
    result = {
        "operation": "SearchFacesByImage", "image": {"width": 640, "height": 480, "bytes": len(query)},
        "collection": collection, "duration_s_per_level": args.duration,
        "daemon": {"pool_size": settings.server.pool_size or len(os.sched_getaffinity(0)),
                   "queue_size": settings.server.queue_size},
        "machine": {"cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "load_average_after": os.getloadavg()},
        "runs": runs,
        "daemon_stage_mean_ms": stages,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
