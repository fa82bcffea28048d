"""LiteRT interpreters and the accelerator backends that can run them.

One plugin per accelerator, discovered by subclass (as frigate's detectors are): a backend
whose delegate library is missing is logged and skipped, never fatal. The configured
preference order picks the first backend that is available, and each backend names the
model precision that pays on it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

try:
    from ai_edge_litert.interpreter import Interpreter, load_delegate
except ImportError:  # pragma: no cover - exercised only where LiteRT is the older wheel
    from tflite_runtime.interpreter import Interpreter, load_delegate

import numpy as np

log = logging.getLogger(__name__)


class LiteRTSession:
    """A LiteRT interpreter with its tensors allocated once.

    LiteRT interpreters are not thread-safe; each session serialises its own invocations,
    and the daemon's inference pool holds one pipeline per worker thread.
    """

    def __init__(self, path: Path, *, threads: int, delegates: Sequence[Any] = ()) -> None:
        self.path = path
        self._interp = Interpreter(model_path=str(path), num_threads=threads,
                                   experimental_delegates=list(delegates) or None)
        self._interp.allocate_tensors()
        self._input = self._interp.get_input_details()[0]
        self._outputs = self._interp.get_output_details()
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input["shape"])

    def run(self, inputs: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            if tuple(inputs.shape) != self.input_shape:
                self._interp.resize_tensor_input(self._input["index"], inputs.shape)
                self._interp.allocate_tensors()
                self._input = self._interp.get_input_details()[0]
            self._interp.set_tensor(self._input["index"], inputs.astype(self._input["dtype"], copy=False))
            self._interp.invoke()
            return [self._interp.get_tensor(o["index"]) for o in self._outputs]  # each a copy already


class Backend:
    """An accelerator plugin. Subclasses set `name`, `precision` and `delegate_library`."""

    name: ClassVar[str]
    #: The model precision this hardware gains from (int8 for int8-only accelerators).
    precision: str
    delegate_library: ClassVar[str | None] = None

    def available(self) -> bool:
        return self.delegate_library is None or _delegate(self.delegate_library) is not None

    def session(self, path: Path, *, threads: int) -> LiteRTSession:
        delegates = [] if self.delegate_library is None else [_delegate(self.delegate_library)]
        return LiteRTSession(path, threads=threads, delegates=delegates)


class CpuBackend(Backend):
    """XNNPACK on the CPU.

    On AVX2 int8 runs no faster than fp32, so fp32 (the most accurate) is the default; cores
    with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, Arm's dotprod) run
    dynamic-range int8 (int8 weights, activations quantised on the fly) several times faster
    at nearly the same accuracy (the README has the measurements).
    """

    name = "cpu"
    precision = "fp32"

    def __init__(self) -> None:
        self.precision = "int8-dynamic" if cpu_has_int8_dot_product() else "fp32"


class EdgeTpuBackend(Backend):
    """Coral Edge TPU: runs only fully int8 models."""

    name = "edgetpu"
    precision = "int8"
    delegate_library = "libedgetpu.so.1"


class GpuBackend(Backend):
    """The LiteRT GPU delegate (Jetson, Mali): fp16 weights halve memory traffic."""

    name = "gpu"
    precision = "fp16"
    delegate_library = "libtensorflowlite_gpu_delegate.so"


@cache
def _delegate(library: str) -> Any | None:
    """Load a delegate library once; a missing one is logged and means 'not available'."""
    try:
        # Probe with the dynamic loader first: LiteRT's Delegate raises noisily from __del__
        # when its own load fails.
        ctypes.CDLL(library)
        return load_delegate(library)
    except (OSError, ValueError, RuntimeError) as exc:
        log.info("accelerator delegate %s not available: %s", library, exc)
        return None


def backends() -> dict[str, Backend]:
    """Every known backend plugin, by name."""
    return {cls.name: cls() for cls in Backend.__subclasses__()}


def select_backend(preference: Sequence[str]) -> Backend:
    """The first available backend in the configured preference order."""
    known = backends()
    for name in preference:
        backend = known.get(name)
        if backend is None:
            raise ValueError(f"unknown backend {name!r}; known: {sorted(known)}")
        if backend.available():
            log.info("using the %s backend", name)
            return backend
        log.info("backend %s is not available here", name)
    raise RuntimeError(f"none of the configured backends is available: {list(preference)}")


_INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "asimddp"}


@cache
def cpu_has_int8_dot_product(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has int8 dot-product instructions (x86 VNNI, Arm dotprod)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _INT8_DOT_FLAGS & set(value.split()):
            return True
    return False


def default_threads() -> int:
    """Inference threads when none are configured: every core the process may use."""
    return max(1, len(os.sched_getaffinity(0)))


_SPREAD: ContextVar[int | None] = ContextVar("spread", default=None)


@contextmanager
def spread_over(threads: int | None) -> Iterator[None]:
    """Let the models of this thread's current job that gain from it run on `threads` threads (None:
    as configured). The daemon's pool splits the cores between its workers; a request that finds the
    other workers idle may take them all."""
    token = _SPREAD.set(threads)
    try:
        yield
    finally:
        _SPREAD.reset(token)


def spread_threads() -> int | None:
    """The threads `spread_over` granted to the current job, if any."""
    return _SPREAD.get()
