"""SearchFacesByImage through boto3 against the daemon, beside face_recognition on the same photos.

Two daemons run as `edge-face serve` in their own processes over copies of one 10k-face collection:
one on its defaults (on a CPU with int8 dot products: int8-dynamic + flip) and one on fp32 without
the mirror pass (the default of AVX2-only CPUs). A single client then takes each block of fifty photos
in turn to the default daemon, to the fp32 daemon, and through face_recognition (HOG, its ResNet, a
linear search over as many encodings as the collection holds) in this process, so a noisy neighbour
slows all three alike (`--block 1`: photo by photo); 250x250 LFW photos and 640x480 kiosk frames
(`bench.photos`). Then the default daemon and face_recognition
each take 100 of the 250x250 photos back to back and each after 80 ms asleep (what an idle spell costs
a door's search), and 1 and 4 client threads call each daemon back to back, for the gain from the
second core.

Besides wall-clock latency it records CPU time: the daemon's (from /proc, per request over a set)
and this process's for face_recognition, which a shared machine's load does not inflate. The
request path alone (JSON, base64, validation, SigV4 on both sides) is timed in this process at
30 KB and 600 KB. Results go to bench/results/http.json.

    EDGE_FACE_PIPELINE__MODEL_DIR=~/.cache/edge-face/models .venv/bin/python -m bench.http
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
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
import numpy as np
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from prometheus_client.parser import text_string_to_metric_families

from bench.machine import after_pauses, cpu_model
from bench.photos import lfw_paths, photo_sets
from bench.synthetic import SyntheticFaces, new_faces
from edge.config import Settings
from edge.evaluation.dataset import data_root
from edge.evaluation.peer import import_face_recognition
from edge.rekognition.operations import Rekognition
from edge.rekognition.tokens import token_secret
from edge.rekognition.validation import validate_request
from edge.server.auth import Authenticator, HttpRequest
from edge.server.credentials import KeyStore
from edge.store import Store
from edge.vision.pipeline import STAGES, FacePipeline

RESULTS = Path(__file__).resolve().parent / "results"
COLLECTION = "bench"
REGION = "us-east-1"
TARGET = "RekognitionService.SearchFacesByImage"
#: Faces per synthetic person, as a gallery of several photos per person would hold.
FACES_PER_IDENTITY = 5
MAX_FACES = 10
#: The daemons besides their shared defaults: name -> EDGE_FACE_ environment overrides.
DAEMONS: dict[str, dict[str, str]] = {
    "default": {},
    "fp32": {"EDGE_FACE_PIPELINE__PRECISION": "fp32", "EDGE_FACE_PIPELINE__FLIP_AUGMENT": "off"},
}
REQUEST_SIZES = {"30KB": 30_000, "600KB": 600_000}


def fill(state_dir: Path, settings: Settings, faces_dev: Path, total: int, enrolled: int) -> dict[str, Any]:
    """The collection: one photo each of `enrolled` faces-dev people, synthetic faces up to `total`."""
    pipeline = FacePipeline.from_settings(settings.pipeline)
    people = sorted({path.parent for path in lfw_paths(faces_dev, enrolled)})
    with Store(state_dir) as store:
        rekognition = Rekognition(store, pipeline, settings.service, secret=token_secret(state_dir))
        rekognition.call("CreateCollection", {"CollectionId": COLLECTION})
        for person in people:
            photo = sorted(person.glob("*.jpg"))[-1].read_bytes()
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
    return {"faces": count, "real_faces": count - synthetic, "dim": record.dim, "model": record.face_model_version}


def start(state_dir: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`edge-face serve`, as systemd runs it (with `env` added to this environment); returns once /readyz answers."""
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--state-dir", str(state_dir),
                                "--port", str(port)], env={**os.environ, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the daemon did not become ready")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """A running daemon and a boto3 client for it (thread-safe, its pool sized for the load test)."""

    def __init__(self, state_dir: Path, overrides: dict[str, str], key: Credentials) -> None:
        self.port = free_port()
        self.process = start(state_dir, self.port, overrides)
        self.client = boto3.client(
            "rekognition", region_name=REGION, endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id=key.access_key, aws_secret_access_key=key.secret_key,
            config=Config(max_pool_connections=8, retries={"max_attempts": 1}))

    def search(self, photo: bytes) -> bool:
        """Whether a face was found; a photo without one is answered InvalidParameterException, as AWS does."""
        try:
            self.client.search_faces_by_image(CollectionId=COLLECTION, Image={"Bytes": photo}, MaxFaces=MAX_FACES)
        except self.client.exceptions.InvalidParameterException:
            return False
        return True

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the daemon so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stage_sums(self) -> dict[str, float]:
        """Seconds and counts so far of each pipeline stage and of the whole SearchFacesByImage handler
        (body read to response), from the daemon's /metrics histograms."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.labels.get("stage")
                if sample.labels.get("operation") == "SearchFacesByImage" and family.name.endswith("duration_seconds"):
                    name = "handler"
                if sample.name.endswith(("_seconds_sum", "_seconds_count")) and name in (*STAGES, "handler"):
                    sums[f"{name}:{sample.name.rsplit('_', 1)[1]}"] = sample.value
        return sums

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean ms per request of each stage between two /metrics scrapes."""
    names = sorted({key.split(":")[0] for key in after})
    means = {}
    for name in names:
        count = after[f"{name}:count"] - before.get(f"{name}:count", 0)
        if count:
            means[name] = round(1000 * (after[f"{name}:sum"] - before.get(f"{name}:sum", 0)) / count, 3)
    return means


class FaceRecognitionSearch:
    """face_recognition as its users search: HOG boxes, the largest face's encoding, face_distance to all."""

    def __init__(self, gallery: int) -> None:
        self.fr = import_face_recognition()
        self.known = np.random.default_rng(0).normal(0, 0.09, (gallery, 128))

    def search(self, photo: bytes) -> bool:
        """Whether a face was found."""
        image = self.fr.load_image_file(io.BytesIO(photo))
        boxes = self.fr.face_locations(image)
        if not boxes:
            return False
        largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        encoding = self.fr.face_encodings(image, known_face_locations=[largest])[0]
        distances = self.fr.face_distance(self.known, encoding)
        np.argsort(distances)[:MAX_FACES]
        return True


def _ms(seconds: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(seconds, q)), 2)


def side_by_side(daemons: dict[str, Daemon], peer: FaceRecognitionSearch, photos: list[bytes],
                 warmup: int, block: int) -> dict[str, Any]:
    """The photos in blocks of `block`: each block through every daemon and then face_recognition in turn;
    wall and CPU time of each. Blocks share slow changes of the machine's load between them alike; within a
    block each runs as it runs alone (with 1, face_recognition's pass between two searches empties the
    caches a daemon serving a door keeps warm)."""
    wall: dict[str, list[float]] = {name: [] for name in [*daemons, "face_recognition"]}
    cpu = dict.fromkeys(wall, 0.0)
    no_face = dict.fromkeys(wall, 0)
    client_cpu = dict.fromkeys(daemons, 0.0)
    stages = {name: daemon.stage_sums() for name, daemon in daemons.items()}
    sequence = photos[:warmup] + photos
    for start in range(0, len(sequence), block):
        chunk = list(enumerate(sequence[start:start + block], start))
        for name, daemon in daemons.items():
            for i, photo in chunk:
                started, daemon_cpu, own_cpu = time.perf_counter(), daemon.cpu_seconds(), time.process_time()
                found = daemon.search(photo)
                if i >= warmup:
                    wall[name].append(time.perf_counter() - started)
                    no_face[name] += not found
                    cpu[name] += daemon.cpu_seconds() - daemon_cpu
                    client_cpu[name] += time.process_time() - own_cpu
        for i, photo in chunk:
            started, own_cpu = time.perf_counter(), time.process_time()
            found = peer.search(photo)
            if i >= warmup:
                wall["face_recognition"].append(time.perf_counter() - started)
                no_face["face_recognition"] += not found
                cpu["face_recognition"] += time.process_time() - own_cpu
    n = len(photos)
    rows: dict[str, Any] = {}
    for name, seconds in wall.items():
        rows[name] = {"p50_ms": _ms(seconds, 50), "p99_ms": _ms(seconds, 99),
                      "mean_ms": round(1000 * float(np.mean(seconds)), 2),
                      "p99_over_p50": round(float(np.percentile(seconds, 99) / np.percentile(seconds, 50)), 2),
                      "cpu_ms_per_photo": round(1000 * cpu[name] / n, 2), "no_face": no_face[name]}
        if name in daemons:
            rows[name]["client_cpu_ms_per_photo"] = round(1000 * client_cpu[name] / n, 2)
            rows[name]["daemon_stage_mean_ms"] = stage_means(stages[name], daemons[name].stage_sums())
    peer_row = rows["face_recognition"]
    for name in daemons:
        rows[name]["speedup_p50"] = round(peer_row["p50_ms"] / rows[name]["p50_ms"], 2)
        rows[name]["speedup_cpu"] = round(peer_row["cpu_ms_per_photo"] / rows[name]["cpu_ms_per_photo"], 2)
    return {"photos": n, "block": block, **rows}


def load(daemon: Daemon, photos: list[bytes], concurrency: int, duration: float) -> dict[str, Any]:
    """`concurrency` threads searching back to back for `duration` seconds, each from its own place in
    the photos (after one warm-up call each); also the daemon's CPU time per request."""
    latencies: list[float] = []
    ready = threading.Barrier(concurrency + 1)
    stop = threading.Event()

    def worker(offset: int) -> None:
        daemon.search(photos[offset])
        ready.wait()
        i = offset
        while not stop.is_set():
            started = time.perf_counter()
            daemon.search(photos[i % len(photos)])
            latencies.append(time.perf_counter() - started)
            i += 1

    threads = [threading.Thread(target=worker, args=(k * len(photos) // concurrency,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    began, cpu = time.perf_counter(), daemon.cpu_seconds()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - began, daemon.cpu_seconds() - cpu
    return {"concurrency": concurrency, "requests": len(latencies), "p50_ms": _ms(latencies, 50),
            "p99_ms": _ms(latencies, 99), "requests_per_s": round(len(latencies) / wall, 1),
            "daemon_cpu_ms_per_request": round(1000 * cpu / max(1, len(latencies)), 2)}


def request_path(key: Credentials, keys: KeyStore, settings: Settings) -> dict[str, Any]:
    """Median ms of each step a request's bytes go through outside the pipeline, at 30 KB and 600 KB.

    The image is random bytes of that size: none of these steps looks inside it.
    """
    client = boto3.client("rekognition", region_name=REGION, endpoint_url="http://127.0.0.1:1",
                          aws_access_key_id=key.access_key, aws_secret_access_key=key.secret_key)
    authenticator = Authenticator(keys, settings.server)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for label, size in REQUEST_SIZES.items():
        out[label] = _request_steps(client, key, authenticator, rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return out


def _request_steps(client: Any, key: Credentials, authenticator: Authenticator, image: bytes,
                   repeats: int = 200) -> dict[str, float]:
    operation = client.meta.service_model.operation_model("SearchFacesByImage")
    serializer = client._serializer  # botocore's own: what boto3 does before signing
    params = {"CollectionId": COLLECTION, "Image": {"Bytes": image}, "MaxFaces": MAX_FACES}
    body = serializer.serialize_to_request(params, operation)["body"]
    text = json.loads(body)

    def sign() -> AWSRequest:
        request = AWSRequest("POST", "http://127.0.0.1:8080/", data=body,
                             headers={"Host": "127.0.0.1:8080", "Content-Type": "application/x-amz-json-1.1",
                                      "X-Amz-Target": TARGET})
        SigV4Auth(key, "rekognition", REGION).add_auth(request)
        return request

    signed = sign().prepare()
    incoming = HttpRequest("POST", "/", "", [(k.lower(), v) for k, v in signed.headers.items()], "127.0.0.1")

    def median_ms(step: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        return round(1000 * float(np.median(times)), 3)

    steps = {
        "client_serialize_ms": median_ms(lambda: serializer.serialize_to_request(params, operation)),
        "client_sign_ms": median_ms(sign),
        "server_verify_ms": median_ms(lambda: authenticator.begin(incoming).verify(body)),
        "server_json_ms": median_ms(lambda: json.loads(body)),
        "server_validate_ms": median_ms(lambda: validate_request("SearchFacesByImage", text)),
    }
    # Validation decodes the base64 image; this is that part of it alone.
    return {"body_bytes": len(body), **steps, "total_ms": round(sum(steps.values()), 3),
            "of_which_base64_decode_ms": median_ms(lambda: base64.b64decode(text["Image"]["Bytes"], validate=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=10_000, help="collection size")
    parser.add_argument("--photos", type=int, default=200, help="photos per set, each searched once per daemon")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--block", type=int, default=50,
                        help="photos each takes in turn before the next (1: photo by photo)")
    parser.add_argument("--out", type=Path, default=RESULTS / "http.json")
    parser.add_argument("--data", type=Path, default=data_root())
    args = parser.parse_args()
    settings = Settings()
    faces_dev = args.data / "faces-dev"
    sets = photo_sets(faces_dev, args.photos)
    result: dict[str, Any] = {
        "operation": "SearchFacesByImage", "client": "boto3, one client per daemon",
        "machine": {"cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "daemons": {name: {"overrides": overrides, "pool_size": settings.server.pool_size or os.cpu_count()}
                    for name, overrides in DAEMONS.items()},
        "image_bytes_median": {name: int(np.median([len(p) for p in photos])) for name, photos in sets.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "default"
        result["collection"] = fill(first, settings, faces_dev, args.faces, enrolled=args.photos)
        keys, _ = KeyStore.open(first)
        admin = next(k for k in keys.all() if k.scope == "admin")
        key = Credentials(admin.access_key_id, admin.secret_access_key)
        result["request_path_ms"] = request_path(key, keys, settings)
        daemons: dict[str, Daemon] = {}
        try:
            for name, overrides in DAEMONS.items():
                state_dir = Path(tmp) / name
                if not state_dir.exists():
                    shutil.copytree(first, state_dir)
                daemons[name] = Daemon(state_dir, overrides, key)
            peer = FaceRecognitionSearch(result["collection"]["faces"])
            result["single_client"] = {}
            for label, photos in sets.items():
                result["single_client"][label] = side_by_side(daemons, peer, photos, args.warmup, args.block)
                print(label, json.dumps(result["single_client"][label]), flush=True)
            result["after_a_pause_ms"] = after_pauses({"default": daemons["default"].search, "face_recognition":
                                                       peer.search}, sets["250x250"][:100])
            print("after a pause", json.dumps(result["after_a_pause_ms"]), flush=True)
            result["load"] = {}
            for name, daemon in daemons.items():
                levels = [load(daemon, sets["640x480"], int(c), args.duration) for c in args.concurrency.split(",")]
                result["load"][name] = {"levels": levels,
                                        "gain": round(levels[-1]["requests_per_s"] / levels[0]["requests_per_s"], 2)}
                print(name, json.dumps(result["load"][name]), flush=True)
        finally:
            for daemon in daemons.values():
                daemon.close()
    result["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    """The README's tables from one run."""
    lines = ["| photos | daemon | edge-face p50 (p99) ms | face_recognition p50 ms | ratio p50 | CPU ms edge-face "
             "| CPU ms face_recognition | ratio CPU |", "|---|---|---|---|---|---|---|---|"]
    for label, rows in result["single_client"].items():
        peer = rows["face_recognition"]
        for name in DAEMONS:
            row = rows[name]
            lines.append(f"| {label} | {name} | {row['p50_ms']} ({row['p99_ms']}) | {peer['p50_ms']} "
                         f"| {row['speedup_p50']}x | {row['cpu_ms_per_photo']} | {peer['cpu_ms_per_photo']} "
                         f"| {row['speedup_cpu']}x |")
    lines += ["", "| daemon | " + " | ".join(f"{lv['concurrency']} clients req/s (p50 ms)"
                                               for lv in next(iter(result["load"].values()))["levels"]) + " | gain |",
              "|---|" + "---|" * (len(next(iter(result["load"].values()))["levels"]) + 1)]
    for name, run in result["load"].items():
        cells = " | ".join(f"{lv['requests_per_s']} ({lv['p50_ms']})" for lv in run["levels"])
        lines.append(f"| {name} | {cells} | {run['gain']}x |")
    lines += ["", "| before each 250x250 photo | default p50 ms | face_recognition p50 ms |", "|---|---|---|"]
    for pause, row in result["after_a_pause_ms"].items():
        lines.append(f"| {pause.replace('_', ' ')} asleep | {row['default']} | {row['face_recognition']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
