"""`edge-face state check`: what ansible asks before an upgrade (the previous release's answer, then the new
one's given it), on state made by a real store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.cli import state
from edge.store import Store
from edge.store.formats import Stamp
from edge.store.store import DB_FILE

REPO = Path(__file__).resolve().parents[1]


def check(state_dir: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "edge.cli", "state", "--state-dir", str(state_dir), "check", "--json",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    Store(tmp_path / "state", checkpoint_interval_s=None, reserve_bytes=0).close()
    return tmp_path / "state"


def test_the_same_build_needs_no_snapshot(state_dir: Path) -> None:
    rc, previous = check(state_dir)
    assert rc == 0 and previous["refuse"] is None
    assert previous["formats"]["store"]["found"] == {"version": 3, "min_reader": 2}
    rc, report = check(state_dir, "--previous", json.dumps(previous))
    assert rc == 0 and not report["snapshot"]
    assert all(f["previous_reads"] for f in report["formats"].values())


def test_a_release_that_cannot_read_the_state_stops_the_upgrade(state_dir: Path) -> None:
    with sqlite3.connect(state_dir / DB_FILE) as conn:
        conn.executescript("INSERT OR REPLACE INTO meta VALUES ('min_reader', 4); PRAGMA user_version = 4;")
    conn.close()
    before = (state_dir / DB_FILE).read_bytes()
    rc, report = check(state_dir, "--previous", "")
    assert rc == 1 and "cannot read the state's store" in report["refuse"]
    assert (state_dir / DB_FILE).read_bytes() == before


@pytest.mark.parametrize(("new_store", "previous_knows_stamps", "snapshot"), [
    (Stamp(4, 3), True, False),   # additive: the previous release reads version 4 from 3 on
    (Stamp(4, 4), True, True),    # incompatible
    (Stamp(4, 3), False, True),   # a release from before stamps reads only version 2
    (Stamp(3, 2), True, False),   # nothing changes
])
def test_a_snapshot_only_when_the_previous_release_would_not_read_what_the_new_one_leaves(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch, new_store: Stamp, previous_knows_stamps: bool,
        snapshot: bool) -> None:
    _, previous = check(state_dir)
    monkeypatch.setitem(state.BUILD, "store", new_store)  # the new release's build
    report = state.assess(state_dir, json.dumps(previous) if previous_knows_stamps else "")
    assert report["formats"]["store"]["after"] == new_store.as_dict()
    assert report["snapshot"] is snapshot and report["refuse"] is None
