"""The rate-limited log lines a client can provoke, in process (a fake clock and a fake loop context)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge.server.connections import ACCEPT_FAILED, quiet_accept_errors
from edge.server.logs import RateLimitedLog
from edge.server.metrics import Metrics


def test_a_burst_then_one_line_per_refill_saying_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.limited"), burst=3, per_s=30, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.limited"):
        logged = [limited.warning("failure %d", i) for i in range(100)]
        now[0] += 10  # one token back
        limited.warning("failure %d", 100)
    assert sum(logged) == 3
    assert [r.getMessage() for r in caplog.records][-1] == "failure 100 (97 more like it not logged)"


def test_failed_accepts_are_counted_not_logged_each(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio reports each accept() that finds no free file with a traceback; the daemon logs a few lines."""
    loop = asyncio.new_event_loop()
    metrics = Metrics()
    try:
        quiet_accept_errors(loop, metrics)
        with caplog.at_level(logging.WARNING):
            for _ in range(1000):
                loop.call_exception_handler({"message": ACCEPT_FAILED, "exception": OSError(24, "Too many open files")})
    finally:
        loop.close()
    assert 1 <= len(caplog.records) <= 10 and not any(r.exc_info for r in caplog.records)
    assert "edge_face_accept_failures_total 1000.0" in metrics.render().decode()
