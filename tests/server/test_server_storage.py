"""What the daemon leaves on disk: private modes whatever the umask, and erased ids."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from server_support import Daemon, running_daemon

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


def test_delete_faces_while_another_process_reads_commits_and_answers(daemon: Daemon,
                                                                      people: list[list[Path]]) -> None:
    """A reader in another process blocks the WAL's truncation, never the answer: the erasure finishes
    in the background once the reader is gone."""
    client = daemon.client(read_timeout=20)
    client.create_collection(CollectionId="reader")
    face = client.index_faces(CollectionId="reader", Image={"Bytes": people[2][0].read_bytes()},
                              ExternalImageId="held-by-a-reader.jpg", MaxFaces=1)["FaceRecords"][0]["Face"]["FaceId"]
    with sqlite3.connect(daemon.state_dir / "store.sqlite3", isolation_level=None) as reader:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM faces").fetchone()[0] >= 1  # holds its snapshot
        answer = client.delete_faces(CollectionId="reader", FaceIds=[face])
        assert answer["DeletedFaces"] == [face]
        assert daemon.request("GET", "/readyz").json["erasure_pending"] is True
        reader.execute("COMMIT")
    assert client.list_faces(CollectionId="reader")["Faces"] == []
    _wait_for(lambda: not _holding(daemon.state_dir, "held-by-a-reader.jpg"))
    assert daemon.request("GET", "/readyz").json["erasure_pending"] is False


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: a file system that really fills up (ENOSPC, SQLITE_FULL)."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(disk)],
                          capture_output=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write zeros until the file system refuses another byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while os.write(fd, bytes(size)):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_writes_cleanly_and_still_erases(small_disk: Path, people: list[list[Path]]) -> None:
    with running_daemon(small_disk / "state", env={"EDGE_FACE_STORE__RESERVE_BYTES": str(4 << 20)}) as daemon:
        client = daemon.client()
        client.create_collection(CollectionId="full")
        faces = [client.index_faces(CollectionId="full", Image={"Bytes": photo.read_bytes()}, MaxFaces=1)
                 ["FaceRecords"][0]["Face"]["FaceId"] for photo in people[0][:2]]
        client.create_user(CollectionId="full", UserId="leaving")
        filler = _fill(small_disk)
        before = client.list_faces(CollectionId="full")["Faces"]

        with pytest.raises(ClientError) as raised:
            client.index_faces(CollectionId="full", Image={"Bytes": people[0][2].read_bytes()}, MaxFaces=1)
        error = raised.value.response
        assert (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]) == (
            503, "ServiceUnavailableException")
        assert "disk is full" in error["Error"]["Message"]
        assert client.list_faces(CollectionId="full")["Faces"] == before
        ready = daemon.request("GET", "/readyz")
        assert ready.status == 503 and ready.json["status"] == "store unwritable"
        assert "disk is full" in ready.json["reason"]

        # Erasures still work on the full disk.
        assert client.delete_faces(CollectionId="full", FaceIds=faces[:1])["DeletedFaces"] == faces[:1]
        client.delete_user(CollectionId="full", UserId="leaving")
        assert [f["FaceId"] for f in client.list_faces(CollectionId="full")["Faces"]] == faces[1:]
        assert client.list_users(CollectionId="full")["Users"] == []

        filler.unlink()
        assert daemon.request("GET", "/readyz").status == 200
        assert client.index_faces(CollectionId="full", Image={"Bytes": people[0][2].read_bytes()},
                                  MaxFaces=1)["FaceRecords"]


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
