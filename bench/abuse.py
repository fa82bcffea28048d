"""The daemon under abuse, on loopback: idle sockets and slowloris bodies, then fuzzed signed requests.

Load: a kiosk (one boto3 client, one SearchFacesByImage at a time, read-only key) is measured for
`--seconds` quiet, then while another process holds `--idle` idle sockets and `--slow` slowloris
bodies open against the daemon (signed heads, a byte a second; every socket the daemon closes is
opened again, at most `--reopen-per-s` a second), then quiet again. A poller asks /healthz on a
fresh connection five times a second throughout. The daemon runs with its defaults and the file
limit the systemd unit gives it (LimitNOFILE=4096).

Fuzz: `--fuzz` signed requests, each a valid request of one of the 18 operations mutated in its
JSON (members dropped, added, retyped, bytes flipped or cut), its image (bytes flipped, cut,
replaced) or its headers (content type, target, date, host, extra and duplicated headers), sent
by four threads. Writes are signed with the read-only key, or with the admin key against ids that
do not exist, so no answer may change anything: the collections, faces and users are compared
before and after, and no answer may be a 5xx.

Results go to bench/results/abuse.json.

    nice -n 10 .venv/bin/python -m bench.abuse
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import http.client
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from bench.machine import cpu_model
from bench.photos import query_photo
from edge.evaluation.dataset import data_root
from edge.server.credentials import KeyStore

RESULTS = Path(__file__).resolve().parent / "results"
REGION = "us-east-1"
COLLECTION = "door"
CONTENT_TYPE = "application/x-amz-json-1.1"
#: The file limit systemd/edge-face.service gives the daemon.
UNIT_NOFILE = 4096
#: A slowloris head declares this much body, then sends a byte a second.
SLOW_BODY_BYTES = 1_000_000


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000 if seconds else np.zeros(1)
    return {"n": len(seconds), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


def raise_file_limit(wanted: int) -> int:
    """Raise this process's soft file limit towards `wanted` (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return int(soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def start_daemon(state_dir: Path, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`edge-face serve` with the unit's file limit; returns once /readyz answers."""
    def unit_limits() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (UNIT_NOFILE if hard == resource.RLIM_INFINITY
                                                    else min(UNIT_NOFILE, hard), hard))

    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--state-dir", str(state_dir),
                                    "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=unit_limits, env={**os.environ, **env})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the daemon did not become ready:\n{log.read_text()[-3000:]}")


def sign(key: Credentials, port: int, operation: str | None, body: bytes,
         extra: dict[str, str] | None = None) -> dict[str, str]:
    """The headers botocore sends for this body, signed now."""
    request = AWSRequest("POST", f"http://127.0.0.1:{port}/", data=body,
                         headers={"Content-Type": CONTENT_TYPE, **(extra or {})})
    if operation is not None:
        request.headers["X-Amz-Target"] = f"RekognitionService.{operation}"
    SigV4Auth(key, "rekognition", REGION).add_auth(request)
    return {"Host": f"127.0.0.1:{port}", **request.prepare().headers}


# --- the attacker: a process of its own, so that its loop does not share the measuring client's GIL


def attack(port: int, key: Credentials, idle: int, slow: int, reopen_per_s: float, stop: EventType,
           opened: Any, report: Any) -> None:
    """Hold `idle` idle and `slow` slowloris connections until `stop`, reopening what the daemon closes."""
    raise_file_limit(idle + slow + 256)
    selector = selectors.DefaultSelector()
    want = ["idle"] * idle + ["slow"] * slow
    live: dict[socket.socket, str] = {}
    counts: Counter[str] = Counter()
    budget, last = 0.0, time.monotonic()
    next_trickle = time.monotonic() + 1

    def open_one(kind: str) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            want.append(kind)
            counts["connect_failed"] += 1
            return
        live[sock] = kind
        selector.register(sock, selectors.EVENT_WRITE, "connecting")
        counts["opened"] += 1

    def close(sock: socket.socket) -> None:
        selector.unregister(sock)
        want.append(live.pop(sock))
        sock.close()

    while not stop.is_set():
        now = time.monotonic()
        budget = min(reopen_per_s, budget + (now - last) * reopen_per_s) if counts["opened"] >= idle + slow \
            else float(len(want))  # the first wave at once, then paced
        last = now
        while want and budget >= 1:
            budget -= 1
            open_one(want.pop())
        for selected, _ in selector.select(timeout=0.05):
            sock = selected.fileobj
            assert isinstance(sock, socket.socket)
            if selected.data == "connecting":
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    counts["connect_failed"] += 1
                    close(sock)
                    continue
                if live[sock] == "slow":
                    head = sign(key, port, "SearchFacesByImage", b"{", {"Content-Length": str(SLOW_BODY_BYTES)})
                    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items() if k.lower() != "content-length")
                    sock.send(f"POST / HTTP/1.1\r\n{lines}content-length: {SLOW_BODY_BYTES}\r\n\r\n{{".encode())
                selector.modify(sock, selectors.EVENT_READ, "open")
                continue
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 "):
                counts[f"answered_{data[9:12].decode()}"] += 1
            if not data:
                counts[f"closed_{live[sock]}"] += 1
                close(sock)
        if time.monotonic() >= next_trickle:  # a byte a second on every slowloris body
            next_trickle += 1
            for sock, kind in list(live.items()):
                if kind == "slow":
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
        opened.value = len(live)
    for sock in list(live):
        close(sock)
    report.put(dict(counts))


# --- the kiosk and the poller


@dataclass
class Phase:
    name: str
    searches: list[float]
    errors: int


def kiosk(client: Any, photo: bytes, seconds: float, name: str) -> Phase:
    """Searches back to back for `seconds`; latencies of the successful ones."""
    latencies, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            client.search_faces_by_image(CollectionId=COLLECTION, Image={"Bytes": photo}, MaxFaces=5)
            latencies.append(time.perf_counter() - started)
        except Exception:  # any failure counts, whatever its kind
            errors += 1
    return Phase(name, latencies, errors)


class HealthPoller(threading.Thread):
    """GET /healthz on a fresh connection every 0.2 s; latency and failures per phase."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.phase = "setup"
        self.seen: dict[str, list[float]] = {}
        self.failed: Counter[str] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            phase, started = self.phase, time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            if ok:
                self.seen.setdefault(phase, []).append(time.perf_counter() - started)
            else:
                self.failed[phase] += 1


# --- fuzzing


def fuzz_corpus(photo: bytes, faces: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """(operation, valid parameters, profile) for each of the 18 operations; none of them can change
    anything when signed with its profile: writes by the read-only key, or by admin on absent ids."""
    image = {"Bytes": base64.b64encode(photo).decode()}
    absent = "absent-collection"
    ghost = str(uuid.uuid4())
    return [
        ("SearchFacesByImage", {"CollectionId": COLLECTION, "Image": image, "MaxFaces": 3}, "kiosk"),
        ("DetectFaces", {"Image": image, "Attributes": ["ALL"]}, "kiosk"),
        ("CompareFaces", {"SourceImage": image, "TargetImage": image, "SimilarityThreshold": 50}, "kiosk"),
        ("SearchUsersByImage", {"CollectionId": COLLECTION, "Image": image}, "kiosk"),
        ("SearchFaces", {"CollectionId": COLLECTION, "FaceId": faces[0], "MaxFaces": 5}, "kiosk"),
        ("SearchUsers", {"CollectionId": COLLECTION, "UserId": "resident"}, "kiosk"),
        ("ListFaces", {"CollectionId": COLLECTION, "MaxResults": 5}, "kiosk"),
        ("ListUsers", {"CollectionId": COLLECTION}, "kiosk"),
        ("ListCollections", {"MaxResults": 10}, "kiosk"),
        ("DescribeCollection", {"CollectionId": COLLECTION}, "kiosk"),
        ("IndexFaces", {"CollectionId": COLLECTION, "Image": image, "ExternalImageId": "x"}, "kiosk"),
        ("IndexFaces", {"CollectionId": absent, "Image": image}, "admin"),
        ("CreateCollection", {"CollectionId": "fuzzed"}, "kiosk"),
        ("CreateUser", {"CollectionId": COLLECTION, "UserId": "fuzzed"}, "kiosk"),
        ("AssociateFaces", {"CollectionId": COLLECTION, "UserId": "resident", "FaceIds": faces[1:2]}, "kiosk"),
        ("DeleteFaces", {"CollectionId": COLLECTION, "FaceIds": [ghost]}, "admin"),
        ("DeleteCollection", {"CollectionId": absent}, "admin"),
        ("DeleteUser", {"CollectionId": COLLECTION, "UserId": "nobody-here"}, "admin"),
        ("DisassociateFaces", {"CollectionId": COLLECTION, "UserId": "nobody-here", "FaceIds": faces[:1]},
         "admin"),
    ]


def mutate_value(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, -1, 2**31, 2**63, 1e308, -1e-308, "", "a" * rng.randint(1, 20_000),
                       "\u0000\ud7ff\U0001f600", "../../etc/passwd", [], [1, "x", None], {}, {"a": {"b": [[]]}},
                       "NaN", "Infinity", str(uuid.uuid4()), rng.random()])


def mutate_json(params: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    mutated = copy.deepcopy(params)
    for _ in range(rng.randint(1, 3)):
        keys = list(mutated)
        move = rng.randrange(4)
        if move == 0 and keys:
            del mutated[rng.choice(keys)]
        elif move == 1:
            mutated[rng.choice(["Unknown", "MaxFaces", "QualityFilter", "FaceMatchThreshold", "NextToken",
                                "UserId", "FaceIds", "Image", "Attributes"])] = mutate_value(rng)
        elif move == 2 and keys:
            mutated[rng.choice(keys)] = mutate_value(rng)
        elif keys:  # one level down
            key = rng.choice(keys)
            if isinstance(mutated[key], dict) and mutated[key]:
                inner = rng.choice(list(mutated[key]))
                mutated[key][inner] = mutate_value(rng)
            elif isinstance(mutated[key], list) and mutated[key]:
                mutated[key][rng.randrange(len(mutated[key]))] = mutate_value(rng)
    return mutated


def mutate_image(data: bytes, rng: random.Random) -> bytes:
    move = rng.randrange(5)
    if move == 0:
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 64)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if move == 1:
        return data[:rng.randrange(len(data))]
    if move == 2:
        return rng.randbytes(rng.randint(0, 4096)) + data
    if move == 3:
        return b"\x89PNG\r\n\x1a\n" + data[8:]
    return rng.randbytes(rng.randint(1, 50_000))


def mutate_bytes(body: bytes, rng: random.Random) -> bytes:
    move = rng.randrange(3)
    if move == 0 and body:
        flipped = bytearray(body)
        for _ in range(rng.randint(1, 16)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if move == 1:
        return body[:rng.randrange(len(body) + 1)]
    cut = rng.randrange(len(body) + 1)
    return body[:cut] + rng.choice([b"{", b"}", b"[", b'"', b"\\", b"\x00", b"\xff\xfe", b"1e999", b"," * 100]) + \
        body[cut:]


def mutate_headers(headers: dict[str, str], rng: random.Random) -> dict[str, str]:
    """Headers changed after signing: most of these break the signature, some only the protocol."""
    headers = dict(headers)
    move = rng.randrange(9)
    if move == 0:
        headers["Content-Type"] = rng.choice(["text/plain", "application/json; charset=latin-1", "", "a" * 3000,
                                              "application/x-amz-json-1.0", "multipart/form-data; boundary=x"])
    elif move == 1:
        headers["X-Amz-Target"] = rng.choice(["RekognitionService.", "DynamoDB_20120810.ListTables",
                                              "RekognitionService.DetectLabels", "rekognitionservice.listfaces",
                                              "RekognitionService." + "A" * 5000])
    elif move == 2:
        headers.pop(rng.choice(["Authorization", "X-Amz-Date", "X-Amz-Target", "Content-Type"]), None)
    elif move == 3:
        headers["X-Amz-Date"] = rng.choice(["20200101T000000Z", "garbage", "99991231T235959Z", ""])
    elif move == 4:
        headers["Host"] = rng.choice(["rekognition.us-east-1.amazonaws.com", "evil.example", "", "a" * 300])
    elif move == 5:
        for i in range(rng.randint(1, 60)):
            headers[f"X-Fuzz-{i}"] = rng.randbytes(rng.randint(0, 200)).hex()
    elif move == 6:
        headers["Authorization"] = headers.get("Authorization", "")[:rng.randint(0, 200)]
    elif move == 7:
        headers["X-Amz-Security-Token"] = "token"
    else:
        headers["X-Amz-Content-Sha256"] = rng.choice(["UNSIGNED-PAYLOAD", "0" * 64, "zz"])
    return headers


def fuzz_request(corpus: list[tuple[str, dict[str, Any], str]], keys: dict[str, Credentials], port: int,
                 rng: random.Random) -> tuple[str, bytes, dict[str, str]]:
    operation, params, profile = rng.choice(corpus)
    move = rng.randrange(4)
    body: bytes
    if move == 0:
        body = json.dumps(mutate_json(params, rng)).encode()
    elif move == 1 and "Image" in json.dumps(list(params)):
        mutated = copy.deepcopy(params)
        image_key = next(k for k in mutated if "Image" in k)
        mutated[image_key] = {"Bytes": base64.b64encode(
            mutate_image(base64.b64decode(params[image_key]["Bytes"]), rng)).decode()}
        body = json.dumps(mutated).encode()
    else:
        body = json.dumps(params).encode()
        if move != 3:
            body = mutate_bytes(body, rng)
    headers = sign(keys[profile], port, operation, body)
    if move == 3:
        headers = mutate_headers(headers, rng)
    return operation, body, headers


def snapshot(client: Any) -> Any:
    """Every collection with its faces and users, as the API lists them."""
    state = {}
    for collection in client.list_collections()["CollectionIds"]:
        faces = [f["FaceId"] for page in client.get_paginator("list_faces").paginate(CollectionId=collection)
                 for f in page["Faces"]]
        users = [(u["UserId"], u["UserStatus"]) for u in client.list_users(CollectionId=collection)["Users"]]
        state[collection] = (sorted(faces), users)
    return state


def fuzz(port: int, keys: dict[str, Credentials], corpus: list[tuple[str, dict[str, Any], str]], total: int,
         seed: int) -> dict[str, Any]:
    """`total` fuzzed requests from four threads; statuses and codes, and any 5xx with what caused it."""
    outcomes: Counter[str] = Counter()
    server_errors: list[dict[str, Any]] = []
    transport_errors: Counter[str] = Counter()
    lock = threading.Lock()
    per_thread = total // 4

    def worker(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(per_thread):
            operation, body, headers = fuzz_request(corpus, keys, port, rng)
            try:
                conn.request("POST", "/", body, headers)
                response = conn.getresponse()
                answer = response.read()
                status = response.status
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                with lock:
                    transport_errors[type(exc).__name__] += 1
                continue
            try:
                code = json.loads(answer).get("__type", "") if status >= 300 else ""
            except ValueError:
                code = "not-json"
            with lock:
                outcomes[f"{status} {code}".strip()] += 1
                if status >= 500:
                    server_errors.append({"operation": operation, "status": status, "answer": answer[:300].decode(
                        "latin-1"), "body": body[:300].decode("latin-1"), "headers": list(headers)})
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"requests": per_thread * 4, "seconds": round(time.perf_counter() - started, 1),
            "outcomes": dict(outcomes.most_common()), "server_errors": len(server_errors),
            "server_error_examples": server_errors[:5], "transport_errors": dict(transport_errors)}


def metric_values(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("edge_face_connections", "edge_face_accept_failures", "edge_face_auth_failures")) \
                and "_created" not in line:
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--reopen-per-s", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="per load phase")
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--faces", type=int, default=40, help="real faces enrolled")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--max-connections", type=int, default=None,
                        help="server.max_connections for the daemon (default: its own default)")
    parser.add_argument("--out", default="abuse.json", help="file name under bench/results")
    parser.add_argument("--data", type=Path, default=data_root())
    args = parser.parse_args()
    photo = query_photo(args.data / "misc")
    enrol = sorted((args.data / "faces-dev").glob("*/*_0001.jpg"))[:args.faces]
    with tempfile.TemporaryDirectory() as tmp:
        state_dir, log = Path(tmp) / "state", Path(tmp) / "daemon.log"
        keys = {key.name: Credentials(key.access_key_id, key.secret_access_key)
                for key in KeyStore.open(state_dir)[0].all()}
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {} if args.max_connections is None else {
            "EDGE_FACE_SERVER__MAX_CONNECTIONS": str(args.max_connections)}
        daemon = start_daemon(state_dir, port, log, env)
        try:
            def client(profile: str) -> Any:
                return boto3.client("rekognition", region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}",
                                    aws_access_key_id=keys[profile].access_key,
                                    aws_secret_access_key=keys[profile].secret_key,
                                    config=Config(retries={"max_attempts": 1}))

            admin, kiosk_client = client("admin"), client("kiosk")
            admin.create_collection(CollectionId=COLLECTION)
            faces = [admin.index_faces(CollectionId=COLLECTION, Image={"Bytes": p.read_bytes()}, MaxFaces=1,
                                       ExternalImageId=p.name)["FaceRecords"] for p in enrol]
            face_ids = [r[0]["Face"]["FaceId"] for r in faces if r]
            admin.index_faces(CollectionId=COLLECTION, Image={"Bytes": photo}, MaxFaces=1)
            admin.create_user(CollectionId=COLLECTION, UserId="resident")
            admin.associate_faces(CollectionId=COLLECTION, UserId="resident", FaceIds=face_ids[:1])
            kiosk(kiosk_client, photo, 3, "warm-up")

            poller = HealthPoller(port)
            poller.start()
            phases = []
            poller.phase = "quiet"
            phases.append(kiosk(kiosk_client, photo, args.seconds, "quiet"))

            stop = multiprocessing.Event()
            report: multiprocessing.Queue[dict[str, int]] = multiprocessing.Queue()
            opened = multiprocessing.Value("i", 0)
            attacker = multiprocessing.Process(target=attack, args=(
                port, keys["kiosk"], args.idle, args.slow, args.reopen_per_s, stop, opened, report))
            poller.phase = "ramp"
            attacker.start()
            ramp_started = time.monotonic()
            while opened.value < 0.95 * (args.idle + args.slow) and time.monotonic() - ramp_started < 30:
                time.sleep(0.1)
            ramp_s = time.monotonic() - ramp_started
            connections_before = metric_values(port)
            poller.phase = "attack"
            phases.append(kiosk(kiosk_client, photo, args.seconds, "attack"))
            connections_during = metric_values(port)
            attacker_open = opened.value
            stop.set()
            attacker_counts = report.get(timeout=60)
            attacker.join(30)
            time.sleep(2)
            poller.phase = "quiet again"
            phases.append(kiosk(kiosk_client, photo, args.seconds, "quiet again"))
            poller.stop.set()
            poller.join()

            before = snapshot(admin)
            fuzzed = fuzz(port, keys, fuzz_corpus(photo, face_ids), args.fuzz, args.seed)
            after = snapshot(admin)
            fuzzed["state_unchanged"] = before == after
            final_metrics = metric_values(port)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        log_text = log.read_text(errors="replace")
    # What the daemon logged, by message (numbers taken out).
    messages = Counter(re.sub(r"\d+", "N", line)[:90] for line in log_text.splitlines() if line.strip())

    quiet = [s for p in phases if p.name != "attack" for s in p.searches]
    attack_phase = next(p for p in phases if p.name == "attack")
    summary = {name: percentiles(values) for name, values in
               (("quiet", quiet), ("attack", attack_phase.searches))}
    result = {
        "daemon_env": env,
        "attack": {"idle": args.idle, "slow": args.slow, "reopen_per_s": args.reopen_per_s,
                   "ramp_s": round(ramp_s, 1), "attacker_sockets_open_at_end": attacker_open,
                   "attacker": attacker_counts, "daemon_metrics_before": connections_before,
                   "daemon_metrics_during": connections_during},
        "kiosk_searches": {p.name: {**percentiles(p.searches), "errors": p.errors} for p in phases},
        "pooled": summary,
        "ratios": {"p50_attack_over_quiet": round(summary["attack"]["p50_ms"] / summary["quiet"]["p50_ms"], 2),
                   "p99_attack_over_quiet": round(summary["attack"]["p99_ms"] / summary["quiet"]["p99_ms"], 2)},
        "healthz": {phase: {**percentiles(seen), "failed": poller.failed[phase]}
                    for phase, seen in poller.seen.items()} | {
            phase: {"n": 0, "failed": count} for phase, count in poller.failed.items() if phase not in poller.seen},
        "fuzz": fuzzed,
        "daemon_metrics_at_end": final_metrics,
        "daemon_log": {"bytes": len(log_text.encode()), "tracebacks": log_text.count("Traceback"),
                       "most_common": messages.most_common(8)},
        "machine": {"cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "load_average_after": os.getloadavg()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
