"""A central (the real app with fake models) on loopback, and devices that follow it in this process.

A device here is a Store and a Syncer on a temporary state directory, provisioned with the CLI's
`central add-device`; its fetcher is the real signed one with a hook in the middle, where a test plays
the attacker on the wire (flip a byte, replay, roll back, sign with another key).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import numpy as np
import uvicorn
import yaml
from botocore.config import Config
from fakes import FakeEmbedder, photo, serving

from edge.cli import main
from edge.config import FeedSettings, Settings, StoreSettings, SyncSettings
from edge.server.credentials import CREDENTIALS_FILE
from edge.store import Store
from edge.sync.applier import Syncer
from edge.sync.client import SignedFetcher

MODEL = FakeEmbedder.version
#: url, body -> body the device receives (the attacker on the wire).
Tamper = Callable[[str, bytes], bytes]


@dataclass
class Central:
    url: str
    state_dir: Path
    server: uvicorn.Server
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, profile: str = "admin") -> Any:
        if profile not in self._clients:
            session = botocore.session.Session()
            session.set_config_variable("credentials_file", str(self.state_dir / CREDENTIALS_FILE))
            self._clients[profile] = boto3.Session(botocore_session=session, profile_name=profile).client(
                "rekognition", region_name="us-east-1", endpoint_url=self.url,
                config=Config(retries={"max_attempts": 1}))
        return self._clients[profile]

    def enrol(self, collection_id: str, person: str, external_image_id: str | None = None) -> str:
        """IndexFaces of one fake photo of `person`; returns the FaceId."""
        reply = self.client().index_faces(CollectionId=collection_id, Image={"Bytes": photo((person, 40, 40, 160))},
                                          ExternalImageId=external_image_id or person)
        return str(reply["FaceRecords"][0]["Face"]["FaceId"])

    def cli(self, *args: str) -> int:
        return main(["central", "--state-dir", str(self.state_dir), *args])


@contextmanager
def running_central(state_dir: Path, *, dsn: str | None = None, **feed: Any) -> Iterator[Central]:
    """A central on SQLite in its state directory, or on PostgreSQL when given a connection string."""
    store = StoreSettings(backend="postgres", postgres_dsn=dsn) if dsn else StoreSettings()
    settings = Settings(state_dir=state_dir, role="central", store=store,
                        feed=FeedSettings(publish_interval_s=3600, **feed))
    with serving(settings) as (url, server):
        yield Central(url, state_dir, server)


class WireFetcher(SignedFetcher):
    """The device's real signed fetcher, with a man in the middle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tamper: Tamper | None = None
        self.seen: dict[str, bytes] = {}

    def _fetch(self, url: str) -> Iterator[bytes]:
        body = b"".join(super()._fetch(url))
        self.seen.setdefault(url, body)
        if self.tamper is not None:
            body = self.tamper(url, body)
        return iter([body])


@dataclass
class Device:
    state_dir: Path
    store: Store
    syncer: Syncer
    wire: WireFetcher
    settings: SyncSettings

    def sync(self) -> dict[str, Any]:
        """One round; each collection's status as /readyz shows it."""
        return {cid: status.as_dict(time.time()) for cid, status in self.syncer.sync_all().items()}

    def external_ids(self, collection_id: str) -> list[str]:
        faces, _ = self.store.list_faces(collection_id)
        return sorted(f.external_image_id or "" for f in faces)

    def close(self) -> None:
        self.syncer.close()
        self.store.close()


def provision(central: Central, directory: Path, name: str, collections: list[str]) -> SyncSettings:
    assert central.cli("add-device", name, "--collections", ",".join(collections), "--url", central.url,
                       "--out", str(directory / "provision")) == 0
    config = yaml.safe_load((directory / "provision" / "config.yaml").read_text())
    return SyncSettings.model_validate(config["sync"])


def open_device(directory: Path, settings: SyncSettings, model: str = MODEL,
                progress: Callable[[str], None] | None = None, **store_options: Any) -> Device:
    store = Store(directory / "state", checkpoint_interval_s=None, **store_options)
    assert settings.access_key_id and settings.secret_access_key
    wire = WireFetcher(settings.access_key_id, settings.secret_access_key, timeout_s=30)
    syncer = Syncer(store, settings, directory / "state", model, fetcher=wire, progress=progress)
    return Device(directory / "state", store, syncer, wire, settings)


def files_holding(state_dir: Path, needle: bytes) -> list[str]:
    """Every file under the state directory that contains these bytes (as a forensic scan would)."""
    return [str(p.relative_to(state_dir)) for p in state_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


RELAY_WINDOW = 64 * 1024


class SlowProxy:
    """A loopback TCP relay that passes the central's answers on at `rate` bytes/s, counting them: a test
    kills the central while a large download is half through."""

    def __init__(self, upstream_port: int, rate: float = 2e6) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.down = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            # A small receive window, so that the central cannot push the rest of a download into this relay's
            # buffers (on loopback they grow to megabytes) and have it delivered after it was killed.
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_WINDOW)
            try:
                upstream.connect(("127.0.0.1", self.upstream_port))
            except OSError:
                upstream.close()
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        try:
            while data := source.recv(64 * 1024):
                sink.sendall(data)
                if throttled:
                    self.down += len(data)
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._listener.close()
