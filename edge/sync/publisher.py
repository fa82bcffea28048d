"""The central's side of the feed: cuts batches and snapshots from the store and signs them with TUF.

Per collection the feed is a TUF repository (consistent snapshots: files are fetched by their hash,
metadata by version). Its targets are one snapshot bundle (the collection as of some sequence) and
the chain of batches since it, `batch-<from>` holding the changes in (from, to]. Every publication
signs new targets, snapshot and timestamp metadata with the online key; the root (shared by every
collection) names the keys and is signed by the root key.

A publication that carries a deletion also cuts a new snapshot and drops every older file, so no
published file keeps a deleted face's vector or ids; a device at the previous head still gets just the
small batch, one further behind the snapshot. The same happens when the batches outgrow the snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edge.config import FeedSettings
from edge.store import CollectionNotFound, CollectionRecord, FeedSlice, HnswParams, Store
from edge.store.index import HNSWLIB_VERSION, HnswIndex
from edge.sync.bundle import Bundle, decode, encode
from edge.sync.keys import ONLINE_KEY, FeedKeys, load_signer
from edge.sync.storage import FeedStorage, FeedTx

log = logging.getLogger(__name__)

SNAPSHOT_TARGET = "snapshot"
INDEX_TARGET = "index"
BATCH_PREFIX = "batch-"
ROOT_LIFETIME = timedelta(days=3650)
#: Older metadata versions kept, so a device that read the timestamp just before a publication still
#: finds the snapshot and targets versions it names.
KEEP_VERSIONS = 4
ROLES = (Targets.type, Snapshot.type, Timestamp.type)
_SERIALIZER = JSONSerializer(compact=True)
S = TypeVar("S", bound=Signed)


def batch_target(from_seq: int) -> str:
    return f"{BATCH_PREFIX}{from_seq}"


class Publisher:
    """Publishes every collection of one store; any number of instances may share one FeedStorage."""

    def __init__(self, store: Store, storage: FeedStorage, keys_dir: Path, settings: FeedSettings,
                 hnsw: HnswParams = HnswParams(),  # noqa: B008 - frozen dataclass
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._hnsw = hnsw
        self._index_jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._indexer: threading.Thread | None = None
        self._storage = storage
        self._keys_dir = keys_dir
        self._settings = settings
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._root_version = ensure_root(storage, keys_dir)
        self._online = load_signer(keys_dir / ONLINE_KEY)
        """Only the online key: the root key is needed to start a feed and to rotate, and may be kept offline."""
        self._signed_under: dict[str, int] = {}
        """The root version each collection was last signed under (in memory: after a restart, once more)."""

    # what devices read

    def root_json(self, version: int | None = None) -> bytes | None:
        return self._storage.root(version)

    def metadata(self, collection_id: str, role: str, version: int | None) -> bytes | None:
        """A role's metadata; the (unversioned) timestamp is brought up to date first."""
        if role == Timestamp.type and version is None:
            self.publish(collection_id)
        return self._storage.metadata(collection_id, role, version)

    def target(self, collection_id: str, digest: str) -> bytes | None:
        return self._storage.file(collection_id, digest)

    # publishing

    def publish(self, collection_id: str, *, resign: bool = False) -> None:
        """Publish what changed since the last publication (nothing if nothing did and the signatures are
        fresh); `resign` signs again regardless. A rotated online key (a newer root) is picked up here."""
        self._follow_root()
        resign = resign or self._signed_under.get(collection_id) != self._root_version
        ship: str | None = None
        with self._storage.publishing(collection_id) as tx:
            previous = _load(tx.latest(Targets.type), Targets)
            timestamp = _load(tx.latest(Timestamp.type), Timestamp)
            targets = dict(previous.targets) if previous else {}
            snapshot = targets.get(SNAPSHOT_TARGET)
            info: dict[str, Any] = snapshot.custom if snapshot else {}
            try:
                record = self._store.get_collection(collection_id)
            except CollectionNotFound:
                if snapshot and not info.get("deleted"):
                    targets = {SNAPSHOT_TARGET: self._deleted_marker(tx, info)}
                    log.info("feed of %s: collection deleted at the central", collection_id)
                elif not snapshot or not (resign or self._stale(timestamp)):
                    return
                self._sign(tx, targets, previous)  # the marker stays signed and fresh for devices still away
                return
            same = bool(snapshot) and info.get("uid") == record.uid and not info.get("deleted")
            head = int(info.get("head", -1)) if same else -1
            batches = [t for name, t in targets.items() if name.startswith(BATCH_PREFIX)]
            batch_bytes = sum(t.length for t in batches)
            compact = batch_bytes > max(snapshot.length if snapshot else 0, self._settings.compact_min_bytes)
            read = self._store.read_feed(collection_id, head if same else None,
                                         export="on_delete" if same else "always")
            if compact and read.delta is not None and read.export is None:  # one read for both, at one head
                read = self._store.read_feed(collection_id, head, export="always")
            if same and read.head == head:
                if resign or self._stale(timestamp):
                    self._sign(tx, targets, previous)
                return
            if same and read.head < head:
                log.error("feed of %s: the store's head %d is behind the published %d; re-exporting",
                          collection_id, read.head, head)
                read = self._store.read_feed(collection_id, None, export="always")
            base = {"uid": record.uid, "face_model_version": record.face_model_version, "dim": record.dim}
            new: dict[str, TargetFile] = {} if read.export is not None else targets
            if read.export is not None:
                body = self._bundle(tx, record, "snapshot", read.export)
                new[SNAPSHOT_TARGET] = _target(SNAPSHOT_TARGET, body, {**base, "seq": read.head, "head": read.head,
                                                                       "deleted": False})
                if len(read.export.faces) >= self._settings.ship_index_min_faces:
                    ship = hashlib.sha256(body).hexdigest()
            else:
                assert snapshot is not None
                new[SNAPSHOT_TARGET] = _target(SNAPSHOT_TARGET, None, {**info, "head": read.head}, like=snapshot)
            if read.delta is not None:  # the head's devices take the small batch, even after a new snapshot
                body = self._bundle(tx, record, "batch", read.delta)
                name = batch_target(read.delta.from_seq)
                new[name] = _target(name, body, {**base, "from": read.delta.from_seq, "to": read.delta.to_seq})
            self._sign(tx, new, previous)
            log.info("feed of %s: published head %d (%d files)", collection_id, read.head, len(new))
        if ship is not None:  # once committed, where the indexer can read the snapshot
            self._index_jobs.put((collection_id, ship))

    def publish_all(self) -> None:
        """Publish every collection of the store, and the deletion of collections the store no longer has."""
        listed = set(self._storage.collections())
        after: str | None = None
        while True:
            records, after = self._store.list_collections(after=after)
            listed.update(r.collection_id for r in records)
            if after is None:
                break
        for collection_id in sorted(listed):
            try:
                self.publish(collection_id)
            except Exception:
                log.exception("publishing the feed of %s failed", collection_id)

    def start(self) -> None:
        """Publish in the background every `publish_interval_s` (a device's poll publishes at once too), and
        build the graphs that large snapshots ship with."""
        self._thread = threading.Thread(target=self._loop, name="feed-publisher", daemon=True)
        self._thread.start()
        self._indexer = threading.Thread(target=self._index_loop, name="feed-indexer", daemon=True)
        self._indexer.start()

    def close(self) -> None:
        self._stop.set()
        self._index_jobs.put(None)
        for thread in (self._thread, self._indexer):
            if thread is not None:
                thread.join()

    def ship_index(self, collection_id: str, digest: str) -> None:
        """Build the HNSW graph over a published snapshot's faces (labelled by position) and publish it beside
        the snapshot, unless a newer snapshot replaced it meanwhile."""
        body = self._storage.file(collection_id, digest)
        if body is None:
            return
        bundle = decode(body)
        count = len(bundle.changes.faces)
        graph = HnswIndex.build(bundle.dim, self._hnsw, np.arange(count, dtype=np.int64), bundle.changes.vectors)
        with tempfile.TemporaryDirectory() as scratch:
            data, projection = graph.raw_bytes(Path(scratch)), graph.projection
        del graph
        with self._storage.publishing(collection_id) as tx:
            previous = _load(tx.latest(Targets.type), Targets)
            snapshot = previous.targets.get(SNAPSHOT_TARGET) if previous else None
            if previous is None or snapshot is None or snapshot.hashes.get("sha256") != digest:
                return  # superseded (a deletion or a compaction cut a newer snapshot)
            tx.put_file(hashlib.sha256(data).hexdigest(), data)
            targets = {**previous.targets, INDEX_TARGET: _target(INDEX_TARGET, data, {
                "snapshot": digest, "count": count, "m": self._hnsw.m, "ef_construction": self._hnsw.ef_construction,
                "hnswlib_version": HNSWLIB_VERSION, **({"projection": projection} if projection else {})})}
            self._sign(tx, targets, previous)
        log.info("feed of %s: shipped the index of its %d-face snapshot", collection_id, count)

    # internals

    def _follow_root(self) -> None:
        """Reload the keys when another process (`edge-face central rotate-key`) signed a newer root."""
        current = _load(self._storage.root(None), Root)
        if current is not None and current.version != self._root_version:
            self._online = load_signer(self._keys_dir / ONLINE_KEY)
            self._root_version = current.version
            log.warning("feed root is now version %d: re-signing every feed with the current online key",
                        current.version)

    def _index_loop(self) -> None:
        while (job := self._index_jobs.get()) is not None:
            try:
                self.ship_index(*job)
            except Exception:
                log.exception("building the shipped index of %s failed", job[0])

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.publish_interval_s):
            try:
                self.publish_all()
            except Exception:
                log.exception("feed publication failed")

    def _stale(self, timestamp: Timestamp | None) -> bool:
        """Whether the signatures have passed half their lifetime (re-signed so devices never see them expire)."""
        if timestamp is None:
            return True
        left = timestamp.expires.timestamp() - self._clock()
        return left < self._settings.metadata_lifetime_s / 2

    def _bundle(self, tx: FeedTx, record: CollectionRecord, kind: Literal["batch", "snapshot"],
                changes: FeedSlice) -> bytes:
        body = encode(Bundle(kind, record.collection_id, record.uid, record.arn, record.face_model_version,
                             record.dim, changes))
        tx.put_file(hashlib.sha256(body).hexdigest(), body)
        return body

    def _deleted_marker(self, tx: FeedTx, info: dict[str, Any]) -> TargetFile:
        """The last word of a deleted collection's feed: devices delete their copy when they see it."""
        body = b"deleted " + str(info.get("uid", "")).encode()
        tx.put_file(hashlib.sha256(body).hexdigest(), body)
        return _target(SNAPSHOT_TARGET, body, {**info, "deleted": True})

    def _expiry(self) -> datetime:
        return datetime.fromtimestamp(int(self._clock() + self._settings.metadata_lifetime_s), UTC)

    def _sign(self, tx: FeedTx, targets: dict[str, TargetFile], previous: Targets | None) -> None:
        """Sign targets, snapshot and timestamp as the next version of each, and keep only what they name."""
        tx.keep_files([next(iter(t.hashes.values())) for t in targets.values()])
        expires = self._expiry()
        version = (previous.version if previous else 0) + 1
        targets_md = Metadata(Targets(version=version, expires=expires, targets=targets))
        targets_bytes = self._signed(targets_md)
        snapshot_md = Metadata(Snapshot(version=version, expires=expires,
                                        meta={"targets.json": _meta(version, targets_bytes)}))
        snapshot_bytes = self._signed(snapshot_md)
        timestamp_md = Metadata(Timestamp(version=version, expires=expires,
                                          snapshot_meta=_meta(version, snapshot_bytes)))
        for role, body in zip(ROLES, (targets_bytes, snapshot_bytes, self._signed(timestamp_md)), strict=True):
            tx.put_metadata(role, version, body)
            tx.prune_metadata(role, version - KEEP_VERSIONS + 1)
        self._signed_under[tx.collection_id] = self._root_version

    def _signed(self, md: Metadata[Any]) -> bytes:
        md.sign(self._online)
        return md.to_bytes(_SERIALIZER)


def ensure_root(storage: FeedStorage, keys_dir: Path) -> int:
    """The latest root version; a feed that has none gets its keys made and version 1 signed."""
    current = _load(storage.root(None), Root)
    if current is not None:
        return current.version
    _sign_root(storage, 1, FeedKeys.load_or_create(keys_dir))
    return 1


def rotate_online_key(storage: FeedStorage, keys_dir: Path) -> int:
    """Replace the online key and sign a root that names it (with the root key); returns its version.

    Running centrals re-sign every feed with the new key at their next publication; devices follow the
    root chain on their next sync and from then on refuse anything the old key signs.
    """
    new = FeedKeys.rotate_online(keys_dir)
    version = ensure_root(storage, keys_dir) + 1
    _sign_root(storage, version, new)
    return version


def _sign_root(storage: FeedStorage, version: int, keys: FeedKeys) -> None:
    root = Root(version=version, expires=datetime.now(UTC).replace(microsecond=0) + ROOT_LIFETIME,
                consistent_snapshot=True)
    root.add_key(keys.root.public_key, Root.type)
    for role in ROLES:
        root.add_key(keys.online.public_key, role)
    md = Metadata(root)
    md.sign(keys.root)
    storage.put_root(version, md.to_bytes(_SERIALIZER))


def _load(data: bytes | None, kind: type[S]) -> S | None:
    """The signed part of stored metadata (the central trusts what it signed itself)."""
    if data is None:
        return None
    signed = Metadata.from_bytes(data).signed
    if not isinstance(signed, kind):
        raise TypeError(f"stored {type(signed).__name__} metadata where {kind.__name__} was expected")
    return signed


def _meta(version: int, body: bytes) -> MetaFile:
    return MetaFile(version=version, length=len(body), hashes={"sha256": hashlib.sha256(body).hexdigest()})


def _target(name: str, body: bytes | None, custom: dict[str, Any], like: TargetFile | None = None) -> TargetFile:
    if body is None:
        assert like is not None
        return TargetFile(like.length, dict(like.hashes), name, unrecognized_fields={"custom": custom})
    digest = hashlib.sha256(body).hexdigest()
    return TargetFile(len(body), {"sha256": digest}, name, unrecognized_fields={"custom": custom})
