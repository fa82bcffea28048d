"""The unit's system-call filter fits what the daemon really calls (systemd cannot run in these tests).

The real daemon runs under strace while it starts, enrols and searches through boto3, and stops. Every
system call it made must be in the unit's allow list (@system-service) and none in what the unit takes
away from it (@privileged): a call outside would fail with EPERM under systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from functools import cache
from pathlib import Path

import pytest
from server_support import start_daemon

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-face.service"

pytestmark = pytest.mark.skipif(shutil.which("strace") is None or shutil.which("systemd-analyze") is None,
                                reason="needs strace and systemd-analyze")


@cache
def syscall_set(group: str) -> frozenset[str]:
    """A systemd syscall group, with the groups it names expanded."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True,
                             check=True).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= syscall_set(item) if item.startswith("@") else {item}
    return frozenset(names)


def unit_filter() -> tuple[frozenset[str], frozenset[str]]:
    """(allowed, denied) as the unit's SystemCallFilter= lines say."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.removeprefix("SystemCallFilter=")
            target = denied if value.startswith("~") else allowed
            for group in value.removeprefix("~").split():
                target |= syscall_set(group)
    return frozenset(allowed), frozenset(denied)


def test_the_daemon_calls_nothing_its_unit_filters_out(tmp_path: Path, people: list[list[Path]]) -> None:
    summary = tmp_path / "strace.txt"
    daemon = start_daemon(tmp_path / "state", wrapper=["strace", "-f", "-qq", "-c", "-o", str(summary)])
    try:
        client = daemon.client()
        client.create_collection(CollectionId="door")
        for photo in (people[0][0], people[1][0]):
            client.index_faces(CollectionId="door", Image={"Bytes": photo.read_bytes()})
        matches = client.search_faces_by_image(CollectionId="door", Image={"Bytes": people[0][1].read_bytes()})
        assert matches["FaceMatches"]
    finally:
        # strace ignores SIGTERM while it traces: stop the daemon itself, as systemd would.
        children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        daemon.process.wait(60)
    used = {m.group(1) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+(?:\s+\d+)?\s+(\w+)$",
                                            summary.read_text(), re.M)} - {"total"}
    assert len(used) > 20, summary.read_text()
    allowed, denied = unit_filter()
    if os.geteuid() == 0:
        # SQLite hands a new journal to the database's owner only when it runs as root; the unit's user is not.
        used.discard("fchown")
    assert sorted(used & denied) == []
    assert sorted(used - allowed) == []
