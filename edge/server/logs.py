"""Log lines that a client can provoke at will, limited to a burst per interval; the rest are counted.

Failed logins and refused connections must be visible to an operator, but a flood of them must not
fill the disk: each limiter lets `burst` lines through per `per_s` seconds and reports how many it
held back on its next line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """A token bucket in front of one logger: `burst` lines, refilled over `per_s` seconds."""

    def __init__(self, logger: logging.Logger, *, burst: int = 10, per_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._burst = burst
        self._per_s = per_s
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._held_back = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: object) -> bool:
        """Log the line if the bucket allows it; True if it was logged."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._burst / self._per_s)
            self._last = now
            if self._tokens < 1:
                self._held_back += 1
                return False
            self._tokens -= 1
            held_back, self._held_back = self._held_back, 0
        if held_back:
            message += f" ({held_back} more like it not logged)"
        self._logger.warning(message, *args)
        return True
