"""Constants shared by the storage tests and the crash worker they launch (which cannot see fixtures)."""

from __future__ import annotations

from collections.abc import Callable

from edge.store import Store

MODEL = "edge-test-1"
DIM = 128

OpenStore = Callable[..., Store]
"""Type of the open_store fixture: open_store(path=None, **Store options) -> Store."""
