"""Fixtures for the daemon's tests: one real daemon per module (photos of people: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_support import Daemon, running_daemon


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with the default configuration on a fresh state directory, shared by the modules that do not
    make their own (each test uses collections of its own)."""
    with running_daemon(tmp_path_factory.mktemp("daemon") / "state") as running:
        yield running
