"""Fixtures for the daemon's tests: one real daemon per module, photos of people with several images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import Daemon, running_daemon

PHOTOS_PER_PERSON = 5


@pytest.fixture(scope="session")
def people(faces_dev: Path) -> list[list[Path]]:
    """Each person's photos, for the people of faces-dev with at least five."""
    found = [sorted(d.glob("*.jpg")) for d in sorted(faces_dev.iterdir()) if d.is_dir()]
    found = [photos for photos in found if len(photos) >= PHOTOS_PER_PERSON]
    if len(found) < 2:
        pytest.skip(f"faces-dev has fewer than two people with {PHOTOS_PER_PERSON} photos")
    return found


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with the default configuration on a fresh state directory, shared by the modules that do not
    make their own (each test uses collections of its own)."""
    with running_daemon(tmp_path_factory.mktemp("daemon") / "state") as running:
        yield running
