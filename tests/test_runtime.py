"""Accelerator selection: the configured preference order, skipping what this machine lacks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from edge.config import PipelineSettings
from edge.vision import runtime
from edge.vision.models import ModelCatalog
from edge.vision.runtime import Backend, LiteRTSession, backends, select_backend


@pytest.fixture
def fake_accelerator() -> Iterator[type[Backend]]:
    """A stand-in for hardware this machine does not have (an int8 accelerator that is present)."""

    class FakeNpu(Backend):
        name: ClassVar[str] = "fake-npu"
        precision = "int8"

        def available(self) -> bool:
            return True

    yield FakeNpu
    # Forget the subclass so other tests see only the real plugins.
    del FakeNpu
    import gc

    gc.collect()


def test_missing_delegates_are_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    runtime._delegate.cache_clear()
    with caplog.at_level(logging.INFO, logger="edge.vision.runtime"):
        chosen = select_backend(["edgetpu", "gpu", "cpu"])
    assert chosen.name == "cpu"
    assert "libedgetpu.so.1" in caplog.text and "edgetpu is not available" in caplog.text


def test_first_available_backend_in_preference_order_wins(fake_accelerator: type[Backend]) -> None:
    assert select_backend(["fake-npu", "cpu"]).name == "fake-npu"
    assert select_backend(["cpu", "fake-npu"]).name == "cpu"
    assert select_backend(["edgetpu", "fake-npu", "cpu"]).precision == "int8"


def test_plugins_are_discovered_by_subclass() -> None:
    assert {"cpu", "edgetpu", "gpu"} <= set(backends())


def test_unknown_or_unavailable_only_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend(["tpu-v9"])
    with pytest.raises(RuntimeError, match="none of the configured backends"):
        select_backend(["edgetpu"])


def test_cpu_precision_follows_int8_dot_product_support(tmp_path: Path) -> None:
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    vnni = tmp_path / "vnni"
    vnni.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp asimddp\n")
    pi3 = tmp_path / "pi3"
    pi3.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n")
    assert [runtime.cpu_has_int8_dot_product(p) for p in (avx2, vnni, arm, pi3)] == [False, True, True, False]
    assert runtime.CpuBackend().precision == (
        "int8-dynamic" if runtime.cpu_has_int8_dot_product() else "fp32")


def test_a_sessions_outputs_are_the_callers_to_keep(settings: PipelineSettings) -> None:
    """What one run returned is not overwritten by the next (a detection outlives the next photo's)."""
    catalog = ModelCatalog(settings.model_dir)
    session = LiteRTSession(catalog.verified_path(catalog.find("detector", "blazeface_short")), threads=1)
    shape = session.input_shape
    first = session.run(np.full(shape, -1.0, dtype=np.float32))
    kept = [out.copy() for out in first]
    second = session.run(np.full(shape, 1.0, dtype=np.float32))
    assert any(not np.array_equal(a, b) for a, b in zip(kept, second, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(kept, first, strict=True))
