"""Two central instances on one PostgreSQL: concurrent enrolment, one sequence, one truth, one feed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fakes import photo
from sync_support import Central, open_device, provision, running_central

from edge.sync.applier import Syncer

PER_THREAD = 8


def _enrol_many(central: Central, person: str, thread: int, face_ids: list[str]) -> None:
    client = central.client()  # boto3 clients are safe to share between threads
    for i in range(PER_THREAD):
        image = photo((person, 20 + 9 * i, 20 + 7 * thread, 150))
        reply = client.index_faces(CollectionId="door", Image={"Bytes": image},
                                   ExternalImageId=f"{person}-{thread}-{i}")
        face_ids.extend(record["Face"]["FaceId"] for record in reply["FaceRecords"])


def _faces(central: Central) -> set[str]:
    return {face["FaceId"] for face in central.client().list_faces(CollectionId="door", MaxResults=4096)["Faces"]}


def test_two_centrals_enrolling_at_once_share_one_sequence_and_one_truth(tmp_path: Path, pg_dsn: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    shared: dict[str, Any] = {"keys_dir": tmp_path / "feed-keys", "devices_file": tmp_path / "devices.json"}
    for key, value in {"FEED__KEYS_DIR": shared["keys_dir"], "FEED__DEVICES_FILE": shared["devices_file"],
                       "STORE__BACKEND": "postgres", "STORE__POSTGRES_DSN": pg_dsn}.items():
        monkeypatch.setenv(f"EDGE_FACE_{key}", str(value))  # what `edge-face central` reads on these machines
    with running_central(tmp_path / "a", dsn=pg_dsn, **shared) as a, \
            running_central(tmp_path / "b", dsn=pg_dsn, **shared) as b:
        a.client().create_collection(CollectionId="door")
        enrolled: dict[str, list[str]] = {"a": [], "b": []}
        threads = [threading.Thread(target=_enrol_many, args=(central, person, t, enrolled[name]))
                   for name, central, person in (("a", a, "ann"), ("b", b, "bob")) for t in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        everything = set(enrolled["a"]) | set(enrolled["b"])
        assert len(everything) == 4 * PER_THREAD  # no write lost
        assert _faces(a) == _faces(b) == everything  # and both instances list the same faces
        for central in (a, b):
            assert central.client().describe_collection(CollectionId="door")["FaceCount"] == len(everything)
        with psycopg.connect(pg_dsn) as conn:
            seqs = [seq for (seq,) in conn.execute("SELECT seq FROM changes WHERE collection_id = 'door' ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))  # each sequence number handed out once, none skipped

        # each instance's own index follows what the other enrolled
        for central, person, other in ((a, "bob", "b"), (b, "ann", "a")):
            found = central.client().search_faces_by_image(CollectionId="door", MaxFaces=100,
                                                           Image={"Bytes": photo((person, 100, 100, 140))})
            assert {m["Face"]["FaceId"] for m in found["FaceMatches"]} == set(enrolled[other])

        # a face deleted through both at once is deleted once, and gone for both
        victim = enrolled["a"][0]
        answers: list[dict[str, Any]] = []
        deleters = [threading.Thread(target=lambda c=c: answers.append(
            c.client().delete_faces(CollectionId="door", FaceIds=[victim]))) for c in (a, b)]
        for thread in deleters:
            thread.start()
        for thread in deleters:
            thread.join()
        assert sorted(len(answer["DeletedFaces"]) for answer in answers) == [0, 1]
        assert victim not in _faces(a) | _faces(b)

        # one feed: a device follows either instance without noticing the switch
        device = open_device(tmp_path / "door-1", provision(a, tmp_path / "door-1", "door-1", ["door"]))
        try:
            assert device.sync()["door"]["error"] is None
            b.enrol("door", "cyd", "cyd-at-b")
            via_b = Syncer(device.store, device.settings.model_copy(update={"central_url": b.url}),
                           device.state_dir, "fake-1.0", fetcher=device.wire)
            assert via_b.sync_all()["door"].reason is None
            assert len(device.external_ids("door")) == len(everything)  # minus the victim, plus cyd
            assert "cyd-at-b" in device.external_ids("door")
        finally:
            device.close()
