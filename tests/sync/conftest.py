"""Fixtures for fleet sync: a central with fake models on a loopback uvicorn, devices provisioned by the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sync_support import Central, running_central


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    with running_central(tmp_path / "central") as running:
        yield running


@pytest.fixture(params=["sqlite", "postgres"])
def any_central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Central]:
    """A central on each storage engine."""
    dsn = str(request.getfixturevalue("pg_dsn")) if request.param == "postgres" else None
    with running_central(tmp_path / "central", dsn=dsn) as running:
        yield running
