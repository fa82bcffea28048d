"""Collections of wide vectors (FaceNet's 512): walked in a graph of their projection, answered with the exact
cosines of the full vectors, saved, shipped and erased like any other."""

from __future__ import annotations

import json
import logging
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from store_support import MODEL, OpenStore, saved_graph

from bench.synthetic import SyntheticFaces, new_faces
from edge.store import Store
from edge.store.errors import IndexInvalid
from edge.store.index import (
    GRAPH_DIM,
    HNSWLIB_VERSION,
    INDEX_FILE,
    MANIFEST_FILE,
    ExactIndex,
    HnswIndex,
    HnswParams,
    Projection,
    projection_for,
)
from edge.store.models import BoundingBox, CollectionRecord, FaceRecord, FeedSlice, FeedUpdate, ShippedIndex
from edge.store.store import COLLECTIONS_DIR, RESCORED_EXTRA

WIDE = 512
PEOPLE = 600
SYN = SyntheticFaces(WIDE, PEOPLE, seed=11)
ENROLLED = SYN.sample(np.repeat(np.arange(PEOPLE), 5), stream=0)
QUERIES = SYN.sample(np.random.default_rng(3).integers(0, PEOPLE, 200), stream=1)


def _wide_store(open_store: OpenStore) -> tuple[Store, list[str]]:
    store = open_store(exact_max=0)
    store.create_collection("w", face_model_version=MODEL, dim=WIDE, arn="arn:w")
    ids = [f.face_id for f in store.add_faces("w", new_faces(ENROLLED), model_version=MODEL)]
    return store, ids


def _exact(query: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    exact = ExactIndex(WIDE)
    exact.add(np.arange(len(ENROLLED), dtype=np.int64), ENROLLED)
    rows, scores = exact.search(query, k)
    return rows.tolist(), scores


def _answers_exactly(store: Store, ids: list[str], k: int, min_similarity: float = -1.0) -> None:
    for query in QUERIES:
        hits = store.search("w", query, model_version=MODEL, k=k, min_similarity=min_similarity)
        rows, scores = _exact(query, k)
        wanted = [(ids[row], score) for row, score in zip(rows, scores, strict=True) if score >= min_similarity]
        assert [h.face.face_id for h in hits] == [face_id for face_id, _ in wanted]
        assert np.allclose([h.similarity for h in hits], [score for _, score in wanted], atol=1e-6)


def test_a_wide_collection_answers_as_an_exact_search_would(open_store: OpenStore) -> None:
    store, ids = _wide_store(open_store)
    assert store.index_kind("w") == "hnsw"
    _answers_exactly(store, ids, k=1)
    _answers_exactly(store, ids, k=5)
    # A threshold between a person's own faces and everyone else's, as FaceMatchThreshold puts it.
    _answers_exactly(store, ids, k=20, min_similarity=0.8)


def test_a_wide_collections_graph_is_saved_projected_and_loaded_again(open_store: OpenStore, state_dir: Path) -> None:
    store, ids = _wide_store(open_store)
    store.close()
    [manifest] = (state_dir / COLLECTIONS_DIR).glob(f"*/{MANIFEST_FILE}")
    fields = json.loads(manifest.read_text())
    assert (fields["format"], fields["projection"], "min_reader" in fields) == (2, Projection(WIDE).name, False)
    # A quarter of the width: 128 floats per face and its links, not 512.
    assert (manifest.parent / INDEX_FILE).stat().st_size < len(ENROLLED) * (WIDE * 4)
    reopened = open_store(exact_max=0)
    assert reopened.recovery["w"].kind == "loaded"
    _answers_exactly(reopened, ids, k=1)


def test_a_wide_graph_of_full_vectors_from_an_earlier_build_is_rebuilt(open_store: OpenStore, state_dir: Path) -> None:
    store, ids = _wide_store(open_store)
    store.close()
    [manifest] = (state_dir / COLLECTIONS_DIR).glob(f"*/{MANIFEST_FILE}")
    fields = json.loads(manifest.read_text())
    del fields["projection"]  # what a build from before projections wrote (over 512 floats a face)
    manifest.write_text(json.dumps(fields | {"format": 1}))
    reopened = open_store(exact_max=0)
    assert reopened.recovery["w"].kind == "rebuilt"
    _answers_exactly(reopened, ids, k=1)


@pytest.mark.sqlite_only
def test_a_deleted_wide_face_leaves_neither_vector_nor_projection_on_disk(open_store: OpenStore,
                                                                          state_dir: Path) -> None:
    store, ids = _wide_store(open_store)
    store.checkpoint()
    victims = [0, 7, 1500, len(ids) - 1]
    projected = projection_for(WIDE)
    assert projected is not None

    def holding(vector: np.ndarray) -> set[str]:
        """Files holding the vector's bytes, and graphs holding its projection (up to the last bits, which
        depend on how many vectors were projected at once)."""
        needle = vector.astype("<f4").tobytes()
        files = {p.name for p in state_dir.rglob("*") if p.is_file() and needle in p.read_bytes()}
        for graph in state_dir.rglob(INDEX_FILE):
            records, _, columns = saved_graph(graph, GRAPH_DIM)
            if np.any(np.all(np.abs(records[:, columns].view("<f4") - projected(vector)) < 1e-6, axis=1)):
                files.add(f"{INDEX_FILE} (projected)")
        return files

    assert holding(ENROLLED[0]) == {"store.sqlite3", f"{INDEX_FILE} (projected)"}  # the scan sees both forms
    store.delete_faces("w", [ids[i] for i in victims])
    store.checkpoint()
    for i in victims:
        assert holding(ENROLLED[i]) == set()
    assert holding(ENROLLED[1]) == {"store.sqlite3", f"{INDEX_FILE} (projected)"}


@pytest.mark.parametrize("claimed", ["right", "none"])
def test_a_synced_wide_copy_walks_a_shipped_graph_only_of_its_own_projection(
    open_store: OpenStore, claimed: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A central's graph is taken only when it says it holds this width's projection: one of another shape (a
    central of an earlier build ships none) is built again on the device, and searches answer exactly either way."""
    params = HnswParams()
    central = HnswIndex.build(WIDE, params, np.arange(len(ENROLLED), dtype=np.int64), ENROLLED)
    faces = [FaceRecord(f"face-{i:05d}", "w", "image", None, BoundingBox(0.2, 0.3, 0.4, 0.1), 99.0, MODEL, None, 0.0)
             for i in range(len(ENROLLED))]
    with tempfile.TemporaryDirectory() as scratch:
        shipped = ShippedIndex(central.raw_bytes(Path(scratch)), len(ENROLLED), params.m, params.ef_construction,
                               HNSWLIB_VERSION, central.projection if claimed == "right" else None)
    caplog.set_level(logging.INFO, logger="edge.store.store")
    store = open_store(exact_max=0)
    store.apply_feed(FeedUpdate("w", "http://central", "central-uid", "arn:w", MODEL, WIDE, snapshot=True,
                                changes=FeedSlice(0, 1, faces, ENROLLED, [], [], []), valid_until=4e9, head_seq=1,
                                index=shipped))
    refused = "built with other parameters; building one here" in caplog.text
    assert (store.index_kind("w") == "hnsw", refused) == ((True, False) if claimed == "right" else (False, True))
    _answers_exactly(store, [f.face_id for f in faces], k=1)


def test_a_shipped_wide_graph_is_walked_with_the_same_projection(tmp_path: Path) -> None:
    """A central builds the graph over its snapshot and a device loads it: both derive the same projection."""
    params = HnswParams()
    central = HnswIndex.build(WIDE, params, np.arange(len(ENROLLED), dtype=np.int64), ENROLLED)
    device = HnswIndex.relabelled(central.raw_bytes(tmp_path), WIDE, params, len(ENROLLED), 1000, tmp_path / "d")
    assert not device.exact_scores
    # Its candidates hold the exact nearest face, which the store's re-scoring then puts first.
    found = [_exact(query, 1)[0][0] + 1000 in device.search(query, 1 + RESCORED_EXTRA)[0] for query in QUERIES]
    assert np.mean(found) >= 0.99
    record = CollectionRecord("w", "arn:w", MODEL, WIDE, 0.0, "uid-w")
    central.save(tmp_path / "saved", record, change_seq=1)
    manifest = tmp_path / "saved" / MANIFEST_FILE
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"projection": "sha256-signs-512x64"}))
    with pytest.raises(IndexInvalid, match="projection"):
        HnswIndex.load(tmp_path / "saved", record, params)


@pytest.mark.sqlite_only
def test_rebuilding_a_graph_from_sqlite_holds_the_vectors_about_once(open_store: OpenStore, state_dir: Path) -> None:
    """A device rebuilds a graph at start-up when its file is unusable (an upgrade, a crash): the vectors are read
    from SQLite in slices and projected as they come, never all held at once (they were gathered as rows, joined
    and copied: three times their size, 6 GB at 1M x 512 faces)."""
    people = 4000
    wide = SyntheticFaces(WIDE, people, seed=12).sample(np.repeat(np.arange(people), 5), stream=0)
    store = open_store(exact_max=0)
    store.create_collection("w", face_model_version=MODEL, dim=WIDE, arn="arn:w")
    for start in range(0, len(wide), 5000):
        store.add_faces("w", new_faces(wide[start:start + 5000]), model_version=MODEL)
    store.close()
    for graph in (state_dir / COLLECTIONS_DIR).glob(f"*/{INDEX_FILE}"):
        graph.unlink()
    tracemalloc.start()
    try:
        reopened = open_store(exact_max=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reopened.recovery["w"].kind == "rebuilt"
    assert peak < wide.nbytes, f"peak {peak / 2**20:.0f} MiB for {wide.nbytes / 2**20:.0f} MiB of vectors"
    hits = reopened.search("w", wide[123], model_version=MODEL, k=1)
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-6)
