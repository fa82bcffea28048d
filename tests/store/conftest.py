"""Fixtures for the storage tests: stores in a temporary state directory, closed after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_support import OpenStore

from edge.store import Store


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def open_store(state_dir: Path) -> Iterator[OpenStore]:
    """Open a Store on the test's state directory (no background checkpoints unless asked)."""
    opened: list[Store] = []

    def _open(path: Path | None = None, **options: Any) -> Store:
        options.setdefault("checkpoint_interval_s", None)
        options.setdefault("reserve_bytes", 0)  # no 32 MiB file of zeros for every scan to read
        store = Store(path or state_dir, **options)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()
