"""The bounded inference pool: image operations run here, off the event loop, never queued without limit.

A `FacePipeline` runs one image at a time, so each worker thread owns its own pipeline (and
Rekognition facade over the shared store); a pool of N threads holds N of them. Requests beyond
the N running and `queue_size` waiting are refused at once with ThrottlingException, which clients
retry with backoff, instead of piling up until every caller times out.

The workers split the cores between them; a request that arrives while the other workers are idle
spreads its embedding over `spread` threads (`edge.vision.runtime.spread_over`): a lone kiosk's
search is not held to one core of an idle device, while concurrent requests keep their share.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from edge import errors
from edge.rekognition.operations import Rekognition
from edge.vision.runtime import spread_over

T = TypeVar("T")


class InferencePool:
    """N workers, each with its own pipeline, and room for `queue_size` requests waiting for one."""

    def __init__(self, workers: list[Rekognition], queue_size: int, *, spread: int = 1) -> None:
        """`spread`: the threads a request running alone may use (1: no more than its worker's own)."""
        self._workers = workers
        self._spread = spread
        self._idle: queue.SimpleQueue[Rekognition] = queue.SimpleQueue()
        for worker in workers:
            self._idle.put(worker)
        self._executor = ThreadPoolExecutor(len(workers), thread_name_prefix="inference")
        self._capacity = len(workers) + queue_size
        #: Requests running or waiting; only the event loop's thread changes it.
        self.admitted = 0

    async def run(self, job: Callable[[Rekognition], T]) -> T:
        """Run `job` on a free worker's facade, or refuse it now if the pool and its queue are full."""
        if self.admitted >= self._capacity:
            raise errors.ThrottlingException("Rate exceeded")
        self.admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._on_worker, job)
        finally:
            self.admitted -= 1

    def _on_worker(self, job: Callable[[Rekognition], T]) -> T:
        # As many facades as threads: a thread always finds one idle.
        worker = self._idle.get_nowait()
        alone = self.admitted <= 1  # read off the event loop's thread: one admitted just now may overlap
        try:
            with spread_over(self._spread if alone else None):
                return job(worker)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Let running and queued jobs finish (their requests were admitted), then release the models."""
        self._executor.shutdown(wait=True)
        for worker in self._workers:
            worker.pipeline.close()

