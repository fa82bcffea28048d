"""The inference pool grants a request that runs alone every core, and requests that overlap their share."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any, cast

from edge.rekognition.operations import Rekognition
from edge.server.pool import InferencePool
from edge.vision.runtime import spread_threads

WAIT_S = 60  # only guards a deadlock


def _stand_in() -> Rekognition:
    """What the pool touches of a worker: its pipeline, closed with the pool."""
    return cast(Rekognition, SimpleNamespace(pipeline=SimpleNamespace(close=lambda: None)))


def test_a_lone_request_spreads_over_every_core_and_overlapping_ones_keep_their_share() -> None:
    pool = InferencePool([_stand_in(), _stand_in()], queue_size=0, spread=2)
    running, release = threading.Event(), threading.Event()

    def held(_: Any) -> int | None:
        granted = spread_threads()
        running.set()
        release.wait(WAIT_S)
        return granted

    async def scenario() -> tuple[int | None, int | None, int | None]:
        first = asyncio.ensure_future(pool.run(held))
        assert await asyncio.to_thread(running.wait, WAIT_S)
        overlapping = await pool.run(lambda _: spread_threads())
        release.set()
        alone = await first
        return alone, overlapping, await pool.run(lambda _: spread_threads())

    try:
        alone, overlapping, alone_again = asyncio.run(scenario())
    finally:
        release.set()
        pool.close()
    assert (alone, overlapping, alone_again) == (2, None, 2)
