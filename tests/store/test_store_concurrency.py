"""Searches in parallel with enrolment, deletion and background checkpoints (index swaps included)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from store_support import DIM, MODEL, OpenStore

from bench.synthetic import SyntheticFaces, new_faces
from edge.store import Store
from edge.store.index import ExactIndex, HnswIndex

JOIN_TIMEOUT_S = 120
SYN = SyntheticFaces(DIM, 1000, seed=9)


def _hammer(searchers: list[Callable[[], None]], writers: list[tuple[Callable[[], None], int]]) -> list[BaseException]:
    """Run each writer its number of times while the searchers loop; return what any of them raised.

    Counts, not durations, so that a slow or busy machine does the same work, only later.
    """
    stop, errors = threading.Event(), []

    def loop(work: Callable[[], None], times: int | None) -> None:
        try:
            done = 0
            while not stop.is_set() and (times is None or done < times):
                work()
                done += 1
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)
            stop.set()

    writing = [threading.Thread(target=loop, args=(work, times)) for work, times in writers]
    searching = [threading.Thread(target=loop, args=(work, None)) for work in searchers]
    for thread in writing + searching:
        thread.start()
    for thread in writing:
        thread.join(timeout=JOIN_TIMEOUT_S)
    stop.set()
    for thread in searching:
        thread.join(timeout=JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in writing + searching), "deadlock"
    return errors


@pytest.mark.parametrize(("adds", "deletes"), [(60, 60), (0, 150)], ids=["enrolling", "shrinking"])
def test_parallel_search_add_delete_stay_consistent(open_store: OpenStore, adds: int, deletes: int) -> None:
    # Frequent checkpoints: saves, scrub-and-reload and (when deletes outpace the inserts that reuse
    # their slots) compaction all swap the index under running searches.
    store = open_store(exact_max=0, checkpoint_interval_s=0.2, compact_ratio=0.02)
    store.create_collection("c", face_model_version=MODEL, dim=DIM, arn="arn:c")
    preload = SYN.sample(np.repeat(np.arange(1000), 3), stream=0)
    faces = store.add_faces("c", new_faces(preload), model_version=MODEL)
    stable = {f.face_id: v for f, v in zip(faces[:2000], preload[:2000], strict=True)}
    doomed = [(f.face_id, v) for f, v in zip(faces[2000:], preload[2000:], strict=True)]
    added: dict[str, np.ndarray] = {}
    deleted: list[str] = []
    lock = threading.Lock()
    rng_lock, rng = threading.Lock(), np.random.default_rng(0)
    stable_ids = list(stable)

    def search() -> None:
        with rng_lock:
            face_id = stable_ids[int(rng.integers(len(stable_ids)))]
        hits = store.search("c", stable[face_id], model_version=MODEL, k=5)
        assert hits[0].face.face_id == face_id
        assert all(a.similarity >= b.similarity for a, b in itertools.pairwise(hits))
        for hit in hits:
            if hit.face.face_id in stable:
                assert abs(hit.similarity - float(stable[hit.face.face_id] @ stable[face_id])) < 1e-4

    def add() -> None:
        with rng_lock:
            identities, stream = rng.integers(0, 1000, int(rng.integers(1, 6))), int(rng.integers(1, 1 << 30))
        vectors = SYN.sample(identities, stream)
        for face, vector in zip(store.add_faces("c", new_faces(vectors), model_version=MODEL), vectors, strict=True):
            assert store.search("c", vector, model_version=MODEL, k=1)[0].face.face_id == face.face_id
            with lock:
                added[face.face_id] = vector

    def delete() -> None:
        with lock:
            if not doomed:
                return
            face_id, vector = doomed.pop()
        assert store.delete_faces("c", [face_id]).deleted == [face_id]
        deleted.append(face_id)
        assert face_id not in {h.face.face_id for h in store.search("c", vector, model_version=MODEL, k=10)}

    errors = _hammer([search, search, search], [(delete, deletes), (add, adds), (add, adds)])
    assert not errors, errors
    assert len(added) >= 2 * adds and len(deleted) == deletes

    alive = {**stable, **added}
    assert store.face_count("c") == len(alive) + len(doomed)
    for face_id, vector in alive.items():
        assert store.search("c", vector, model_version=MODEL, k=1)[0].face.face_id == face_id
    assert not set(deleted) & {f.face_id for f in store.list_faces("c", limit=100_000)[0]}
    _assert_agrees_with_exact_oracle(store, {**alive, **dict(doomed)})


def _assert_agrees_with_exact_oracle(store: Store, vectors: dict[str, np.ndarray]) -> None:
    ids = list(vectors)
    oracle = ExactIndex(DIM)
    oracle.add(np.arange(len(ids), dtype=np.int64), np.stack(list(vectors.values())))
    queries = SYN.sample(np.arange(0, 1000, 2), stream=12345)
    agree = sum(
        store.search("c", query, model_version=MODEL, k=1)[0].face.face_id == ids[int(oracle.search(query, 1)[0][0])]
        for query in queries
    )
    assert agree / len(queries) >= 0.99


def test_promotion_to_hnsw_is_built_without_holding_writes(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The add that outgrows exact search starts the HNSW build; other writes and searches go on meanwhile
    (against the exact index), and what they changed is in the index that takes over."""
    store = open_store(exact_max=300)
    store.create_collection("c", face_model_version=MODEL, dim=DIM, arn="arn:c")
    first = SYN.sample(np.arange(300), stream=20)
    ids = [f.face_id for f in store.add_faces("c", new_faces(first), model_version=MODEL)]
    build, building, written = HnswIndex.build, threading.Event(), threading.Event()

    def held_build(*args: Any) -> HnswIndex:
        building.set()
        written.wait(JOIN_TIMEOUT_S)  # released by the test's write; the timeout only guards a deadlock
        return build(*args)

    monkeypatch.setattr(HnswIndex, "build", held_build)
    trigger = SYN.sample(np.arange(300, 310), stream=21)
    promoted: list[str] = []
    promoter = threading.Thread(target=lambda: promoted.extend(
        f.face_id for f in store.add_faces("c", new_faces(trigger), model_version=MODEL)))
    promoter.start()
    assert building.wait(JOIN_TIMEOUT_S)

    during = SYN.sample(np.arange(310, 330), stream=22)
    late: list[str] = []
    writer = threading.Thread(target=lambda: late.extend(
        f.face_id for f in store.add_faces("c", new_faces(during), model_version=MODEL)))
    writer.start()
    writer.join(JOIN_TIMEOUT_S)
    write_finished_during_build = not writer.is_alive() and promoter.is_alive()
    deleted = store.delete_faces("c", ids[:5]).deleted if write_finished_during_build else []
    top1_during = [store.search("c", v, model_version=MODEL, k=1)[0].face.face_id for v in during]
    written.set()
    promoter.join(JOIN_TIMEOUT_S)
    writer.join(JOIN_TIMEOUT_S)
    assert write_finished_during_build, "a write waited for the HNSW build"
    assert deleted == ids[:5] and top1_during == late

    assert isinstance(store._collections["c"].index, HnswIndex)
    assert store.face_count("c") == len(store._collections["c"].index) == 325
    everything = {**dict(zip(ids[5:], first[5:], strict=True)), **dict(zip(promoted, trigger, strict=True)),
                  **dict(zip(late, during, strict=True))}
    for face_id, vector in everything.items():
        assert store.search("c", vector, model_version=MODEL, k=1)[0].face.face_id == face_id
    gone = {h.face.face_id for v in first[:5] for h in store.search("c", v, model_version=MODEL, k=10)}
    assert not gone & set(ids[:5])
