"""The machine a benchmark runs on: its CPU's name for the report, and pinning to a few cores."""

from __future__ import annotations

import os
from pathlib import Path

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
