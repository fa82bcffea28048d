"""`edge-face enroll` as a technician runs it: a folder of staff photos into a running daemon, cut short
by a crash and by Ctrl-C, then finished; and straight into a state directory when no daemon runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from server_support import REPO, Daemon

from edge.config import Settings
from edge.rekognition.operations import Rekognition
from edge.rekognition.tokens import token_secret
from edge.store import open_store
from edge.vision.pipeline import FacePipeline

USERS = 3
PHOTOS_PER_USER = 4
LOOSE = 24


def staff_folder(root: Path, people: list[list[Path]], misc: Path) -> dict[str, str]:
    """Loose photos (one face each), a sub-folder per user, and three photos no door should take.

    Returns the photos that must be refused, by their key, with the word the summary must use.
    """
    root.mkdir()
    for person in people[:LOOSE]:
        shutil.copy(person[0], root / person[0].name)
    for person in people[LOOSE:LOOSE + USERS]:
        folder = root / person[0].parent.name
        folder.mkdir()
        for photo in person[:PHOTOS_PER_USER]:
            shutil.copy(photo, folder / photo.name)
    shutil.copy(misc / "noface_eagle.jpg", root / "eagle.jpg")
    shutil.copy(misc / "two_faces.jpg", root / "two_people.jpg")
    (root / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(4000))
    return {"eagle.jpg": "no face", "two_people.jpg": "several faces", "scan.jpg": "unreadable"}


def enroll(daemon: Daemon, folder: Path, journal: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "AWS_SHARED_CREDENTIALS_FILE": str(daemon.credentials), "AWS_CONFIG_FILE": os.devnull}
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "enroll", str(folder), "--collection-id", "staff", "--create-collection",
         "--endpoint-url", daemon.url, "--profile", "admin", "--journal", str(journal)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        # As from a terminal: a shell's background job (CI under nohup) would pass SIGINT on ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt_after(process: subprocess.Popen[str], journal: Path, lines: int, sig: signal.Signals) -> None:
    """Send `sig` once the journal holds `lines` finished photos (the run is then mid-folder)."""
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= lines:
            process.send_signal(sig)
            break
        time.sleep(0.005)
    process.communicate(timeout=60)


def all_faces(client: Any) -> list[dict[str, Any]]:
    faces, token = [], None
    while True:
        page = client.list_faces(CollectionId="staff", MaxResults=100, **({"NextToken": token} if token else {}))
        faces += page["Faces"]
        token = page.get("NextToken")
        if not token:
            return faces


def test_a_folder_interrupted_twice_is_enrolled_once(daemon: Daemon, people: list[list[Path]], misc: Path,
                                                     tmp_path: Path) -> None:
    if len(people) < LOOSE + USERS:
        pytest.skip(f"faces-dev has fewer than {LOOSE + USERS} people with five photos")
    folder, journal = tmp_path / "staff", tmp_path / "journal.jsonl"
    refused = staff_folder(folder, people, misc)
    total = LOOSE + USERS * PHOTOS_PER_USER + len(refused)

    interrupt_after(enroll(daemon, folder, journal), journal, 5, signal.SIGKILL)  # a crash
    interrupt_after(enroll(daemon, folder, journal), journal, 15, signal.SIGINT)  # Ctrl-C
    assert journal.read_text().count("\n") < total, "the runs were not cut short: the test proves nothing"
    finished = enroll(daemon, folder, journal)
    out, _ = finished.communicate(timeout=300)
    assert finished.returncode == 0, out

    outcomes = {e["key"]: e for e in map(json.loads, journal.read_text().splitlines())}
    assert len(outcomes) == total
    for key, word in refused.items():
        assert outcomes[key]["face_id"] is None
        row = next(line for line in out.splitlines() if key in line)
        assert word in row, row
    enrolled = {e["face_id"] for e in outcomes.values() if e["face_id"]}
    client = daemon.client("admin")
    faces = all_faces(client)
    assert {f["FaceId"] for f in faces} == enrolled
    assert max(Counter(f["ExternalImageId"] for f in faces).values()) == 1, "a photo was enrolled twice"
    users = {u["UserId"]: u["UserStatus"] for u in client.list_users(CollectionId="staff")["Users"]}
    assert users == {person[0].parent.name: "ACTIVE" for person in people[LOOSE:LOOSE + USERS]}
    for person in people[LOOSE:LOOSE + USERS]:
        probe = {"Bytes": person[PHOTOS_PER_USER].read_bytes()}  # a photo that was not enrolled
        found = client.search_users_by_image(CollectionId="staff", Image=probe, UserMatchThreshold=0)["UserMatches"]
        assert found and found[0]["User"]["UserId"] == person[0].parent.name


def test_enrolment_without_a_daemon_writes_the_state_directory(people: list[list[Path]], tmp_path: Path) -> None:
    folder, state = tmp_path / "photos", tmp_path / "state"
    folder.mkdir()
    for person in people[:3]:
        shutil.copy(person[0], folder / person[0].name)
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "enroll", str(folder), "--collection-id", "door", "--create-collection",
         "--state-dir", str(state), "--journal", str(tmp_path / "journal.jsonl")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "3 photos enrolled, 0 not enrolled" in done.stdout
    settings = Settings(state_dir=state)
    with open_store(state, settings.store, autosave=False) as store:
        pipeline = FacePipeline.from_settings(settings.pipeline)
        ops = Rekognition(store, pipeline, settings.service, secret=token_secret(state))
        names = {f["ExternalImageId"] for f in ops.call("ListFaces", {"CollectionId": "door"})["Faces"]}
        pipeline.close()
    assert names == {person[0].stem for person in people[:3]}
