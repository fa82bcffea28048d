"""Fleet sync: how long a new device takes to join, how fast it applies changes, what crosses the wire,
and how fast two central instances on one PostgreSQL enrol. Results go to bench/results/sync.json.

- Join: a central (`edge-face serve --role central`, its own process) holds 10k and 100k synthetic faces
  of the real model; a new device (Store + Syncer in this process, as in the daemon) syncs and answers a
  first search. Timed for the first device (the central cuts the snapshot) and the next one.
- Index: the next device joins once the central has shipped the snapshot's graph (built behind it); what
  building that graph on the device would take instead is timed on the same vectors.
- Changes per second: batches of 100 new faces and 20 deletions applied to a 10k copy (store only).
- Bytes per enrolled face: the snapshot per face, and one sync after enrolling 1 and 20 real photos.
- Enrolment: IndexFaces of real photos by 4 client threads against one central, then two, on one PostgreSQL.

    EDGE_FACE_PIPELINE__MODEL_DIR=~/.cache/edge-face/models .venv/bin/python -m bench.sync
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import numpy as np
import yaml
from botocore.config import Config

from bench.http import start
from bench.machine import cpu_model
from bench.postgres import create_database, throwaway_postgres
from bench.synthetic import SyntheticFaces, new_faces
from edge.cli import main as cli
from edge.config import FeedSettings, SyncSettings
from edge.evaluation.dataset import data_root
from edge.server.credentials import CREDENTIALS_FILE
from edge.store import BoundingBox, FaceRecord, FeedSlice, FeedUpdate, HnswParams, Store
from edge.store.index import HnswIndex
from edge.sync.applier import Syncer
from edge.sync.client import SignedFetcher
from edge.sync.storage import SqliteFeedStorage

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 128
#: The central itself searches exactly here: its own index is not what is measured.
CENTRAL_ENV = {"EDGE_FACE_ROLE": "central", "EDGE_FACE_STORE__EXACT_MAX": "1000000000"}


class CountingFetcher(SignedFetcher):
    """The device's fetcher, counting what arrives and the time spent waiting for it."""

    received = 0
    seconds = 0.0

    def _fetch(self, url: str) -> Iterator[bytes]:
        started = time.perf_counter()
        for chunk in super()._fetch(url):
            self.received += len(chunk)
            yield chunk
        self.seconds += time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _client(state_dir: Path, port: int) -> Any:
    session = botocore.session.Session()
    session.set_config_variable("credentials_file", str(state_dir / CREDENTIALS_FILE))
    return boto3.Session(botocore_session=session, profile_name="admin").client(
        "rekognition", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"max_attempts": 1}))


@contextmanager
def central(state_dir: Path, faces: int, env: dict[str, str] | None = None) -> Iterator[tuple[int, str]]:
    """A central whose `door` holds `faces` synthetic faces; yields (port, the model version)."""
    env = {**CENTRAL_ENV, **(env or {})}
    port = _free_port()
    process = start(state_dir, port, env)
    model = _client(state_dir, port).create_collection(CollectionId="door")["FaceModelVersion"]
    process.terminate()
    process.wait()
    with Store(state_dir, exact_max=10**9, checkpoint_interval_s=None) as store:
        vectors = SyntheticFaces(DIM, max(1, faces // 5), seed=1).sample(np.arange(faces) % max(1, faces // 5), 0)
        for i in range(0, faces, 10_000):
            store.add_faces("door", new_faces(vectors[i:i + 10_000], f"image-{i}", "synthetic"), model_version=model)
    process = start(state_dir, port, env)
    try:
        yield port, model
    finally:
        process.terminate()
        process.wait()


def device(work: Path, central_dir: Path, port: int, model: str, name: str) -> tuple[Store, Syncer, CountingFetcher]:
    out = work / f"{name}-provision"
    assert cli(["central", "--state-dir", str(central_dir), "add-device", name, "--collections", "door",
                "--url", f"http://127.0.0.1:{port}", "--out", str(out)]) == 0
    settings = SyncSettings.model_validate(yaml.safe_load((out / "config.yaml").read_text())["sync"])
    assert settings.access_key_id and settings.secret_access_key
    fetcher = CountingFetcher(settings.access_key_id, settings.secret_access_key, timeout_s=600)
    store = Store(work / name, checkpoint_interval_s=None)
    return store, Syncer(store, settings, work / name, model, fetcher=fetcher), fetcher


def join(work: Path, faces: int) -> dict[str, Any]:
    """The first device joins as the central cuts the snapshot; the next one once the central has shipped the
    snapshot's graph (above `feed.ship_index_min_faces`)."""
    central_dir = work / f"central-{faces}"
    with central(central_dir, faces) as (port, model):
        out: dict[str, Any] = {"faces": faces}
        for attempt in ("first_device", "next_device"):
            if attempt == "next_device" and faces >= FeedSettings().ship_index_min_faces:
                out["central_index_wait_s"] = wait_for_index(central_dir)
            store, syncer, fetcher = device(work, central_dir, port, model, f"{attempt}-{faces}")
            query = SyntheticFaces(DIM, max(1, faces // 5), seed=1).sample(np.array([3]), 99)[0]
            started = time.perf_counter()
            status = syncer.sync_all()["door"]
            synced = time.perf_counter()
            hit = store.search("door", query, model_version=model, k=1)
            answered = time.perf_counter()
            assert status.reason is None and store.face_count("door") == faces and hit, status
            out[attempt] = {"join_s": answered - started, "sync_s": synced - started,
                            "first_search_ms": 1000 * (answered - synced), "index": store.index_kind("door"),
                            "bytes": fetcher.received, "bytes_per_face": fetcher.received / faces,
                            "download_s": fetcher.seconds, "download_mb_s": fetcher.received / 1e6 / fetcher.seconds}
            if attempt == "next_device" and faces >= FeedSettings().ship_index_min_faces:
                out["build_on_device_s"] = build_time(store)
            store.close()
        return out


def wait_for_index(central_dir: Path) -> float:
    """Seconds until the central publishes the graph of the snapshot it just cut (built behind it)."""
    storage = SqliteFeedStorage(central_dir / "feed.sqlite3")
    started = time.perf_counter()
    try:
        while b'"index"' not in (storage.metadata("door", "targets", None) or b""):
            time.sleep(0.5)
        return time.perf_counter() - started
    finally:
        storage.close()


def build_time(store: Store) -> float:
    """What building the graph on the device instead takes, on the same vectors."""
    faces, _ = store.list_faces("door", limit=10**7)
    vectors = np.stack([store.get_face_vector("door", f.face_id) for f in faces])
    started = time.perf_counter()
    HnswIndex.build(DIM, HnswParams(), np.arange(len(vectors), dtype=np.int64), vectors)
    return time.perf_counter() - started


def apply_rate(work: Path) -> dict[str, Any]:
    """Batches of 100 new faces and 20 deletions, applied to a 10k-face copy."""
    syn = SyntheticFaces(DIM, 2000, seed=4)
    box = BoundingBox(0.2, 0.3, 0.4, 0.1)

    def batch(n: int, start: int, deleted: list[str]) -> tuple[FeedUpdate, list[str]]:
        ids = [f"face-{start + i:07d}" for i in range(n)]
        faces = [FaceRecord(fid, "door", "image", "external", box, 99.0, "bench-1", None, 0.0) for fid in ids]
        changes = FeedSlice(0 if start == 0 else start, start + n, faces, syn.sample(np.arange(n) % 2000, start),
                            [], deleted, [])
        return FeedUpdate("door", "http://central", "uid", "arn", "bench-1", DIM, snapshot=start == 0,
                          changes=changes, valid_until=4e9, head_seq=start + n), ids

    with Store(work / "apply", checkpoint_interval_s=None) as store:
        update, alive = batch(10_000, 0, [])
        store.apply_feed(update)
        applied, started, seq = 0, time.perf_counter(), 10_000
        for _ in range(30):
            doomed, alive = alive[:20], alive[20:]
            update, ids = batch(100, seq, doomed)
            store.apply_feed(update)
            alive += ids
            seq += 100
            applied += 120
        seconds = time.perf_counter() - started
    return {"changes": applied, "seconds": seconds, "changes_per_s": applied / seconds,
            "batch": "100 new faces + 20 deletions, each batch one transaction (deletions checkpoint at once)"}


def wire_per_face(work: Path, photos: list[Path]) -> dict[str, Any]:
    """What one sync costs on the wire after enrolling 1 and 20 real faces."""
    central_dir = work / "central-wire"
    with central(central_dir, 1000) as (port, model):
        store, syncer, fetcher = device(work, central_dir, port, model, "wire")
        assert syncer.sync_all()["door"].reason is None
        admin = _client(central_dir, port)
        out: dict[str, Any] = {}
        used = 0
        for count in (1, 20):
            for photo in photos[used:used + count]:
                admin.index_faces(CollectionId="door", Image={"Bytes": photo.read_bytes()}, MaxFaces=1)
            used += count
            before = fetcher.received
            assert syncer.sync_all()["door"].reason is None
            out[f"sync_after_{count}_faces"] = {"bytes": fetcher.received - before,
                                                "bytes_per_face": (fetcher.received - before) / count}
        before = fetcher.received
        syncer.sync_all()
        out["sync_with_nothing_new_bytes"] = fetcher.received - before
        store.close()
        return out


def enrolment(work: Path, photos: list[Path]) -> dict[str, Any]:
    """IndexFaces of real photos from 4 threads, against one central and two on one PostgreSQL."""
    out: dict[str, Any] = {}
    with throwaway_postgres() as (host, port):
        for instances in (1, 2):
            dsn = create_database(host, port, f"enrol{instances}")
            env = {"EDGE_FACE_STORE__BACKEND": "postgres", "EDGE_FACE_STORE__POSTGRES_DSN": dsn,
                   "EDGE_FACE_FEED__KEYS_DIR": str(work / f"keys-{instances}")}
            with ExitStack() as stack:
                ports = []
                for i in range(instances):
                    state_dir = work / f"enrol-{instances}-{i}"
                    central_port = _free_port()
                    process = start(state_dir, central_port, {**CENTRAL_ENV, **env})
                    stack.callback(process.wait)
                    stack.callback(process.terminate)
                    ports.append((state_dir, central_port))
                _client(*ports[0]).create_collection(CollectionId="door")
                errors: list[BaseException] = []

                def enrol(part: list[Path], where: tuple[Path, int], errors: list[BaseException]) -> None:
                    client = _client(*where)
                    try:
                        for photo in part:
                            client.index_faces(CollectionId="door", Image={"Bytes": photo.read_bytes()}, MaxFaces=1)
                    except BaseException as exc:
                        errors.append(exc)

                threads = [threading.Thread(target=enrol, args=(photos[t::4], ports[t % instances], errors))
                           for t in range(4)]
                started = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                seconds = time.perf_counter() - started
                assert not errors, errors
                faces = _client(*ports[-1]).describe_collection(CollectionId="door")["FaceCount"]
                out[f"{instances}_instances"] = {"photos": len(photos), "faces": faces, "seconds": seconds,
                                                 "faces_per_s": faces / seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--photos", type=int, default=120)
    args = parser.parse_args()
    photos = sorted((data_root() / "faces-dev").glob("*/*.jpg"))[:args.photos]
    results: dict[str, Any] = {"machine": {"cpu": cpu_model(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["join"] = [join(work, int(size)) for size in args.sizes.split(",")]
        print(json.dumps(results["join"], indent=2), flush=True)
        results["apply"] = apply_rate(work)
        print(json.dumps(results["apply"], indent=2), flush=True)
        results["wire"] = wire_per_face(work, photos)
        print(json.dumps(results["wire"], indent=2), flush=True)
        results["enrolment"] = enrolment(work, photos)
        print(json.dumps(results["enrolment"], indent=2), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sync.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
