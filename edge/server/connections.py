"""Connections that cannot take the daemon down: deadlines, a cap with room made for newcomers, a file limit.

uvicorn closes a keep-alive connection that stays idle after an answer, but not one that never
finishes its headers or its body, and it accepts connections until the process runs out of files,
after which nobody new gets in. Here every connection is in one phase at a time:

- `headers`: waiting for a request's headers, from the connection's start or its last answer; it
  must deliver them within `header_timeout_s`;
- `body`: headers received, body arriving; it must be complete within `body_timeout_s` (408);
- `busy`: the request is complete and its answer is being made; no deadline of ours;
- `drain`: the answer went out before the body was read (a refusal); the rest gets `header_timeout_s`.

A connection in `headers` or `drain` has nothing in progress: when `max_connections` are open, the
one that has been so the longest is closed to make room for a newcomer. Only when every connection
is in the middle of a request is the newcomer refused, at once, with 503 (which clients retry).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import OrderedDict
from typing import Any, Literal

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from edge.config import ServerSettings
from edge.server.logs import RateLimitedLog
from edge.server.metrics import Metrics

log = logging.getLogger(__name__)

Phase = Literal["headers", "body", "busy", "drain", "closed"]
#: Files the daemon needs besides its connections: models, SQLite (three per thread), logs, pipes.
FILES_BESIDES_CONNECTIONS = 256
ACCEPT_FAILED = "socket.accept() out of system resource"


def _raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, for when h11 cannot make one."""
    body = json.dumps({"__type": code, "message": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-amz-json-1.1\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class ConnectionGuard:
    """The state all connections of one server share: how many are open and which are idle, oldest first."""

    def __init__(self, settings: ServerSettings, metrics: Metrics, max_connections: int) -> None:
        self.settings = settings
        self.metrics = metrics
        self.max_connections = max_connections
        self.open = 0
        self.idle: OrderedDict[GuardedH11, None] = OrderedDict()
        self.refusals = RateLimitedLog(log)
        metrics.connections.set_function(lambda: self.open)

    def admit(self) -> bool:
        """Room for one more connection, made by closing the longest-idle one if need be."""
        if self.open >= self.max_connections:
            if not self.idle:
                self.metrics.connections_closed.labels("refused").inc()
                self.refusals.warning("refused a connection: all %d are busy (server.max_connections)",
                                      self.max_connections)
                return False
            oldest, _ = self.idle.popitem(last=False)
            oldest.drop("evicted")
        self.open += 1
        return True

    def release(self, protocol: GuardedH11) -> None:
        self.open -= 1
        self.idle.pop(protocol, None)

    def set_idle(self, protocol: GuardedH11, idle: bool) -> None:
        self.idle.pop(protocol, None)
        if idle:
            self.idle[protocol] = None


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 with phases, deadlines and the connection cap of its `guard`."""

    guard: ConnectionGuard

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase: Phase = "closed"
        self._deadline: asyncio.TimerHandle | None = None
        self._admitted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.guard.admit():
            transport.write(_raw_response(503, "Service Unavailable", "ServiceUnavailableException",
                                          "Too many connections; retry shortly"))
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._enter(self._current())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._enter("closed")
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._enter(self._current())

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._enter(self._current())

    def shutdown(self) -> None:
        """On shutdown, drop idle keep-alive connections at once: closing TLS politely waits (up to 30 s)
        for a close_notify that an idle SDK connection resting in its pool never sends."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()

    def drop(self, reason: str) -> None:
        """Close the connection now, counting why."""
        self.guard.metrics.connections_closed.labels(reason).inc()
        self._enter("closed")
        self.transport.close()

    def _current(self) -> Phase:
        if self.transport.is_closing():
            return "closed"
        theirs, answered = self.conn.their_state, self.cycle is None or self.cycle.response_complete
        if theirs is h11.IDLE and answered:
            return "headers"
        if theirs is h11.SEND_BODY:
            return "drain" if answered else "body"
        if theirs is h11.DONE and not answered:
            return "busy"
        return "closed" if theirs in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR) else self._phase

    def _enter(self, phase: Phase) -> None:
        """Start `phase`'s deadline when the phase changes (data arriving does not extend it)."""
        if phase == self._phase:
            return
        self._phase = phase
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._admitted:
            self.guard.set_idle(self, phase in ("headers", "drain"))
        settings = self.guard.settings
        timeout = {"headers": settings.header_timeout_s, "drain": settings.header_timeout_s,
                   "body": settings.body_timeout_s}.get(phase)
        if timeout is not None:
            self._deadline = self.loop.call_later(timeout, self._expire, phase)

    def _expire(self, phase: Phase) -> None:
        self._deadline = None
        if self._phase != phase or self.transport.is_closing():
            return
        if phase == "body" and self.cycle is not None and not self.cycle.response_started:
            # The handler waits for the body: tell it the client is gone, and the client why.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            self.transport.write(_raw_response(
                408, "Request Timeout", "RequestTimeoutException",
                f"The request body did not arrive within {self.guard.settings.body_timeout_s:g} s"))
        elif phase == "headers" and self.conn.trailing_data[0]:
            self.transport.write(_raw_response(
                408, "Request Timeout", "RequestTimeoutException",
                f"The request headers did not arrive within {self.guard.settings.header_timeout_s:g} s"))
        self.drop(f"{phase}_timeout")


def guarded_protocol(settings: ServerSettings, metrics: Metrics) -> type[GuardedH11]:
    """The protocol class for one server, its cap fitted to the file limit (raised as far as allowed)."""
    guard = ConnectionGuard(settings, metrics, fit_file_limit(settings.max_connections))
    return type("GuardedH11ForServer", (GuardedH11,), {"guard": guard})


def fit_file_limit(max_connections: int) -> int:
    """Raise the soft file limit to what `max_connections` needs, up to the hard limit; return the cap the
    limit allows (a smaller one, with a warning, if the hard limit is too low)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(1, soft - FILES_BESIDES_CONNECTIONS)
        log.warning("the file limit (%d) leaves room for %d connections, not server.max_connections=%d: raise "
                    "LimitNOFILE", soft, fitted, max_connections)
        return fitted
    return max_connections


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, metrics: Metrics) -> None:
    """Replace asyncio's traceback per failed accept() (out of files) with a rate-limited line and a count."""
    previous = loop.get_exception_handler()
    accept_log = RateLimitedLog(log)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_FAILED:
            metrics.accept_failures.inc()
            accept_log.warning("accept() failed: %s; new connections wait until files are free (LimitNOFILE, "
                               "server.max_connections)", context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
