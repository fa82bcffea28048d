"""The machine a benchmark runs on: its CPU's name for the report, pinning to a few cores, and what an idle
spell costs the next photo."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(n_threads: int) -> None:
    """Pin this process to `n_threads` CPUs and cap native thread pools; call before dlib is imported."""
    for var in THREAD_VARS:
        os.environ[var] = str(n_threads)
    cpus = sorted(os.sched_getaffinity(0))[:n_threads]
    for tid in os.listdir("/proc/self/task"):  # threads already started (numpy's BLAS pool) too
        os.sched_setaffinity(int(tid), cpus)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, for reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def after_pauses(runs: dict[str, Callable[[T], object]], photos: list[T],
                 pauses_ms: tuple[int, ...] = (0, 80)) -> dict[str, dict[str, float]]:
    """Median ms of each run on the photos (twice, the first pass discarded), each photo after a pause with
    this process asleep (0: back to back), one run after the other: what a photo costs after an idle
    spell, as a door's does. A pause runs no code, so what it adds is the caches the machine empties
    meanwhile, not anything a run does."""
    out: dict[str, dict[str, float]] = {}
    for pause in pauses_ms:
        row = {}
        for name, run in runs.items():
            times = []
            for data in photos * 2:
                time.sleep(pause / 1000)
                start = time.perf_counter()
                run(data)
                times.append(time.perf_counter() - start)
            row[name] = round(1000 * float(np.median(times[len(photos):])), 3)
        out[f"{pause}_ms"] = row
    return out
