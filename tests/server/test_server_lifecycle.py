"""Start-up, the bounded pool and shutdown of the real daemon process."""

from __future__ import annotations

import base64
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_support import Daemon, Reply, running_daemon, start_daemon

from edge.server.credentials import CREDENTIALS_FILE, KEYS_FILE

#: One worker and no waiting room: a second concurrent image request is throttled.
TIGHT_POOL = {"EDGE_FACE_SERVER__POOL_SIZE": "1", "EDGE_FACE_SERVER__QUEUE_SIZE": "0"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("lifecycle") / "state", env=TIGHT_POOL) as running:
        yield running


@pytest.fixture(scope="module")
def slow_image(misc: Path) -> dict[str, str]:
    """A 14-megapixel photo: its decode keeps a worker busy long enough to overlap requests."""
    return {"Bytes": base64.b64encode((misc / "large_3061x4600_one_face.jpg").read_bytes()).decode()}


def test_first_start_writes_private_credentials_and_says_how_to_use_them(daemon: Daemon) -> None:
    for name in (CREDENTIALS_FILE, KEYS_FILE):
        assert (daemon.state_dir / name).stat().st_mode & 0o777 == 0o600
    log = daemon.log.read_text()
    assert (f"AWS_SHARED_CREDENTIALS_FILE={daemon.credentials} aws --profile admin --region us-east-1 "
            f"--endpoint-url {daemon.url} rekognition list-collections") in log
    # The printed command works as printed.
    assert daemon.aws_json("list-collections")["CollectionIds"] == []


def test_a_full_pool_answers_throttling_at_once(daemon: Daemon, slow_image: dict[str, str]) -> None:
    replies: list[Reply] = []
    start = threading.Barrier(4)

    def detect() -> None:
        start.wait()
        replies.append(daemon.post("DetectFaces", {"Image": slow_image}))

    threads = [threading.Thread(target=detect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(r.code or str(r.status) for r in replies)
    assert "200" in codes and "ThrottlingException" in codes, codes
    assert all(r.status in (200, 400) for r in replies)
    # Operations without an image do not wait for the pool.
    assert daemon.post("ListCollections", {}).status == 200


def test_shutdown_finishes_in_flight_requests_and_keeps_what_was_acknowledged(
        tmp_path: Path, slow_image: dict[str, str]) -> None:
    state = tmp_path / "state"
    first = start_daemon(state, env=TIGHT_POOL)
    keys = first.credentials.read_text()
    try:
        assert first.post("CreateCollection", {"CollectionId": "door"}).status == 200
        replies: list[Reply] = []
        request = threading.Thread(target=lambda: replies.append(
            first.post("IndexFaces", {"CollectionId": "door", "Image": slow_image})))
        request.start()
        _wait_for(lambda: re.search(r"^edge_face_inference_admitted 1\.0$",
                                    first.request("GET", "/metrics").body.decode(), re.M) is not None)
        # SIGTERM while IndexFaces runs; uvicorn re-raises the signal once shut down (systemd counts it clean).
        assert first.stop() == -signal.SIGTERM
        request.join()
        assert "Application shutdown complete." in first.log.read_text()
    finally:
        first.stop()
    assert replies[0].status == 200
    face_id = replies[0].json["FaceRecords"][0]["Face"]["FaceId"]
    with running_daemon(state, env=TIGHT_POOL) as second:
        faces = second.post("ListFaces", {"CollectionId": "door"}).json["Faces"]
        assert [f["FaceId"] for f in faces] == [face_id]
        assert second.credentials.read_text() == keys
        assert "created access keys" not in second.log.read_text()


def test_a_key_file_others_can_read_stops_the_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_daemon(state):
        pass
    (state / KEYS_FILE).chmod(0o644)
    with pytest.raises(RuntimeError, match="chmod 600"):
        start_daemon(state)


def test_unknown_configuration_keys_are_an_error(tmp_path: Path) -> None:
    config = tmp_path / "edge-face.yaml"
    config.write_text(json.dumps({"server": {"prot": 8081}}))
    with pytest.raises(RuntimeError, match="prot"):
        start_daemon(tmp_path / "state", env={"EDGE_FACE_CONFIG": str(config)})


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
