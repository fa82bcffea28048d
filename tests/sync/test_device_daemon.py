"""A device daemon (the real app, fake models) following a central: its loop, /readyz, /metrics, `edge-face sync`,
and the error a local enrolment in a synced collection gets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
import urllib3
from botocore.config import Config
from botocore.exceptions import ClientError
from fakes import photo, serving
from sync_support import Central, provision

from edge.cli import main
from edge.config import Settings
from edge.server.credentials import CREDENTIALS_FILE


def _client(url: str, state_dir: Path, profile: str = "admin") -> Any:
    session = botocore.session.Session()
    session.set_config_variable("credentials_file", str(state_dir / CREDENTIALS_FILE))
    return boto3.Session(botocore_session=session, profile_name=profile).client(
        "rekognition", region_name="us-east-1", endpoint_url=url, config=Config(retries={"max_attempts": 1}))


def _until(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_device_daemon_syncs_on_its_interval_and_on_demand(central: Central, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    central.client().create_collection(CollectionId="door")
    central.enrol("door", "ann")
    sync = provision(central, tmp_path, "door-1", ["door"]).model_copy(update={"interval_s": 0.3})
    state_dir = tmp_path / "device"
    with serving(Settings(state_dir=state_dir, sync=sync)) as (url, _):
        kiosk, admin = _client(url, state_dir, "kiosk"), _client(url, state_dir)

        def ready() -> Any:
            return json.loads(urllib3.request("GET", url + "/readyz").data)

        _until(lambda: ready()["sync"]["door"]["applied_seq"] > 0)
        found = kiosk.search_faces_by_image(CollectionId="door", Image={"Bytes": photo(("ann", 100, 80, 140))})
        assert [m["Face"]["ExternalImageId"] for m in found["FaceMatches"]] == ["ann"]

        central.enrol("door", "bob")  # arrives on the device's own interval
        _until(lambda: len(admin.list_faces(CollectionId="door")["Faces"]) == 2)
        detail = ready()["sync"]["door"]
        assert detail["error"] is None and detail["serving"] and detail["lag_changes"] == 0

        with pytest.raises(ClientError) as refused:
            admin.index_faces(CollectionId="door", Image={"Bytes": photo(("cyd", 40, 40, 160))})
        error = refused.value.response["Error"]
        assert error["Code"] == "InvalidParameterException" and central.url in error["Message"]
        admin.create_collection(CollectionId="local")  # local collections stay possible
        admin.index_faces(CollectionId="local", Image={"Bytes": photo(("cyd", 40, 40, 160))})

        capsys.readouterr()
        assert main(["sync", "--state-dir", str(state_dir), "--url", url]) == 0
        assert json.loads(capsys.readouterr().out)["door"]["applied_seq"] > 0
        assert main(["status", "--state-dir", str(state_dir), "--json"]) == 0
        collections = {c["collection_id"]: c for c in json.loads(capsys.readouterr().out)["collections"]}
        assert (collections["door"]["synced_from"], collections["door"]["lag_changes"]) == (central.url, 0)
        assert collections["local"]["synced_from"] is None

        assert central.cli("revoke-device", "door-1") == 0  # the device says why it cannot sync
        assert main(["sync", "--state-dir", str(state_dir), "--url", url]) == 1
        assert ready()["sync"]["door"]["error"]["reason"] == "unauthorized"
        metrics = urllib3.request("GET", url + "/metrics").data.decode()
        assert 'edge_face_sync_failures_total{collection="door",reason="unauthorized"}' in metrics
        assert 'edge_face_sync_lag_changes{collection="door"} 0.0' in metrics
        assert 'edge_face_sync_last_success_timestamp_seconds{collection="door"}' in metrics
        found = kiosk.search_faces_by_image(CollectionId="door", Image={"Bytes": photo(("bob", 100, 80, 140))})
        assert [m["Face"]["ExternalImageId"] for m in found["FaceMatches"]] == ["bob"]  # still serving
