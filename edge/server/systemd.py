"""systemd's readiness and watchdog protocol (sd_notify(3)) with the standard library.

Under `Type=notify` systemd hands the daemon `$NOTIFY_SOCKET`, an AF_UNIX datagram socket (a path, or an
abstract name written with a leading '@'), and with `WatchdogSec=` also `$WATCHDOG_USEC`. The daemon says
READY=1 only once its port is open with the models loaded and the store recovered, STATUS= lines say what
it is doing meanwhile, and WATCHDOG=1 keep-alives come from a task on the event loop: a loop that stops
turning (a blocking call in a handler, a deadlock) stops them, and systemd restarts the daemon. Without
`$NOTIFY_SOCKET` (a terminal, the tests, another supervisor) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: Keep-alives per watchdog period: one late or lost ping is not yet a restart.
PINGS_PER_PERIOD = 4
#: Without a watchdog the loop still wakes this often to extend a long start-up phase's timeout.
TICK_WITHOUT_WATCHDOG_S = 5.0


class Notifier:
    """Sends sd_notify messages to one socket; a failed send is logged once and never stops the daemon."""

    def __init__(self, address: str | None, *, watchdog_s: float | None = None) -> None:
        self.address = address or None
        self.watchdog_s = watchdog_s if self.address else None
        self._extending = False
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The socket and watchdog period systemd passed, as sd_watchdog_enabled(3) reads them.

        The watchdog belongs to this process only: a WATCHDOG_PID naming another process (the daemon was
        started by a script that systemd supervises) leaves it to that one.
        """
        watchdog_s = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_s=watchdog_s)

    def send(self, *assignments: str) -> None:
        """One datagram of newline-separated `KEY=value` assignments."""
        if self.address is None:
            return
        # An abstract socket's name starts with a NUL byte, which the environment cannot carry: '@' stands for it.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall("\n".join(assignments).encode())
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True

    def status(self, text: str, *, long_phase: bool = False) -> None:
        """Say what the daemon is doing (`systemctl status` shows it).

        A `long_phase` (recovering a large store) may outlast the unit's TimeoutStartSec legitimately: while it
        lasts, the keep-alive task extends the start timeout, so only a loop that stops turning runs it out.
        """
        self._extending = long_phase
        self.send(f"STATUS={text}")

    def ready(self, text: str) -> None:
        self._extending = False
        self.send("READY=1", f"STATUS={text}")

    def stopping(self, text: str) -> None:
        self.send("STOPPING=1", f"STATUS={text}")

    async def keep_alive(self) -> None:
        """Ping the watchdog from the event loop until cancelled: only a loop that turns sends pings."""
        if self.address is None:
            return
        tick = self.watchdog_s / PINGS_PER_PERIOD if self.watchdog_s else TICK_WITHOUT_WATCHDOG_S
        while True:
            message = ["WATCHDOG=1"] if self.watchdog_s else []
            if self._extending:
                message.append(f"EXTEND_TIMEOUT_USEC={int(3 * tick * 1e6)}")
            if message:
                self.send(*message)
            await asyncio.sleep(tick)
