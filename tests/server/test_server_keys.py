"""`edge-face keys` beside a running daemon: a key scoped to one collection and to searches, rotated and
revoked while the daemon runs, and no secret in its files or logs."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from server_support import REGION, REPO, Daemon

from edge.server.credentials import KEYS_FILE


def keys(daemon: Daemon, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "edge.cli", "keys", "--state-dir", str(daemon.state_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def client_from(printed: str, daemon: Daemon, tmp_path: Path) -> tuple[Any, str, str]:
    """A boto3 client with the key `keys create|rotate` printed, as a technician would paste it."""
    section = printed[printed.index("["):]
    parser = configparser.ConfigParser()
    parser.read_string(section)
    name = parser.sections()[0]
    credentials = tmp_path / f"{name}.credentials"
    credentials.write_text(section)
    session = botocore.session.Session()
    session.set_config_variable("credentials_file", str(credentials))
    client = boto3.Session(botocore_session=session, profile_name=name).client(
        "rekognition", region_name=REGION, endpoint_url=daemon.url, config=Config(retries={"max_attempts": 1}))
    return client, parser[name]["aws_access_key_id"], parser[name]["aws_secret_access_key"]


def refused(call: Any, **params: Any) -> str:
    with pytest.raises(ClientError) as raised:
        call(**params)
    code: str = raised.value.response["Error"]["Code"]
    return code


def test_a_scoped_key_rotated_and_revoked_without_a_restart(daemon: Daemon, people: list[list[Path]],
                                                             tmp_path: Path) -> None:
    admin = daemon.client("admin")
    photo = {"Bytes": people[0][0].read_bytes()}
    for collection in ("door-3", "door-4"):
        admin.create_collection(CollectionId=collection)
        admin.index_faces(CollectionId=collection, Image=photo, ExternalImageId="alice")

    kiosk, key_id, secret = client_from(keys(daemon, "create", "kiosk-3", "--collection", "door-3"), daemon, tmp_path)
    assert kiosk.search_faces_by_image(CollectionId="door-3", Image=photo)["FaceMatches"]
    assert refused(kiosk.search_faces_by_image, CollectionId="door-4", Image=photo) == "AccessDeniedException"
    assert refused(kiosk.index_faces, CollectionId="door-3", Image=photo) == "AccessDeniedException"
    assert refused(kiosk.list_collections) == "AccessDeniedException"
    assert kiosk.detect_faces(Image=photo)["FaceDetails"]  # no collection's data: allowed

    listed = [json.loads(line) for line in keys(daemon, "list", "--json").splitlines()]
    assert {"name": "kiosk-3", "scope": "search", "collections": ["door-3"]}.items() <= next(
        k for k in listed if k["access_key_id"] == key_id).items()

    rotated, new_id, new_secret = client_from(keys(daemon, "rotate", "kiosk-3"), daemon, tmp_path)
    assert new_id != key_id
    assert refused(kiosk.search_faces_by_image, CollectionId="door-3", Image=photo) == "UnrecognizedClientException"
    assert rotated.search_faces_by_image(CollectionId="door-3", Image=photo)["FaceMatches"]

    keys(daemon, "revoke", new_id)
    assert refused(rotated.search_faces_by_image, CollectionId="door-3", Image=photo) == (
        "UnrecognizedClientException")

    for path in daemon.state_dir.iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes() and new_secret.encode() not in path.read_bytes(), path
    log = daemon.log.read_text()
    assert secret not in log and new_secret not in log
    assert (daemon.state_dir / KEYS_FILE).stat().st_mode & 0o777 == 0o600
