"""Fixtures for the storage tests: stores in a temporary state directory, closed after each test.

`open_store` runs each test on both databases: SQLite (the device's) and PostgreSQL (the central's, a
throwaway server per session). Tests about SQLite's own files are marked `sqlite_only`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_support import OpenStore

from edge.store import Store


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: inspects SQLite's files, so runs on SQLite only")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite in the state directory, else a PostgreSQL connection string (one database per test)."""
    if request.param == "sqlite":
        return None
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("inspects SQLite's files")
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def open_store(state_dir: Path, backend: str | None) -> Iterator[OpenStore]:
    """Open a Store on the test's state directory (no background checkpoints unless asked)."""
    from edge.store.pg import PgDatabase

    opened: list[Store] = []

    def _open(path: Path | None = None, **options: Any) -> Store:
        options.setdefault("checkpoint_interval_s", None)
        options.setdefault("reserve_bytes", 0)  # no 32 MiB file of zeros for every scan to read
        if backend is not None:
            options.setdefault("database", PgDatabase(backend, pool_size=4))
        store = Store(path or state_dir, **options)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()
