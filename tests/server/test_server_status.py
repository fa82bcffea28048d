"""`edge-face status` beside a running daemon and without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from server_support import REPO, Daemon


def status(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", "status", "--state-dir", str(state_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def report(state_dir: Path) -> dict[str, Any]:
    done = status(state_dir, "--json")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_status_shows_the_running_daemon_its_models_and_collections(daemon: Daemon, people: list[list[Path]]) -> None:
    admin = daemon.client("admin")
    admin.create_collection(CollectionId="lobby")
    for photos in people[:2]:
        admin.index_faces(CollectionId="lobby", Image={"Bytes": photos[0].read_bytes()})
    admin.create_user(CollectionId="lobby", UserId="visitor")
    seen = report(daemon.state_dir)
    assert seen["daemon"]["running"] and seen["daemon"]["ready"]
    assert seen["daemon"]["pid"] == daemon.process.pid
    assert seen["daemon"]["endpoint"] == daemon.url
    assert seen["pipeline"]["backend"] == "cpu" and seen["pipeline"]["embedder"].startswith("dlib_resnet_v1")
    lobby = next(c for c in seen["collections"] if c["collection_id"] == "lobby")
    assert (lobby["faces"], lobby["users"]) == (2, 1)
    assert seen["store"]["disk_bytes"] > 0
    table = status(daemon.state_dir)
    assert table.returncode == 0 and "ready" in table.stdout and "lobby" in table.stdout


def test_status_without_a_daemon(tmp_path: Path) -> None:
    seen = report(tmp_path / "never-started")
    assert seen["daemon"] == {"running": False}
    assert seen["collections"] == [] and seen["pipeline"] is None
    assert "not running" in status(tmp_path / "never-started").stdout
