"""The device's side of the feed: verify with TUF, then apply each batch atomically, or refuse and keep serving.

Per followed collection, python-tuf's Updater keeps the trusted metadata under
`state_dir/sync/<collection>/metadata` and refuses what TUF refuses: a bad or missing signature, a
version older than one already trusted (rollback, replay), expired metadata (a frozen feed), a
snapshot or targets file that does not match what the timestamp and snapshot name (mix-and-match), a
file longer or other than its signed length and hash (endless data, a flipped byte, truncation), and,
through the root chain, anything signed by an online key the root no longer names. On top of that the
applier refuses a batch that does not start at its applied sequence (a gap), a head behind it (the
sequence going backwards), and another face model than the device's own. The store applies a batch and
the sequence it reaches in one SQLite transaction: a refusal or a crash leaves the last good state.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from edge.config import SyncSettings
from edge.store import CollectionExists, FeedOutOfOrder, FeedUpdate, ShippedIndex, Store
from edge.sync.bundle import BundleInvalid, decode
from edge.sync.client import SignedFetcher
from edge.sync.publisher import INDEX_TARGET, SNAPSHOT_TARGET, batch_target

log = logging.getLogger(__name__)

SYNC_DIR = "sync"
DIR_MODE = 0o700
TMP_DIR = "tmp"
FEED_PATH = "/sync/v1/"


class SyncRefused(Exception):
    """Why a sync applied nothing (more): `reason` is a short code for metrics, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class SyncStatus:
    """What the device knows of one followed collection, for /readyz and the metrics."""

    collection_id: str
    applied_seq: int = 0
    head_seq: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    caught_up_at: float | None = None
    """When the copy last was at the central's head: lag in seconds counts from there."""
    valid_until: float | None = None
    reason: str | None = None
    error: str | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"applied_seq": self.applied_seq, "head_seq": self.head_seq,
                "lag_changes": max(0, self.head_seq - self.applied_seq), "lag_seconds": self.lag_seconds(now),
                "last_success": self.last_success, "valid_until": self.valid_until,
                "serving": self.valid_until is not None and self.valid_until > now,
                "error": None if self.reason is None else {"reason": self.reason, "detail": self.error}}

    def lag_seconds(self, now: float) -> float | None:
        if self.caught_up_at is None:
            return None
        return 0.0 if self.applied_seq >= self.head_seq and self.reason is None else now - self.caught_up_at


def classify(exc: BaseException) -> SyncRefused:
    """A refusal's reason code from TUF's and the store's exceptions (most specific first)."""
    table: list[tuple[type[BaseException], str]] = [
        (SyncRefused, ""),
        (tuf_errors.DownloadLengthMismatchError, "length"),
        (tuf_errors.DownloadHTTPError, "http"),
        (tuf_errors.DownloadError, "unreachable"),
        (tuf_errors.ExpiredMetadataError, "expired"),
        (tuf_errors.BadVersionNumberError, "rollback"),
        (tuf_errors.UnsignedMetadataError, "signature"),
        (tuf_errors.LengthOrHashMismatchError, "hash"),
        (tuf_errors.RepositoryError, "metadata"),
        (BundleInvalid, "bundle"),
        (FeedOutOfOrder, "gap"),
        (CollectionExists, "local"),
        (OSError, "unreachable"),
    ]
    for kind, reason in table:
        if isinstance(exc, kind):
            if isinstance(exc, SyncRefused):
                return exc
            if isinstance(exc, tuf_errors.DownloadHTTPError):
                reason = "unauthorized" if exc.status_code in (401, 403) else "http"
            return SyncRefused(reason, f"{type(exc).__name__}: {exc}")
    return SyncRefused("internal", f"{type(exc).__name__}: {exc}")


class Syncer:
    """Follows the configured collections of one central; `sync_all` runs one round (the loop and
    `edge-face sync` both call it, one round at a time)."""

    def __init__(self, store: Store, settings: SyncSettings, state_dir: Path, face_model_version: str,
                 clock: Callable[[], float] = time.time, fetcher: FetcherInterface | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        assert settings.central_url and settings.access_key_id and settings.secret_access_key and settings.root
        self._store = store
        self._settings = settings
        self._central = settings.central_url.rstrip("/")
        self._dir = state_dir / SYNC_DIR
        self._model = face_model_version
        self._clock = clock
        self._root = settings.root.read_bytes()
        self._fetcher = fetcher or SignedFetcher(settings.access_key_id, settings.secret_access_key,
                                                 timeout_s=settings.timeout_s, ca_bundle=settings.ca_bundle)
        #: Told what a round is doing and how it ended (the daemon's systemd status line).
        self._progress = progress or (lambda _: None)
        self._round = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        shutil.rmtree(self._dir / TMP_DIR, ignore_errors=True)  # a download a crash left behind
        for private in (self._dir, self._dir / TMP_DIR):  # downloads hold vectors until they are applied
            private.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            private.chmod(DIR_MODE)
        known = store.sync_states()
        for cid in set(known) - set(settings.collections):
            log.warning("no longer following %s: deleting this device's copy", cid)
            store.drop_synced(cid)
        self._status = {cid: self._from_store(SyncStatus(cid)) for cid in settings.collections}
        self._failures: dict[tuple[str, str], int] = {}

    def status(self) -> dict[str, SyncStatus]:
        return dict(self._status)

    def failures(self) -> dict[tuple[str, str], int]:
        """Refused or failed rounds so far, by (collection, reason)."""
        return dict(self._failures)

    def sync_all(self) -> dict[str, SyncStatus]:
        with self._round:
            for cid in self._settings.collections:
                self._progress(f"syncing {cid} from {self._central}")
                self._status[cid] = self._sync_one(cid)
            self._progress("synced " + ", ".join(
                f"{s.collection_id} to {s.applied_seq} of {s.head_seq}" if s.reason is None
                else f"{s.collection_id} refused ({s.reason}), serving {s.applied_seq}" for s in self._status.values()))
        return self.status()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="feed-sync", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # internals

    def _loop(self) -> None:
        failures = 0
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                statuses = self.sync_all()
                ok = all(s.reason is None for s in statuses.values())
            except Exception:
                log.exception("sync round failed")
                ok = False
            failures = 0 if ok else failures + 1
            base = min(self._settings.interval_s * 2 ** min(failures, 30), self._settings.max_backoff_s)
            delay = base * (1 + random.uniform(-self._settings.jitter, self._settings.jitter))

    def _from_store(self, status: SyncStatus) -> SyncStatus:
        state = self._store.sync_states().get(status.collection_id)
        if state is None:
            return status
        return replace(status, applied_seq=state.applied_seq, head_seq=state.head_seq, valid_until=state.valid_until,
                       last_success=status.last_success or state.synced_at)

    def _sync_one(self, cid: str) -> SyncStatus:
        now = self._clock()
        previous = self._status.get(cid, SyncStatus(cid))
        try:
            head = self._follow(cid)
        except Exception as exc:
            refusal = classify(exc)
            key = (cid, refusal.reason)
            self._failures[key] = self._failures.get(key, 0) + 1
            status = self._from_store(replace(previous, last_attempt=now, reason=refusal.reason, error=str(refusal)))
            log.warning("sync of %s refused (%s): %s; serving the last good state (sequence %d)", cid,
                        refusal.reason, refusal, status.applied_seq)
            return status
        status = self._from_store(replace(previous, last_attempt=now, last_success=self._clock(), reason=None,
                                          error=None))
        caught_up = status.applied_seq >= head
        return replace(status, head_seq=head, caught_up_at=self._clock() if caught_up else status.caught_up_at)

    def _updater(self, cid: str) -> Updater:
        base = f"{self._central}{FEED_PATH}{quote(cid, safe='')}/"
        metadata_dir = self._dir / cid / "metadata"
        metadata_dir.mkdir(parents=True, exist_ok=True)
        return Updater(str(metadata_dir), base + "metadata/", target_dir=str(self._dir / TMP_DIR),
                       target_base_url=base + "targets/", fetcher=self._fetcher, bootstrap=self._root)

    def _follow(self, cid: str) -> int:
        """One verified round for one collection; returns the central's head."""
        updater = self._updater(cid)
        updater.refresh()
        valid_until = self._valid_until(cid)
        snapshot = updater.get_targetinfo(SNAPSHOT_TARGET)
        if snapshot is None:
            raise SyncRefused("metadata", f"the feed of {cid} names no snapshot")
        info = snapshot.custom
        local = self._store.sync_states().get(cid)
        if info.get("deleted"):
            if local is not None:
                log.warning("%s was deleted at the central: deleting this device's copy", cid)
                self._store.drop_synced(cid)
            return 0
        if info["face_model_version"] != self._model:
            raise SyncRefused("model", f"{cid} holds faces of model {info['face_model_version']}; this device "
                              f"runs {self._model}: their vectors cannot be compared")
        head = int(info["head"])
        applied = local.applied_seq if local is not None and local.source_uid == info["uid"] else None
        if applied is not None and applied > head:
            raise SyncRefused("backwards", f"the central's head of {cid} is {head}, behind this device's {applied}")
        if applied is None:
            applied = self._apply(updater, cid, snapshot, info, None, valid_until, head)
        while applied < head:
            batch = updater.get_targetinfo(batch_target(applied))
            if batch is not None:
                applied = self._apply(updater, cid, batch, info, applied, valid_until, head)
            elif int(info["seq"]) > applied:  # behind the last compaction: start again from the snapshot
                applied = self._apply(updater, cid, snapshot, info, None, valid_until, head)
            else:
                raise SyncRefused("gap", f"the feed of {cid} has no batch from {applied} (snapshot at "
                                  f"{info['seq']}, head {head})")
        self._store.note_sync(cid, valid_until=valid_until, head_seq=head)
        return head

    def _download(self, updater: Updater, target: TargetFile) -> bytes:
        """A target's bytes, checked by TUF against its signed length and hash; no copy is left behind."""
        path = Path(updater.download_target(target))
        try:
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def _shipped_index(self, updater: Updater, snapshot: TargetFile) -> ShippedIndex | None:
        """The graph the central built over this snapshot, if it has published one yet."""
        target = updater.get_targetinfo(INDEX_TARGET)
        if target is None or target.custom.get("snapshot") != snapshot.hashes.get("sha256"):
            return None
        custom = target.custom
        return ShippedIndex(self._download(updater, target), int(custom["count"]), int(custom["m"]),
                            int(custom["ef_construction"]), str(custom["hnswlib_version"]), custom.get("projection"))

    def _apply(self, updater: Updater, cid: str, target: TargetFile, info: dict[str, Any], applied: int | None,
               valid_until: float, head: int) -> int:
        """Download (length and hash checked by TUF), decode, check and apply one bundle; returns its end."""
        bundle = decode(self._download(updater, target))
        changes = bundle.changes
        expected_kind = "snapshot" if applied is None else "batch"
        expected_to = int(info["seq"]) if applied is None else int(target.custom["to"])
        if (bundle.kind, bundle.collection_id, bundle.collection_uid, changes.to_seq) != (
                expected_kind, cid, info["uid"], expected_to) or (applied is not None
                                                                  and changes.from_seq != applied):
            raise SyncRefused("bundle", f"{target.path} of {cid} holds a {bundle.kind} of {bundle.collection_id} "
                              f"({bundle.collection_uid}) for ({changes.from_seq}, {changes.to_seq}]")
        if bundle.face_model_version != self._model:
            raise SyncRefused("model", f"{target.path} holds faces of model {bundle.face_model_version}")
        fresh = applied is None and cid not in self._store.sync_states()
        self._store.apply_feed(FeedUpdate(
            collection_id=cid, source=self._central, source_uid=bundle.collection_uid, arn=bundle.arn,
            face_model_version=bundle.face_model_version, dim=bundle.dim, snapshot=applied is None,
            changes=changes, valid_until=valid_until, head_seq=head,
            index=self._shipped_index(updater, target) if fresh else None))
        log.info("%s: applied %s (%d, %d] with %d faces, %d deletions", cid, bundle.kind, changes.from_seq,
                 changes.to_seq, len(changes.faces), len(changes.deleted_faces) + len(changes.deleted_users))
        return changes.to_seq

    def _valid_until(self, cid: str) -> float:
        """When the metadata just verified expires: the end of this device's licence to match."""
        metadata_dir = self._dir / cid / "metadata"
        return min(Metadata.from_bytes((metadata_dir / f"{role}.json").read_bytes()).signed.expires.timestamp()
                   for role in ("timestamp", "snapshot", "targets"))
