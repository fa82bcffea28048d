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
