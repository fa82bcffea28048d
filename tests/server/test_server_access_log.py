"""The access log through a running daemon: each search decision recorded with the key that asked, read
back with `edge-face log`, and nothing left of a person once they are erased."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from server_support import REPO, Daemon

from edge.store.access_log import LOG_FILE


def log(daemon: Daemon, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "edge.cli", "log", "--state-dir", str(daemon.state_dir), "--json",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_decisions_are_logged_and_erased_with_the_person(daemon: Daemon, people: list[list[Path]]) -> None:
    admin, kiosk = daemon.client("admin"), daemon.client("kiosk")
    admin.create_collection(CollectionId="audit")
    alice, bob, stranger = people[0], people[1], people[2]
    faces = {}
    for name, photos in (("alice", alice), ("bob", bob)):
        face = admin.index_faces(CollectionId="audit", Image={"Bytes": photos[0].read_bytes()},
                                 ExternalImageId=name)["FaceRecords"][0]["Face"]["FaceId"]
        admin.create_user(CollectionId="audit", UserId=f"staff-{name}")
        admin.associate_faces(CollectionId="audit", UserId=f"staff-{name}", FaceIds=[face])
        faces[name] = face
    for photo in (alice[0], bob[0], stranger[0]):
        kiosk.search_faces_by_image(CollectionId="audit", Image={"Bytes": photo.read_bytes()})
    kiosk.search_users_by_image(CollectionId="audit", Image={"Bytes": alice[0].read_bytes()})

    decisions = log(daemon, "--collection-id", "audit")
    kiosk_key = daemon.key("kiosk").access_key_id
    assert [(d["operation"], d["external_image_id"], d["user_id"]) for d in decisions] == [
        ("SearchFacesByImage", "alice", "staff-alice"), ("SearchFacesByImage", "bob", "staff-bob"),
        ("SearchFacesByImage", None, None), ("SearchUsersByImage", None, "staff-alice")]
    assert {d["key_id"] for d in decisions} == {kiosk_key}
    assert all(d["threshold"] == 80 for d in decisions) and decisions[0]["similarity"] >= 80
    assert [d["user_id"] for d in log(daemon, "--user-id", "staff-bob")] == ["staff-bob"]
    assert log(daemon, "--since", "2999-01-01T00:00") == []

    admin.delete_user(CollectionId="audit", UserId="staff-alice")
    admin.delete_faces(CollectionId="audit", FaceIds=[faces["alice"]])
    remaining = log(daemon, "--collection-id", "audit")
    assert [(d["external_image_id"], d["user_id"]) for d in remaining] == [("bob", "staff-bob"), (None, None)]
    for needle in (faces["alice"], "staff-alice", "alice"):
        holding = [p.name for p in daemon.state_dir.glob(LOG_FILE + "*") if needle.encode() in p.read_bytes()]
        assert holding == [], (needle, holding)
