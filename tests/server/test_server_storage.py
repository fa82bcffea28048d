"""What the daemon leaves on disk: private modes whatever the umask, and erased ids."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from server_support import Daemon, running_daemon, start_daemon

from edge.rekognition.tokens import TOKEN_KEY_FILE
from edge.server.credentials import CREDENTIALS_FILE, KEYS_FILE

#: HNSW from the first face, so that index files exist on disk too.
HNSW = {"EDGE_FACE_STORE__EXACT_MAX": "0"}


def _open_modes(state: Path) -> dict[str, str]:
    """Every path under the state directory (itself included) that anyone but its owner may use."""
    paths = [state, *state.rglob("*")]
    return {str(p.relative_to(state)): oct(p.stat().st_mode & 0o777) for p in paths
            if p.stat().st_mode & 0o077}


def test_every_file_and_directory_is_private_whatever_the_umask(tmp_path: Path, people: list[list[Path]]) -> None:
    state = tmp_path / "state"
    with running_daemon(state, env=HNSW, preexec=lambda: os.umask(0o022)) as daemon:
        client = daemon.client()
        client.create_collection(CollectionId="modes")
        ids = [client.index_faces(CollectionId="modes", Image={"Bytes": photo.read_bytes()}, MaxFaces=1)
               ["FaceRecords"][0]["Face"]["FaceId"] for photo in people[0][:3]]
        client.delete_faces(CollectionId="modes", FaceIds=ids[:1])  # saves the index files
        names = {p.name for p in state.rglob("*")}
        assert {"store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm", "index.bin", "index.json"} <= names
        assert _open_modes(state) == {}
    assert _open_modes(state) == {}


def test_a_state_directory_found_open_is_tightened(tmp_path: Path, people: list[list[Path]]) -> None:
    """Files left by an older version under umask 022 are made private at start, and the log says so."""
    state = tmp_path / "state"
    with running_daemon(state, env=HNSW) as daemon:
        daemon.client().create_collection(CollectionId="old")
        daemon.client().index_faces(CollectionId="old", Image={"Bytes": people[0][0].read_bytes()}, MaxFaces=1)
    secrets = {state / name for name in (KEYS_FILE, CREDENTIALS_FILE, TOKEN_KEY_FILE)}
    for path in {state, *state.rglob("*")} - secrets:
        path.chmod(path.stat().st_mode | stat.S_IRGRP | stat.S_IROTH | (0o055 if path.is_dir() else 0))
    assert {"store.sqlite3", "collections", "LOCK"} <= set(_open_modes(state))
    with running_daemon(state, env=HNSW, preexec=lambda: os.umask(0o022)) as daemon:
        assert _open_modes(state) == {}
        assert "made private" in daemon.log.read_text()
    # A secret others could read may have been copied: it stops the start instead (keys.json's own test).
    (state / CREDENTIALS_FILE).chmod(0o644)
    with pytest.raises(RuntimeError, match="accessible by other users"):
        start_daemon(state)


def _holding(state: Path, text: str) -> list[str]:
    needle = text.encode()
    return [p.name for p in state.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_deleted_user_ids_and_external_image_ids_leave_no_byte_on_disk(daemon: Daemon,
                                                                       people: list[list[Path]]) -> None:
    """Through boto3 (which sends a ClientRequestToken with every user call): DeleteUser, then DeleteFaces."""
    client = daemon.client()
    client.create_collection(CollectionId="erasure")
    user, external = "staff-4711-Jane-Roe", "visitor-Jane-Roe-0001.jpg"
    face = client.index_faces(CollectionId="erasure", Image={"Bytes": people[1][0].read_bytes()},
                              ExternalImageId=external, MaxFaces=1)["FaceRecords"][0]["Face"]["FaceId"]
    client.create_user(CollectionId="erasure", UserId=user)
    client.associate_faces(CollectionId="erasure", UserId=user, FaceIds=[face])
    assert _holding(daemon.state_dir, user) and _holding(daemon.state_dir, external)  # the scan sees them
    client.delete_user(CollectionId="erasure", UserId=user)
    assert _holding(daemon.state_dir, user) == []
    client.delete_faces(CollectionId="erasure", FaceIds=[face])
    assert _holding(daemon.state_dir, external) == []
