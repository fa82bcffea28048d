"""Fleet sync end to end in one process: a central app (fake models) on loopback, devices following it.

The same feed with real models and processes is tested in test_fleet_processes.py.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import urllib3
from fakes import PEOPLE
from securesystemslib.signer import CryptoSigner
from sync_support import (
    MODEL,
    Central,
    Device,
    Tamper,
    files_holding,
    open_device,
    provision,
    running_central,
    vector_bytes,
)
from tuf.api.metadata import Metadata, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edge.store import (
    BoundingBox,
    CollectionNotFound,
    CollectionReadOnly,
    CollectionStale,
    FeedOutOfOrder,
    FeedSlice,
    FeedUpdate,
    NewFace,
)
from edge.sync.keys import ONLINE_KEY, ROOT_KEY, load_signer
from edge.sync.storage import SqliteFeedStorage


def _device(central: Central, tmp_path: Path, name: str = "door-1", collections: tuple[str, ...] = ("door",),
            **options: Any) -> Device:
    return open_device(tmp_path / name, provision(central, tmp_path / name, name, list(collections)), **options)


def _colour(person: str) -> np.ndarray:
    vector = np.asarray(PEOPLE[person], dtype=np.float32) - 128
    return vector / np.linalg.norm(vector)


def test_each_round_says_what_it_syncs_and_how_it_ended(central: Central, tmp_path: Path) -> None:
    """What the daemon's systemd status line shows (`systemctl status edge-face`)."""
    central.client().create_collection(CollectionId="door")
    central.enrol("door", "ann")
    said: list[str] = []
    device = _device(central, tmp_path, collections=("door", "lobby"), progress=said.append)
    try:
        device.sync()
    finally:
        device.close()
    url = central.url.rstrip("/")
    assert said[:2] == [f"syncing door from {url}", f"syncing lobby from {url}"]
    assert re.fullmatch(r"synced door to ([1-9]\d*) of \1, lobby refused \(\w+\), serving 0", said[2]), said


def test_device_converges_and_forgets_what_the_central_deletes(any_central: Central, tmp_path: Path) -> None:
    central = any_central
    admin = central.client()
    admin.create_collection(CollectionId="door")
    ann = central.enrol("door", "ann", "ann-badge-4711")
    bob = central.enrol("door", "bob")
    admin.create_user(CollectionId="door", UserId="user-ann-0001")
    admin.associate_faces(CollectionId="door", UserId="user-ann-0001", FaceIds=[ann])
    device = _device(central, tmp_path)
    try:
        status = device.sync()["door"]
        assert status["error"] is None and status["lag_changes"] == 0 and status["serving"]
        assert device.external_ids("door") == ["ann-badge-4711", "bob"]
        hit = device.store.search("door", _colour("ann"), model_version=MODEL, k=1)[0]
        assert (hit.face.face_id, hit.face.user_id) == (ann, "user-ann-0001")
        assert [u.user_id for u in device.store.list_users("door")[0]] == ["user-ann-0001"]
        with pytest.raises(CollectionReadOnly):
            device.store.add_faces("door", [NewFace(_colour("cyd"), "i", hit.face.bounding_box, 99.0)],
                                   model_version=MODEL)

        secrets = (vector_bytes(device.store.get_face_vector("door", ann)), b"ann-badge-4711", b"user-ann-0001")
        for needle in secrets:  # the scan sees them while they are enrolled
            assert files_holding(device.state_dir, needle)
        assert (device.state_dir / "sync").stat().st_mode & 0o777 == 0o700  # downloads wait in there
        feed = central.state_dir / "feed.sqlite3"
        assert not feed.exists() or feed.stat().st_mode & 0o077 == 0  # the central's published feed

        admin.disassociate_faces(CollectionId="door", UserId="user-ann-0001", FaceIds=[ann])
        admin.delete_user(CollectionId="door", UserId="user-ann-0001")
        admin.delete_faces(CollectionId="door", FaceIds=[ann])
        assert device.sync()["door"]["error"] is None
        assert device.external_ids("door") == ["bob"]
        assert device.store.list_users("door")[0] == []
        assert [h.face.face_id for h in device.store.search("door", _colour("ann"), model_version=MODEL, k=5)] == [bob]
        for needle in secrets:
            assert files_holding(device.state_dir, needle) == []
    finally:
        device.close()


def _resigned(body: bytes, signer: CryptoSigner, *, expires: datetime | None = None) -> bytes:
    """Timestamp metadata one version ahead of `body`, signed by `signer` (and only by it)."""
    md = Metadata[Timestamp].from_bytes(body)
    md.signed.version += 1
    if expires is not None:
        md.signed.expires = expires
    md.signatures.clear()
    md.sign(signer)
    return md.to_bytes(JSONSerializer(compact=True))


def _flip(body: bytes) -> bytes:
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1:]


@pytest.fixture
def synced(central: Central, tmp_path: Path) -> Iterator[Device]:
    """A device in sync (in two rounds) with a collection of two faces; the central has since enrolled a third."""
    central.client().create_collection(CollectionId="door")
    central.enrol("door", "ann")
    device = _device(central, tmp_path)
    assert device.sync()["door"]["error"] is None
    central.enrol("door", "bob")
    assert device.sync()["door"]["error"] is None  # the first round's metadata is now outdated
    central.enrol("door", "cyd")
    yield device
    device.close()


def _batch(url: str) -> bool:
    return "/targets/" in url and ".batch-" in url


ATTACKS: dict[str, tuple[Callable[[Device], Tamper], str]] = {
    "flipped byte": (lambda d: lambda url, body: _flip(body) if _batch(url) else body, "hash"),
    "truncated batch": (lambda d: lambda url, body: body[:-7] if _batch(url) else body, "hash"),
    "endless data": (lambda d: lambda url, body: body + b"\0" * 4096 if _batch(url) else body, "length"),
    # TUF refuses a longer replayed bundle as too long and a shorter one by its hash: which one it is
    # depends on the sizes of two random batches.
    "old bundle replayed": (lambda d: lambda url, body: (
        next(b for u, b in d.wire.seen.items() if "/targets/" in u) if _batch(url) else body), "length|hash"),
    "metadata rolled back": (lambda d: lambda url, body: (
        next(b for u, b in d.wire.seen.items() if u.endswith("/timestamp.json")) if url.endswith("/timestamp.json")
        else body), "rollback"),
    "snapshot mixed and matched": (lambda d: lambda url, body: (
        next(b for u, b in d.wire.seen.items() if u.endswith(".snapshot.json")) if url.endswith(".snapshot.json")
        else body), "hash"),
    "signed with another key": (lambda d: lambda url, body: (
        _resigned(body, CryptoSigner.generate_ed25519()) if url.endswith("/timestamp.json") else body), "signature"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_tampered_feed_is_refused_and_the_last_good_state_served(synced: Device, attack: str) -> None:
    make_tamper, reasons = ATTACKS[attack]
    before = (synced.external_ids("door"), synced.store.sync_states()["door"].applied_seq)
    synced.wire.tamper = make_tamper(synced)
    status = synced.sync()["door"]
    reason = status["error"]["reason"]
    assert reason in reasons.split("|"), status
    assert (synced.external_ids("door"), synced.store.sync_states()["door"].applied_seq) == before
    assert synced.store.search("door", _colour("bob"), model_version=MODEL, k=1)[0].similarity > 0.99
    assert synced.syncer.failures() == {("door", reason): 1}

    synced.wire.tamper = None  # the genuine feed still applies afterwards
    assert synced.sync()["door"]["error"] is None
    assert synced.external_ids("door") == ["ann", "bob", "cyd"]


def test_stale_feed_signed_by_the_central_is_refused_as_frozen(synced: Device, central: Central) -> None:
    online = load_signer(central.state_dir / "feed-keys" / ONLINE_KEY)
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    synced.wire.tamper = lambda url, body: _resigned(body, online, expires=past) if url.endswith(
        "/timestamp.json") else body
    assert synced.sync()["door"]["error"]["reason"] == "expired"
    assert synced.external_ids("door") == ["ann", "bob"]


def test_rotated_online_key_reaches_devices_and_the_old_key_is_refused(synced: Device, central: Central,
                                                                       tmp_path: Path) -> None:
    keys = central.state_dir / "feed-keys"
    old = load_signer(keys / ONLINE_KEY)
    (keys / ROOT_KEY).rename(tmp_path / ROOT_KEY)  # kept offline: the central publishes without it
    central.enrol("door", "dee")
    assert synced.sync()["door"]["error"] is None
    assert central.cli("rotate-key") == 1  # but rotating needs it
    (tmp_path / ROOT_KEY).rename(keys / ROOT_KEY)
    assert central.cli("rotate-key") == 0
    assert synced.sync()["door"]["error"] is None  # follows the root chain, no re-provisioning
    assert synced.external_ids("door") == ["ann", "bob", "cyd", "dee"]
    assert (synced.state_dir / "sync" / "door" / "metadata" / "root_history" / "2.root.json").is_file()
    central.enrol("door", "ann", "ann-again")
    synced.wire.tamper = lambda url, body: _resigned(body, old) if url.endswith("/timestamp.json") else body
    assert synced.sync()["door"]["error"]["reason"] == "signature"
    assert synced.external_ids("door") == ["ann", "bob", "cyd", "dee"]


def test_other_face_model_is_refused(central: Central, tmp_path: Path) -> None:
    central.client().create_collection(CollectionId="door")
    central.enrol("door", "ann")
    device = _device(central, tmp_path, model="another-model-2.0")
    try:
        assert device.sync()["door"]["error"]["reason"] == "model"
        assert device.store.sync_states() == {}
    finally:
        device.close()


def test_device_keys_are_scoped_and_revoked_one_by_one(central: Central, tmp_path: Path) -> None:
    admin = central.client()
    for cid in ("door", "lobby"):
        admin.create_collection(CollectionId=cid)
        central.enrol(cid, "ann")
    door = _device(central, tmp_path, "door-1")
    other = _device(central, tmp_path, "door-2")
    try:
        url = f"{central.url}/sync/v1/lobby/metadata/timestamp.json"
        reply = urllib3.request("GET", url, headers=door.wire.signed_headers("GET", url))
        assert reply.status == 403 and b"may not read lobby" in reply.data
        assert central.cli("revoke-device", "door-1") == 0
        assert door.sync()["door"]["error"]["reason"] == "unauthorized"
        assert other.sync()["door"]["error"] is None
    finally:
        door.close()
        other.close()


def test_central_behind_the_device_is_refused(synced: Device) -> None:
    state = synced.store.sync_states()["door"]
    synced.store.apply_feed(FeedUpdate(
        "door", state.source, state.source_uid, "arn", MODEL, 3, snapshot=False,
        changes=FeedSlice(state.applied_seq, state.applied_seq + 1000, [], np.zeros((0, 3), np.float32), [], [], []),
        valid_until=state.valid_until, head_seq=state.head_seq))
    assert synced.sync()["door"]["error"]["reason"] == "backwards"
    assert synced.external_ids("door") == ["ann", "bob"]


def test_batches_apply_once_and_in_order(synced: Device) -> None:
    state = synced.store.sync_states()["door"]
    empty = FeedSlice(state.applied_seq + 5, state.applied_seq + 6, [], np.zeros((0, 3), np.float32), [], [], [])
    update = FeedUpdate("door", state.source, state.source_uid, "arn", MODEL, 3, snapshot=False, changes=empty,
                        valid_until=state.valid_until, head_seq=state.head_seq)
    with pytest.raises(FeedOutOfOrder):  # a gap
        synced.store.apply_feed(update)
    assert synced.sync()["door"]["error"] is None
    assert synced.sync()["door"]["error"] is None  # nothing new: nothing changes
    assert synced.external_ids("door") == ["ann", "bob", "cyd"]


def test_expired_copy_stops_matching_until_it_syncs(synced: Device) -> None:
    head = synced.store.sync_states()["door"].head_seq
    synced.store.note_sync("door", valid_until=time.time() - 1, head_seq=head)
    with pytest.raises(CollectionStale):
        synced.store.search("door", _colour("ann"), model_version=MODEL, k=1)
    assert synced.sync()["door"]["serving"]
    assert synced.store.search("door", _colour("ann"), model_version=MODEL, k=1)


def test_late_and_lagging_devices_start_from_a_snapshot_without_deleted_faces(any_central: Central,
                                                                              tmp_path: Path) -> None:
    central = any_central
    admin = central.client()
    admin.create_collection(CollectionId="door")
    ann = central.enrol("door", "ann", "ann-badge-4711")
    lagging = _device(central, tmp_path, "door-1")
    try:
        assert lagging.sync()["door"]["error"] is None
        central.enrol("door", "bob")
        admin.delete_faces(CollectionId="door", FaceIds=[ann])  # a deletion recuts the snapshot
        central.enrol("door", "cyd")
        assert lagging.sync()["door"]["error"] is None
        assert lagging.external_ids("door") == ["bob", "cyd"]
        assert files_holding(lagging.state_dir, b"ann-badge-4711") == []
        feed = central.state_dir / "feed.sqlite3"
        if feed.exists():  # no published file keeps what the central deleted
            assert files_holding(central.state_dir, b"ann-badge-4711") == []
    finally:
        lagging.close()
    late = _device(central, tmp_path, "door-2")
    try:
        assert late.sync()["door"]["error"] is None
        assert late.external_ids("door") == ["bob", "cyd"]
    finally:
        late.close()


def test_collection_deleted_at_the_central_is_deleted_on_the_device(synced: Device, central: Central) -> None:
    vector = vector_bytes(synced.store.get_face_vector("door", synced.store.list_faces("door")[0][0].face_id))
    central.client().delete_collection(CollectionId="door")
    assert synced.sync()["door"]["error"] is None
    assert synced.store.sync_states() == {}
    with pytest.raises(CollectionNotFound):
        synced.store.get_collection("door")
    assert files_holding(synced.state_dir, vector) == []


def test_local_collections_stay_writable_beside_synced_ones(synced: Device) -> None:
    synced.store.create_collection("local", face_model_version=MODEL, dim=3, arn="arn:local")
    synced.store.add_faces("local", [NewFace(_colour("dee"), "i", BoundingBox(0.1, 0.1, 0.1, 0.1), 99.0)],
                           model_version=MODEL)
    assert synced.store.face_count("local") == 1


def test_batches_outgrowing_the_snapshot_are_compacted_into_a_new_one(tmp_path: Path) -> None:
    with running_central(tmp_path / "central", compact_min_bytes=0) as central:
        central.client().create_collection(CollectionId="door")
        central.enrol("door", "ann")
        current, lagging = _device(central, tmp_path, "door-1"), _device(central, tmp_path, "door-2")
        try:
            for device in (current, lagging):
                assert device.sync()["door"]["error"] is None
            for person in ("bob", "cyd", "dee", "bob", "cyd"):
                central.enrol("door", person, f"{person}-{len(current.external_ids('door'))}")
                assert current.sync()["door"]["error"] is None
            storage = SqliteFeedStorage(central.state_dir / "feed.sqlite3")
            targets = Metadata[Targets].from_bytes(storage.metadata("door", "targets", None) or b"").signed
            storage.close()
            assert len([name for name in targets.targets if name.startswith("batch-")]) < 5  # compacted
            assert targets.targets["snapshot"].custom["seq"] > 1
            assert lagging.sync()["door"]["error"] is None  # behind the compaction: from the new snapshot
            assert lagging.external_ids("door") == current.external_ids("door")
            assert len(current.external_ids("door")) == 6
        finally:
            current.close()
            lagging.close()


def test_a_joining_device_takes_the_graph_the_central_built(tmp_path: Path) -> None:
    with running_central(tmp_path / "central", ship_index_min_faces=3) as central:
        central.client().create_collection(CollectionId="door")
        faces = {person: central.enrol("door", person) for person in ("ann", "bob", "cyd", "dee")}
        first = _device(central, tmp_path, "door-1", exact_max=0)
        try:
            assert first.sync()["door"]["error"] is None  # cuts the snapshot; its graph is built behind
            storage = SqliteFeedStorage(central.state_dir / "feed.sqlite3")
            deadline = time.monotonic() + 30
            while b'"index"' not in (storage.metadata("door", "targets", None) or b""):
                assert time.monotonic() < deadline, "the central did not ship the index"
                time.sleep(0.05)
            storage.close()
        finally:
            first.close()
        second = _device(central, tmp_path, "door-2", exact_max=0)
        try:  # a local collection first, so the copy's labels do not start where the central's do
            second.store.create_collection("local", face_model_version=MODEL, dim=3, arn="arn:local")
            second.store.add_faces("local", [NewFace(_colour("ann"), "i", BoundingBox(0.1, 0.1, 0.1, 0.1), 99.0)] * 5,
                                   model_version=MODEL)
            assert second.sync()["door"]["error"] is None
            assert second.store.index_kind("door") == "hnsw"  # at once: nothing was built on the device
            for person, face_id in faces.items():
                assert second.store.search("door", _colour(person), model_version=MODEL, k=1)[0].face.face_id == face_id
        finally:
            second.close()


def test_a_deleted_user_the_change_log_no_longer_names_is_deleted_on_devices(synced: Device,
                                                                            central: Central) -> None:
    admin = central.client()
    face = synced.store.list_faces("door")[0][0].face_id
    admin.create_user(CollectionId="door", UserId="user-erased-0001")
    admin.associate_faces(CollectionId="door", UserId="user-erased-0001", FaceIds=[face])
    assert synced.sync()["door"]["error"] is None
    assert synced.store.get_face("door", face).user_id == "user-erased-0001"
    admin.delete_user(CollectionId="door", UserId="user-erased-0001")
    with sqlite3.connect(central.state_dir / "store.sqlite3") as conn:  # erasure: the log names nobody
        conn.execute("DELETE FROM changes WHERE user_id = 'user-erased-0001'")
        conn.execute("UPDATE changes SET object_id = '' WHERE kind IN ('user_created', 'user_deleted')")
    assert synced.sync()["door"]["error"] is None
    assert synced.store.list_users("door")[0] == []
    assert synced.store.get_face("door", face).user_id is None
    assert files_holding(synced.state_dir, b"user-erased-0001") == []
