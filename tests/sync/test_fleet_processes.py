"""The fleet with real processes and real models on loopback: a central and device daemons, as installed.

Each central and device is `edge-face serve` in its own process; the central enrols through boto3 and
every device is provisioned with `edge-face central add-device`. Faults are real: processes killed with
SIGKILL mid-snapshot and mid-apply, a central gone for longer than the feed's lifetime, enrolment load.
(Tampering on the wire is tested with the same HTTP stack in test_feed.py.)
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from server_support import REPO, Daemon, free_port, start_daemon
from sync_support import SlowProxy, files_holding

from bench.synthetic import SyntheticFaces, new_faces
from edge.store import Store

pytestmark = pytest.mark.slow
WAIT_S = 120.0


def _central_env(dsn: str | None, **extra: str) -> dict[str, str]:
    env = {"EDGE_FACE_ROLE": "central", "EDGE_FACE_FEED__PUBLISH_INTERVAL_S": "0.5", **extra}
    if dsn:
        env |= {"EDGE_FACE_STORE__BACKEND": "postgres", "EDGE_FACE_STORE__POSTGRES_DSN": dsn}
    return env


def _provision(central: Daemon, directory: Path, name: str) -> Path:
    """`edge-face central add-device`, as a technician runs it on the central."""
    subprocess.run([sys.executable, "-m", "edge.cli", "central", "--state-dir", str(central.state_dir), "add-device",
                    name, "--collections", "door", "--url", central.url, "--out", str(directory)],
                   cwd=REPO, env={**os.environ, **central.env}, check=True, capture_output=True)
    return directory / "config.yaml"


def _start_device(directory: Path, config: Path) -> Daemon:
    directory.mkdir(parents=True, exist_ok=True)
    return start_daemon(directory / "state", env={"EDGE_FACE_CONFIG": str(config), "EDGE_FACE_SYNC__INTERVAL_S": "0.5",
                                                  "EDGE_FACE_SYNC__MAX_BACKOFF_S": "2"})


def _sync(device: Daemon) -> dict[str, Any]:
    return dict(json.loads(device.request("GET", "/readyz").body).get("sync", {}).get("door", {}))


def _until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def _converged(device: Daemon, faces: int) -> Callable[[], bool]:
    def check() -> bool:
        status = _sync(device)
        return bool(status.get("applied_seq")) and status["lag_changes"] == 0 and status["error"] is None and (
            device.client().describe_collection(CollectionId="door")["FaceCount"] == faces)
    return check


def _match(device: Daemon, photo: Path) -> list[str]:
    found = device.client("kiosk").search_faces_by_image(CollectionId="door", Image={"Bytes": photo.read_bytes()})
    return [m["Face"].get("ExternalImageId", "") for m in found["FaceMatches"]]


def _vector(state_dir: Path, face_id: str) -> bytes:
    with sqlite3.connect(f"file:{state_dir / 'store.sqlite3'}?mode=ro", uri=True) as conn:
        return bytes(conn.execute("SELECT vector FROM faces WHERE face_id = ?", (face_id,)).fetchone()[0])


@pytest.fixture(params=["postgres", "sqlite"])
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    dsn = str(request.getfixturevalue("pg_dsn")) if request.param == "postgres" else None
    daemon = start_daemon(tmp_path / "central", env=_central_env(dsn))
    yield daemon
    daemon.stop()


def test_enrol_once_and_every_door_searches_then_forgets(central: Daemon, people: list[list[Path]],
                                                        tmp_path: Path) -> None:
    admin = central.client()
    admin.create_collection(CollectionId="door")
    names = [photos[0].parent.name for photos in people[:3]]
    face_ids = [admin.index_faces(CollectionId="door", Image={"Bytes": photos[0].read_bytes()},
                                  ExternalImageId=name)["FaceRecords"][0]["Face"]["FaceId"]
                for photos, name in zip(people, names, strict=False)]
    admin.create_user(CollectionId="door", UserId="user-of-" + names[0])
    admin.associate_faces(CollectionId="door", UserId="user-of-" + names[0], FaceIds=[face_ids[0]])
    with ExitStack() as stack:
        devices = [_start_device(tmp_path / name, _provision(central, tmp_path / f"{name}-provision", name))
                   for name in ("door-1", "door-2")]
        for device in devices:
            stack.callback(device.stop)
        for device in devices:
            _until(_converged(device, 3), "the device has the collection")
            for photos, name in zip(people, names, strict=False):
                assert _match(device, photos[1])[:1] == [name]  # another photo of each person
            found = device.client("kiosk").search_users_by_image(CollectionId="door",
                                                                 Image={"Bytes": people[0][1].read_bytes()})
            assert [m["User"]["UserId"] for m in found["UserMatches"]] == ["user-of-" + names[0]]
        secrets = [_vector(devices[0].state_dir, face_ids[1]), names[1].encode(), b"user-of-" + names[0].encode()]
        assert all(files_holding(devices[0].state_dir, needle) for needle in secrets)

        admin.delete_faces(CollectionId="door", FaceIds=[face_ids[1]])
        admin.disassociate_faces(CollectionId="door", UserId="user-of-" + names[0], FaceIds=[face_ids[0]])
        admin.delete_user(CollectionId="door", UserId="user-of-" + names[0])
        for device in devices:
            _until(_converged(device, 2), "the device applied the deletions")
            assert names[1] not in _match(device, people[1][1])
            found = device.client("kiosk").search_users_by_image(CollectionId="door",
                                                                 Image={"Bytes": people[0][1].read_bytes()})
            assert found["UserMatches"] == []
            for needle in secrets:
                assert files_holding(device.state_dir, needle) == [], needle


def _big_central(tmp_path: Path, faces: int, port: int, **env: str) -> tuple[Daemon, str]:
    """A central whose `door` holds `faces` synthetic faces of the real model (enrolled offline, quickly)."""
    state_dir = tmp_path / "central"
    central = start_daemon(state_dir, env=_central_env(None, **env), port=port)
    model = central.client().create_collection(CollectionId="door")["FaceModelVersion"]
    central.stop()
    with Store(state_dir, checkpoint_interval_s=None) as store:
        vectors = SyntheticFaces(128, 1000, seed=3).sample(np.arange(faces) % 1000, stream=1)
        for chunk in np.array_split(vectors, max(1, faces // 5000)):
            store.add_faces("door", new_faces(chunk, external_image_id="synthetic"), model_version=model)
    return start_daemon(state_dir, env=_central_env(None, **env), port=port), model


def _device_copy(state_dir: Path) -> tuple[int, int] | None:
    """(applied sequence, faces) of a stopped device's copy, or None when it has none."""
    with sqlite3.connect(f"file:{state_dir / 'store.sqlite3'}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT applied_seq FROM synced_collections WHERE collection_id = 'door'").fetchone()
        count = int(conn.execute("SELECT count(*) FROM faces WHERE collection_id = 'door'").fetchone()[0])
    if row is None:
        assert count == 0
        return None
    return int(row[0]), count


def test_central_and_device_killed_mid_snapshot(people: list[list[Path]], tmp_path: Path) -> None:
    faces = 20_000
    port = free_port()
    central, _ = _big_central(tmp_path, faces, port)
    proxy = SlowProxy(port)  # the device reaches the central through it, so a snapshot takes seconds to arrive
    config = _provision(central, tmp_path / "provision", "door-1")
    config.write_text(config.read_text().replace(central.url, proxy.url))
    seeder = random.Random(11)
    try:
        # the central dies while the device downloads its first snapshot: the device has nothing, says why
        device = _start_device(tmp_path / "door-1", config)
        _until(lambda: proxy.down > 2_000_000, "the snapshot is half through")
        central.process.kill()
        central.process.wait()
        _until(lambda: (_sync(device).get("error") or {}).get("reason") in ("unreachable", "length", "hash"),
               "the device reports the central gone")
        assert device.client().list_collections()["CollectionIds"] == []
        central = start_daemon(central.state_dir, env=central.env, port=port)
        _until(_converged(device, faces), "the device has the snapshot once the central is back")

        # the device is killed at random moments as it starts and applies: its copy is whole, then current
        device.process.kill()
        device.process.wait()
        central.client().index_faces(CollectionId="door", Image={"Bytes": people[0][0].read_bytes()})
        for _ in range(3):
            device = start_daemon(device.state_dir, env=device.env)
            time.sleep(seeder.uniform(0.0, 1.0))
            device.process.kill()
            device.process.wait()
            copy = _device_copy(device.state_dir)
            assert copy is not None and copy[1] in (faces, faces + 1), copy  # one batch: whole or absent
        device = start_daemon(device.state_dir, env=device.env)
        _until(_converged(device, faces + 1), "the restarted device catches up")
        device.stop()
    finally:
        proxy.close()
        central.stop()


def test_central_gone_longer_than_the_feed_lifetime(people: list[list[Path]], tmp_path: Path) -> None:
    port = free_port()
    env = {"EDGE_FACE_FEED__METADATA_LIFETIME_S": "6"}
    central = start_daemon(tmp_path / "central", env=_central_env(None, **env), port=port)
    try:
        central.client().create_collection(CollectionId="door")
        central.client().index_faces(CollectionId="door", Image={"Bytes": people[0][0].read_bytes()},
                                     ExternalImageId="first")
        device = _start_device(tmp_path / "door-1", _provision(central, tmp_path / "provision", "door-1"))
        try:
            _until(_converged(device, 1), "the device synced")
            central.stop()
            assert _match(device, people[0][1]) == ["first"]  # offline, within the lifetime: still serving
            _until(lambda: not _sync(device)["serving"], "the copy expires", timeout_s=30)
            with pytest.raises(ClientError) as refused:
                _match(device, people[0][1])
            assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
            assert _sync(device)["error"]["reason"] == "unreachable"
            central = start_daemon(central.state_dir, env=central.env, port=port)
            _until(lambda: bool(_sync(device)["serving"]), "the device serves again once it synced")
            assert _match(device, people[0][1]) == ["first"]
        finally:
            device.stop()
    finally:
        central.stop()


def test_enrolment_load_while_devices_sync(people: list[list[Path]], tmp_path: Path) -> None:
    central = start_daemon(tmp_path / "central", env=_central_env(None))
    try:
        central.client().create_collection(CollectionId="door")
        devices = [_start_device(tmp_path / name, _provision(central, tmp_path / f"{name}-provision", name))
                   for name in ("door-1", "door-2")]
        photos = [p for person in people[:24] for p in person[:4]]

        def enrol(part: list[Path]) -> None:
            client = central.client()
            for photo in part:
                client.index_faces(CollectionId="door", Image={"Bytes": photo.read_bytes()},
                                   ExternalImageId=photo.stem, MaxFaces=1)

        workers = [threading.Thread(target=enrol, args=(photos[i::3],)) for i in range(3)]
        for worker in workers:
            worker.start()
        seen: set[int] = set()
        while any(worker.is_alive() for worker in workers):  # the devices sync meanwhile
            seen.update(_sync(device).get("applied_seq", 0) for device in devices)
            time.sleep(0.05)
        for worker in workers:
            worker.join()
        faces = central.client().list_faces(CollectionId="door", MaxResults=4096)["Faces"]
        for device in devices:
            _until(_converged(device, len(faces)), "the device caught up after the load")
            on_device = device.client().list_faces(CollectionId="door", MaxResults=4096)["Faces"]
            assert on_device == faces
            device.stop()
        assert len(seen) > 2  # the devices applied batches while enrolment went on
    finally:
        central.stop()
