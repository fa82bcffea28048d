"""Constants shared by the storage tests and the crash worker they launch (which cannot see fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.store import Store
from edge.store import index as index_module
from edge.store.index import HnswParams

MODEL = "edge-test-1"
DIM = 128

OpenStore = Callable[..., Store]
"""Type of the open_store fixture: open_store(path=None, **Store options) -> Store."""


def saved_graph(path: Path, dim: int) -> tuple[np.memmap[Any, Any], np.ndarray, slice]:
    """A saved graph's level-0 records (mapped writable), the rows of its deleted elements, and the columns of each
    record's vector, as hnswlib 0.8 lays them out (`dim`: the width the graph holds)."""
    header = path.read_bytes()[: index_module._HEADER.size]
    count = index_module._HEADER.unpack(header)[2]
    size, offset = index_module._check_header(header, dim, HnswParams(), count)
    records = np.memmap(path, dtype=np.uint8, mode="r+", offset=len(header), shape=(count, size))
    return records, np.flatnonzero(records[:, 2] & index_module._DELETE_MARK), slice(offset, offset + dim * 4)
