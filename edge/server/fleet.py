"""Fleet sync over HTTP: the central's feed routes, a device's on-demand sync, and their health and metrics.

The central serves each collection's TUF repository under `/sync/v1/<collection>/metadata/` and
`/targets/` to devices that sign with their own key (SigV4, like every other request); a key reads
only the collections the devices file gives it. A device runs its Syncer on an interval and on
`POST /sync` (the admin key; `edge-face sync` sends it), and reports each followed collection in
`/readyz` and `/metrics`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from edge import errors
from edge.config import Settings
from edge.server.auth import Authenticator, HttpRequest
from edge.server.devices import DEVICES_FILE, DeviceRegistry
from edge.store import HnswParams, Store
from edge.sync.applier import Syncer
from edge.sync.publisher import Publisher
from edge.sync.storage import FeedStorage, SqliteFeedStorage

log = logging.getLogger(__name__)

FEED_FILE = "feed.sqlite3"
KEYS_DIR = "feed-keys"
_METADATA = re.compile(r"^(?:(?P<version>[1-9][0-9]{0,18})\.)?(?P<role>root|timestamp|snapshot|targets)\.json$")
_TARGET = re.compile(r"^(?P<digest>[0-9a-f]{64})\.(?P<name>[A-Za-z0-9_.\-]{1,80})$")


@dataclass
class Central:
    """The central's half: the publisher and the devices that may read it."""

    publisher: Publisher
    storage: FeedStorage
    devices: DeviceRegistry
    auth: Authenticator

    def close(self) -> None:
        self.publisher.close()
        self.storage.close()


@dataclass
class Fleet:
    """What a daemon runs for fleet sync: a central, a syncer following one, or neither."""

    central: Central | None = None
    syncer: Syncer | None = None

    @classmethod
    def open(cls, settings: Settings, store: Store, face_model_version: str,
             progress: Callable[[str], None] | None = None) -> Fleet:
        """`progress` hears what each sync round does (the daemon's systemd status line)."""
        fleet = cls()
        if settings.role == "central":
            storage = feed_storage(settings)
            publisher = Publisher(store, storage, central_keys_dir(settings), settings.feed,
                                  HnswParams.from_settings(settings.store))
            devices = DeviceRegistry(devices_file(settings))
            fleet.central = Central(publisher, storage, devices, Authenticator(devices, settings.server))
            publisher.start()
        if settings.sync.central_url:
            fleet.syncer = Syncer(store, settings.sync, settings.state_dir, face_model_version, progress=progress)
            fleet.syncer.start()
        return fleet

    def close(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
        if self.central is not None:
            self.central.close()

    def sync_detail(self) -> dict[str, Any] | None:
        if self.syncer is None:
            return None
        now = time.time()
        return {cid: status.as_dict(now) for cid, status in self.syncer.status().items()}


def feed_storage(settings: Settings) -> FeedStorage:
    """Where the central keeps its published feed: beside its collections (SQLite file, or PostgreSQL)."""
    if settings.store.backend == "postgres":
        from edge.sync.pg import PgFeedStorage

        assert settings.store.postgres_dsn is not None
        return PgFeedStorage(settings.store.postgres_dsn)
    return SqliteFeedStorage(settings.state_dir / FEED_FILE)


def central_keys_dir(settings: Settings) -> Path:
    return settings.feed.keys_dir or settings.state_dir / KEYS_DIR


def devices_file(settings: Settings) -> Path:
    return settings.feed.devices_file or settings.state_dir / DEVICES_FILE


def router(daemon: Callable[[Request], Any]) -> APIRouter:
    """The fleet routes; `daemon(request)` is the running daemon (None while stopping)."""
    routes = APIRouter()

    def _central(request: Request, collection_id: str) -> Central | Response:
        running = daemon(request)
        central: Central | None = running.fleet.central if running is not None else None
        if central is None:
            return _refuse(404, "NotFound", "this daemon is not a central")
        try:
            claim = central.auth.begin(HttpRequest.from_asgi(request.scope))
            principal = claim.verify(b"")
        except errors.RekognitionError as exc:
            log.warning("feed request refused: %s", exc.message)
            return _refuse(403, exc.code, exc.message)
        device = central.devices.device(principal.access_key_id or "")
        if device is None or collection_id not in device.collections:
            name = device.name if device else principal.access_key_id
            log.warning("device %s asked for the feed of %s, which it does not follow", name, collection_id)
            return _refuse(403, "AccessDeniedException", f"this device key may not read {collection_id}")
        return central

    @routes.get("/sync/v1/{collection_id}/metadata/{name}")
    async def metadata(request: Request, collection_id: str, name: str) -> Response:
        central = await run_in_threadpool(_central, request, collection_id)
        if isinstance(central, Response):
            return central
        match = _METADATA.match(name)
        if match is None:
            return _refuse(404, "NotFound", name)
        version = int(match["version"]) if match["version"] else None
        role = match["role"]
        if role == "root":
            body = central.publisher.root_json(version) if version else None
        else:
            body = await run_in_threadpool(central.publisher.metadata, collection_id, role, version)
        if body is None:
            return _refuse(404, "NotFound", f"{collection_id}/{name}")
        return Response(body, media_type="application/json")

    @routes.get("/sync/v1/{collection_id}/targets/{name}")
    async def target(request: Request, collection_id: str, name: str) -> Response:
        central = await run_in_threadpool(_central, request, collection_id)
        if isinstance(central, Response):
            return central
        match = _TARGET.match(name)
        body = await run_in_threadpool(central.publisher.target, collection_id, match["digest"]) if match else None
        if body is None:
            return _refuse(404, "NotFound", f"{collection_id}/{name}")
        return Response(body, media_type="application/octet-stream")

    @routes.post("/sync")
    async def sync_now(request: Request) -> Response:
        running = daemon(request)
        if running is None:
            return _refuse(503, "ServiceUnavailableException", "The daemon is shutting down")
        try:
            claim = running.auth.begin(HttpRequest.from_asgi(request.scope))
            principal = await run_in_threadpool(claim.verify, await request.body())
        except errors.RekognitionError as exc:
            return _refuse(403, exc.code, exc.message)
        if not principal.is_admin:
            return _refuse(403, "AccessDeniedException", "only the admin key may start a sync")
        syncer: Syncer | None = running.fleet.syncer
        if syncer is None:
            return _refuse(404, "NotFound", "this device follows no central (sync.central_url is not set)")
        statuses = await run_in_threadpool(syncer.sync_all)
        now = time.time()
        return _json(200, {cid: s.as_dict(now) for cid, s in statuses.items()})

    return routes


class SyncCollector(Collector):
    """Sync health per followed collection, read at scrape time from the running daemon's syncer."""

    def __init__(self, syncer: Callable[[], Syncer | None]) -> None:
        self._syncer = syncer

    def collect(self) -> Iterator[Metric]:
        syncer = self._syncer()
        if syncer is None:
            return
        now = time.time()
        last = GaugeMetricFamily("edge_face_sync_last_success_timestamp_seconds",
                                 "When the collection last synced with the central", labels=["collection"])
        lag = GaugeMetricFamily("edge_face_sync_lag_changes", "Changes the central has that this device has not",
                                labels=["collection"])
        lag_s = GaugeMetricFamily("edge_face_sync_lag_seconds", "Seconds since this device was last at the "
                                  "central's head", labels=["collection"])
        valid = GaugeMetricFamily("edge_face_sync_valid_until_timestamp_seconds", "When the verified feed expires "
                                  "and the device stops matching the collection", labels=["collection"])
        failed = CounterMetricFamily("edge_face_sync_failures", "Refused or failed syncs by reason",
                                     labels=["collection", "reason"])
        for cid, status in syncer.status().items():
            if status.last_success is not None:
                last.add_metric([cid], status.last_success)
            lag.add_metric([cid], max(0, status.head_seq - status.applied_seq))
            seconds = status.lag_seconds(now)
            if seconds is not None:
                lag_s.add_metric([cid], seconds)
            if status.valid_until is not None:
                valid.add_metric([cid], status.valid_until)
        for (cid, reason), count in syncer.failures().items():
            failed.add_metric([cid, reason], count)
        yield from (last, lag, lag_s, valid, failed)


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type="application/json")


def _refuse(status: int, code: str, message: str) -> Response:
    return _json(status, {"__type": code, "message": message})
