"""The daemon speaks systemd's notification protocol to a real NOTIFY_SOCKET, as systemd receives it.

A bound AF_UNIX datagram socket in the test stands where systemd's would be: the real daemon process
says what it is doing, READY=1 once it serves, keeps the watchdog fed from its event loop, and a loop
that is blocked stops feeding it (which is what makes systemd restart a wedged daemon).
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import uvicorn
from fakes import fake_pipeline
from server_support import free_port, start_daemon

from edge.config import Settings
from edge.server.app import NotifyingServer, create_app
from edge.server.systemd import Notifier

#: systemd passes the period in microseconds; a short one keeps the tests quick (pings come 4 times a period).
WATCHDOG_USEC = 400_000
PING_S = WATCHDOG_USEC / 1e6 / 4


@dataclass(frozen=True)
class Message:
    at: float
    fields: dict[str, str]


class NotifySocket:
    """What systemd's end of NOTIFY_SOCKET receives, with the time each datagram arrived."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[Message] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(Message(time.monotonic(), fields))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def with_field(self, name: str) -> list[Message]:
        return [m for m in list(self.messages) if name in m.fields]

    def wait_for(self, name: str, timeout: float = 60) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.with_field(name)
            if found:
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"no {name} within {timeout} s; got {[m.fields for m in self.messages]}")


@contextmanager
def notify_socket(address: str) -> Iterator[NotifySocket]:
    receiver = NotifySocket(address)
    try:
        yield receiver
    finally:
        receiver.close()


def test_messages_reach_a_socket_path_and_an_abstract_socket() -> None:
    with tempfile.TemporaryDirectory() as directory:  # a short path: AF_UNIX names hold 107 bytes
        for address in (os.path.join(directory, "notify"), f"@edge-face-test-{os.getpid()}"):
            with notify_socket(address) as systemd:
                Notifier(address).ready("serving")
                assert systemd.wait_for("READY", timeout=5).fields == {"READY": "1", "STATUS": "serving"}


def test_no_socket_or_a_vanished_one_never_stops_the_daemon(tmp_path: Path) -> None:
    Notifier.from_environment({}).ready("serving")  # outside systemd: nothing to tell
    Notifier(str(tmp_path / "gone")).ready("serving")  # systemd went away: logged, not raised


def test_the_watchdog_belongs_to_the_process_systemd_names() -> None:
    here = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "20000000"}
    assert Notifier.from_environment(here).watchdog_s == 20.0
    assert Notifier.from_environment(here | {"WATCHDOG_PID": str(os.getpid())}).watchdog_s == 20.0
    assert Notifier.from_environment(here | {"WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier.from_environment({"WATCHDOG_USEC": "20000000"}).watchdog_s is None


def test_a_long_start_up_phase_extends_the_start_timeout_only_while_it_lasts() -> None:
    """Recovering a large store may outlast TimeoutStartSec; loading models may not (a hung driver must fail)."""
    address = f"@edge-face-extend-{os.getpid()}"
    notifier = Notifier(address, watchdog_s=WATCHDOG_USEC / 1e6)

    async def start_up() -> None:
        pinger = asyncio.create_task(notifier.keep_alive())
        notifier.status("opening the store", long_phase=True)
        await asyncio.sleep(8 * PING_S)
        notifier.status("loading models")
        await asyncio.sleep(8 * PING_S)
        pinger.cancel()

    with notify_socket(address) as systemd:
        asyncio.run(start_up())
        time.sleep(0.1)
    loading = next(m for m in systemd.messages if m.fields.get("STATUS") == "loading models")
    extends = systemd.with_field("EXTEND_TIMEOUT_USEC")
    assert len(extends) >= 4
    assert all(m.at < loading.at for m in extends)
    # Each extension outlasts the next tick, so a turning loop never lets the timeout run out.
    assert all(int(m.fields["EXTEND_TIMEOUT_USEC"]) > PING_S * 1e6 for m in extends)


def test_the_daemon_is_ready_only_when_it_serves_and_feeds_the_watchdog(tmp_path: Path) -> None:
    address = f"@edge-face-daemon-{os.getpid()}"
    with notify_socket(address) as systemd:
        daemon = start_daemon(tmp_path / "state", env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        try:
            ready = systemd.wait_for("READY")
            statuses = [m.fields["STATUS"] for m in systemd.with_field("STATUS")]
            # What it did before, in order, as `systemctl status` shows it.
            assert statuses[0].startswith("opening the store in ")
            assert statuses[1].startswith("loading models for ")
            assert ready.fields["STATUS"] == f"serving on {daemon.url}"
            time.sleep(20 * PING_S)
            pings = [m.at for m in systemd.with_field("WATCHDOG") if m.at > ready.at]
            assert len(pings) >= 10
            assert max(b - a for a, b in pairwise(pings)) < WATCHDOG_USEC / 1e6
        finally:
            daemon.stop()
        assert systemd.wait_for("STOPPING", timeout=5).fields["STATUS"].startswith("finishing in-flight requests")


def test_a_wedged_event_loop_stops_the_watchdog_pings(tmp_path: Path) -> None:
    """The real server with fake models: block its loop, and systemd hears nothing until it turns again."""
    address = f"@edge-face-wedge-{os.getpid()}"
    settings = Settings(state_dir=tmp_path / "state")
    notifier = Notifier(address, watchdog_s=WATCHDOG_USEC / 1e6)
    config = uvicorn.Config(create_app(settings, make_pipeline=fake_pipeline, notifier=notifier),
                            host="127.0.0.1", port=free_port(), lifespan="on", log_level="warning")
    server = NotifyingServer(config, notifier)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    wedge_s = 6 * WATCHDOG_USEC / 1e6
    with notify_socket(address) as systemd:
        thread.start()
        try:
            systemd.wait_for("READY", timeout=30)
            time.sleep(10 * PING_S)
            wedged_at = time.monotonic()
            loop.call_soon_threadsafe(time.sleep, wedge_s)  # a blocking call on the loop, as a bug would make
            time.sleep(wedge_s + 10 * PING_S)
        finally:
            server.should_exit = True
            thread.join(30)
            loop.close()
    pings = [m.at for m in systemd.with_field("WATCHDOG")]
    before = [t for t in pings if t < wedged_at]
    during = [t for t in pings if wedged_at + PING_S < t < wedged_at + wedge_s]
    after = [t for t in pings if t >= wedged_at + wedge_s]
    assert len(before) >= 5
    # Longer than systemd's period without a ping: systemd would have killed and restarted it.
    assert during == []
    assert len(after) >= 5, "the pings resume once the loop turns again"
