"""The daemon's HTTP face: Rekognition's JSON 1.1 protocol on `POST /`, plus health, readiness and metrics.

A request goes through, in order: the body-size limit (from Content-Length, before reading), the
Host it was signed for, the signature's header checks, the capped body read, the signature itself
(and its date again), the protocol (content type, X-Amz-Target), the key's scope, and only then the
operation: image operations on the bounded inference pool, the rest on the event loop's thread
pool. Every refusal happens before the operations layer runs, so a rejected request reads and
changes nothing; failed logins are logged (rate-limited) and counted. Connections themselves are
guarded by `edge.server.connections`. `/healthz` is open; `/metrics` and `/readyz`'s detail only
to loopback clients or admin-signed requests (`server.metrics_access`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge import errors
from edge.config import ServerSettings, Settings
from edge.rekognition.operations import OPERATIONS, Rekognition, request_collection
from edge.rekognition.tokens import token_secret
from edge.server.auth import Authenticator, Claim, HostCheck, HttpRequest, Principal, is_loopback, key_id
from edge.server.connections import guarded_protocol, quiet_accept_errors
from edge.server.credentials import CREDENTIALS_FILE, KeyStore
from edge.server.fleet import Fleet, SyncCollector, router
from edge.server.logs import RateLimitedLog
from edge.server.metrics import Metrics
from edge.server.pool import InferencePool
from edge.server.status import local_url, publish, withdraw
from edge.server.systemd import Notifier
from edge.store import open_store
from edge.vision.pipeline import FacePipeline
from edge.vision.runtime import default_threads

log = logging.getLogger(__name__)

TARGET_PREFIX = "RekognitionService."
CONTENT_TYPE = "application/x-amz-json-1.1"
#: AWS JSON 1.1 as the SDKs send it, plus the neighbours a hand-written client may use.
JSON_CONTENT_TYPES = frozenset({CONTENT_TYPE, "application/x-amz-json-1.0", "application/json"})
#: Bodies up to this size are verified and parsed on the event loop: well under a millisecond of hashing
#: and parsing costs less than the hand-off to a thread and back.
INLINE_BODY_BYTES = 256 * 1024
INTERNAL_ERROR = "Internal server error"
#: Refusals that say who may not call: logged (rate-limited) with key id, source and reason, and counted.
AUTH_FAILURES = frozenset({
    errors.MissingAuthenticationTokenException, errors.IncompleteSignatureException,
    errors.InvalidSignatureException, errors.UnrecognizedClientException, errors.AccessDeniedException,
})
#: What the signature of a GET of /metrics must cover (there is no X-Amz-Target).
OBSERVER_SIGNED = ("host", "x-amz-date")
#: HTTP statuses of the errors that are not 400 (AWS JSON 1.1 sends client errors, auth included, as 400).
#: 413 is not retried by clients; 500 and 503 are.
STATUS = {
    errors.RequestEntityTooLargeException: 413,
    errors.InternalServerError: 500,
    errors.ServiceUnavailableException: 503,
}
#: Makes one worker's pipeline; `observe` receives its stage timings (production: real models).
PipelineFactory = Callable[..., FacePipeline]


class Daemon:
    """What a running daemon holds: the store, the keys and the workers; opened at start-up, closed at shutdown."""

    def __init__(self, settings: Settings, metrics: Metrics, make_pipeline: PipelineFactory,
                 notifier: Notifier) -> None:
        self.settings = settings
        #: What the daemon is doing, for systemd (`systemctl status`); later phases (sync) report here too.
        self.notifier = notifier
        notifier.status(f"opening the store in {settings.state_dir} (recovering it after an unclean stop)",
                        long_phase=True)
        # Takes the state directory's lock: one daemon per directory.
        self.store = open_store(settings.state_dir, settings.store)
        try:
            recovered = sorted(cid for cid, r in self.store.recovery.items() if r.kind in ("replayed", "rebuilt"))
            if recovered:
                log.warning("recovered the indexes of %s after an unclean stop", ", ".join(recovered))
            keys, created = KeyStore.open(settings.state_dir)
            if created:
                log.warning("created access keys: %s", usage_hint(settings))
            self.auth = Authenticator(keys, settings.server)
            self.hosts = HostCheck(settings.server)
            size = settings.server.pool_size or default_threads()
            notifier.status(f"loading models for {size} inference workers")
            # Unless configured, the pool's threads share the cores rather than each taking all of them.
            pipeline = settings.pipeline.model_copy(
                update={"threads": settings.pipeline.threads or max(1, default_threads() // size)})
            secret = token_secret(settings.state_dir)
            workers = [Rekognition(self.store, make_pipeline(pipeline, observe=metrics.observe_stages),
                                   settings.service, secret=secret) for _ in range(size)]
            # A request that finds the other workers idle may take every core (or the configured threads).
            self.pool = InferencePool(workers, settings.server.queue_size,
                                      spread=settings.pipeline.threads or default_threads())
        except BaseException:
            self.store.close()
            raise
        # Operations without an image never touch a pipeline, so any worker's facade serves them.
        self.rekognition = workers[0]
        try:
            self.fleet = Fleet.open(settings, self.store, self.rekognition.face_model_version, notifier.status)
        except BaseException:
            self.pool.close()
            self.store.close()
            raise
        metrics.watch(self.store, lambda: self.pool.admitted)
        publish(settings.state_dir, settings.server, self.rekognition.pipeline.info,
                {cid: r.kind for cid, r in self.store.recovery.items()})
        log.info("ready: state %s, %d inference workers, queue %d", settings.state_dir, size,
                 settings.server.queue_size)

    async def handle(self, request: Request, operation: str) -> dict[str, Any]:
        """Authenticate, check the protocol and the key's scope, then run the operation."""
        limit = self.settings.server.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > limit:
            raise _too_large(limit)
        host = request.headers.get("host")
        server = request.scope.get("server")
        if not self.hosts.allows(host, server[0] if server else None):
            raise errors.InvalidSignatureException(
                f"The request is for host {(host or '')[:100]!r}, which is not a name of this device "
                "(server.allowed_hosts)")
        claim = self.auth.begin(HttpRequest.from_asgi(request.scope))
        body = await _read_body(request, limit)
        if len(body) <= INLINE_BODY_BYTES:
            principal, params = _verify_and_parse(claim, body)
        else:  # hashing and parsing 16 MB would stall the loop
            principal, params = await run_in_threadpool(_verify_and_parse, claim, body)
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type not in JSON_CONTENT_TYPES or operation not in OPERATIONS:
            raise errors.UnknownOperationException(
                f"Unknown operation {request.headers.get('x-amz-target')!r} for content type {content_type!r}")
        principal.authorize(operation)
        if isinstance(params, errors.SerializationException):
            raise params  # malformed JSON is reported only to a caller allowed to call the operation
        principal.authorize_collection(operation, request_collection(params))
        caller = principal.access_key_id
        if OPERATIONS[operation].takes_image:
            return await self.pool.run(lambda worker: worker.call(operation, params, caller=caller))
        return await run_in_threadpool(lambda: self.rekognition.call(operation, params, caller=caller))

    def may_observe(self, request: Request) -> bool:
        """Whether this request may read the metrics and readiness detail (`server.metrics_access`)."""
        if self.settings.server.metrics_access == "loopback":
            return is_loopback(request.client.host if request.client else None)
        try:
            claim = self.auth.begin(HttpRequest.from_asgi(request.scope), OBSERVER_SIGNED)
            return claim.key is not None and claim.verify(b"").is_admin
        except errors.RekognitionError:
            return False

    def close(self) -> None:
        """After in-flight requests: finish the pool's jobs, then checkpoint and unlock the store."""
        withdraw(self.settings.state_dir)
        try:
            self.fleet.close()
            self.pool.close()
        finally:
            self.store.close()


def create_app(settings: Settings, *, make_pipeline: PipelineFactory = FacePipeline.from_settings,
               notifier: Notifier | None = None) -> FastAPI:
    """The ASGI app; the store opens and the models load in its lifespan, before the first request."""
    metrics = Metrics(collection_names=settings.server.metrics_collection_names)
    failed_logins = RateLimitedLog(log)
    notifier = notifier or Notifier(None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        quiet_accept_errors(asyncio.get_running_loop(), metrics)
        daemon = await run_in_threadpool(Daemon, settings, metrics, make_pipeline, notifier)
        app.state.daemon = daemon
        try:
            yield
        finally:
            app.state.daemon = None
            await run_in_threadpool(daemon.close)

    app = FastAPI(title="edge-face", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.daemon = None
    app.state.metrics = metrics
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router(lambda request: request.app.state.daemon))
    metrics.registry.register(SyncCollector(
        lambda: app.state.daemon.fleet.syncer if app.state.daemon is not None else None))

    @app.exception_handler(HTTPException)
    async def not_an_operation(request: Request, exc: HTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _json(exc.status_code, {"__type": "UnknownOperationException", "message": message})

    async def rekognition(request: Request) -> Response:
        daemon: Daemon | None = request.app.state.daemon
        if daemon is None:  # only between shutdown's start and the last connection closing
            return _error(errors.ServiceUnavailableException("The daemon is shutting down"))
        started = time.perf_counter()
        target = request.headers.get("x-amz-target", "")
        operation = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
        label = operation if operation in OPERATIONS else "unknown"
        try:
            response = _json(200, await daemon.handle(request, operation))
        except errors.RekognitionError as exc:
            metrics.errors.labels(label, exc.code).inc()
            if type(exc) in AUTH_FAILURES:
                metrics.auth_failures.labels(exc.code).inc()
                # The message, not the request: it never holds a signature. %r escapes what a client wrote.
                source = request.client.host if request.client else "?"
                failed_logins.warning("refused a request: key %s from %s: %s: %.200r",
                                      key_id(HttpRequest.from_asgi(request.scope)), source, exc.code, exc.message)
            response = _error(exc)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        except Exception:
            log.exception("%s failed", label)
            metrics.errors.labels(label, "InternalServerError").inc()
            response = _error(errors.InternalServerError(INTERNAL_ERROR))
        metrics.requests.labels(label).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - started)
        return response

    # A plain Starlette route: FastAPI's parameter machinery has nothing to do for a raw body, and costs
    # the search path time on every request.
    app.add_route("/", rekognition, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        """200 while requests can be served and stored; the detail only for those who may observe."""
        daemon: Daemon | None = request.app.state.daemon
        if daemon is None:
            return _json(503, {"status": "stopping"})
        try:
            await run_in_threadpool(daemon.store.list_collections, limit=1)
            health = await run_in_threadpool(daemon.store.health)
        except Exception as exc:
            log.exception("readiness check failed")
            return _json(503, {"status": "store unavailable", "error": type(exc).__name__})
        answer: dict[str, Any] = {"status": "ready" if health.writable else "store unwritable"}
        if await run_in_threadpool(daemon.may_observe, request):
            answer |= {"reason": health.reason, "free_bytes": health.free_bytes,
                       "erasure_pending": health.erasure_pending}
            sync = daemon.fleet.sync_detail()
            if sync is not None:
                answer["sync"] = sync
        return _json(200 if health.writable else 503, answer)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        daemon: Daemon | None = request.app.state.daemon
        if daemon is None:
            return _error(errors.ServiceUnavailableException("The daemon is shutting down"))
        if not await run_in_threadpool(daemon.may_observe, request):
            return _json(403, {"__type": "AccessDeniedException", "message": (
                "Metrics are for loopback clients only" if settings.server.metrics_access == "loopback"
                else "Metrics need a request signed by an admin key")})
        return Response(await run_in_threadpool(metrics.render), media_type="text/plain; version=0.0.4")

    return app


class RequestIdMiddleware:
    """`x-amzn-RequestId` on every response, as AWS sends it (botocore reports it as RequestId)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4()).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-amzn-RequestId", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class NotifyingServer(uvicorn.Server):
    """uvicorn, telling systemd when the port is open (READY=1), when it stops, and that its loop turns."""

    def __init__(self, config: uvicorn.Config, notifier: Notifier) -> None:
        super().__init__(config)
        self.notifier = notifier

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # From the first moment: during start-up the loop waits on the thread that loads models and opens the store.
        pinger = asyncio.create_task(self.notifier.keep_alive())
        try:
            await super().serve(sockets)
        finally:
            pinger.cancel()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # The lifespan (store, keys, models) runs first; READY=1 only once the port accepts connections too.
        await super().startup(sockets)
        if self.started:
            scheme = "https" if self.config.ssl_certfile else "http"
            self.notifier.ready(f"serving on {scheme}://{self.config.host}:{self.config.port}")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.notifier.stopping("finishing in-flight requests, then saving the store")
        await super().shutdown(sockets)


def serve(settings: Settings, *, state_dir: str | None = None, host: str | None = None, port: int | None = None) -> int:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C; in-flight requests finish first."""
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    server = ServerSettings.model_validate(settings.server.model_dump() | overrides)
    update: dict[str, Any] = {"server": server}
    if state_dir is not None:
        update["state_dir"] = Path(state_dir)
    settings = settings.model_copy(update=update)
    notifier = Notifier.from_environment()
    app = create_app(settings, notifier=notifier)
    config = uvicorn.Config(
        app, host=server.host, port=server.port, lifespan="on", server_header=False,
        access_log=False,  # a line per request would flood the journal; decisions go to access.sqlite3
        http=guarded_protocol(server, app.state.metrics),
        timeout_graceful_shutdown=server.shutdown_timeout_s,
        ssl_certfile=server.tls_cert, ssl_keyfile=server.tls_key)
    if server.tls_cert is None and not is_loopback(server.host):
        log.warning("serving plain HTTP on %s: face images cross the network in clear text; configure "
                    "server.tls_cert and server.tls_key", server.host)
    daemon = NotifyingServer(config, notifier)
    daemon.run()
    return 0 if daemon.started else 1


def usage_hint(settings: Settings) -> str:
    """How a client uses the credentials file, with this daemon's endpoint filled in."""
    server = settings.server
    ca = f" --ca-bundle {server.tls_cert}" if server.tls_cert else ""
    credentials = settings.state_dir / CREDENTIALS_FILE
    return (f"profiles 'admin' and 'kiosk' (read-only) are in {credentials}; try\n"
            f"  AWS_SHARED_CREDENTIALS_FILE={credentials} aws --profile admin --region us-east-1 "
            f"--endpoint-url {local_url(server)}{ca} rekognition list-collections")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it grows past `limit` (a chunked body declares no length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> errors.RekognitionError:
    return errors.RequestEntityTooLargeException(f"Request body exceeds the {limit}-byte limit")


def _verify_and_parse(claim: Claim, body: bytes) -> tuple[Principal, Any]:
    """The signer and the parameters, or the parse error to raise once the signer may see it."""
    principal = claim.verify(body)
    try:
        return principal, _parse_json(body)
    except errors.SerializationException as exc:
        return principal, exc


def _parse_json(body: bytes) -> Any:
    """The request's parameters; an empty body is no parameters."""
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        raise errors.SerializationException(f"Request body is not valid JSON: {exc}") from None


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type=CONTENT_TYPE)


def http_status(exc: errors.RekognitionError) -> int:
    """The HTTP status that carries a Rekognition error."""
    return STATUS.get(type(exc), 400)


def _error(exc: errors.RekognitionError) -> Response:
    return _json(http_status(exc), {"__type": exc.code, "message": exc.message})

