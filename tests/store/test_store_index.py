"""Vector indexes on their own: HNSW against the exact oracle, growth, deletes, verified files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from store_support import DIM, saved_graph

from bench.synthetic import SyntheticFaces
from edge.store import index as index_module
from edge.store.errors import IndexInvalid
from edge.store.index import INDEX_FILE, MANIFEST_FILE, ExactIndex, HnswIndex, HnswParams, auto_ef
from edge.store.models import CollectionRecord

PARAMS = HnswParams()
RECORD = CollectionRecord("c", "arn:c", "m1", DIM, 0.0, "uid-1")


def _labels(n: int, start: int = 1) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """20k faces (4k identities x 5) and 2k fresh query samples of indexed identities."""
    syn = SyntheticFaces(DIM, 4000, seed=7)
    data = syn.sample(np.repeat(np.arange(4000), 5), stream=0)
    queries = syn.sample(np.random.default_rng(1).integers(0, 4000, 2000), stream=1)
    return data, queries


@pytest.fixture(scope="module")
def built(clustered: tuple[np.ndarray, np.ndarray]) -> HnswIndex:
    data, _ = clustered
    return HnswIndex.build(DIM, PARAMS, _labels(len(data)), data)


def test_hnsw_recall_at_1_against_exact_oracle(clustered: tuple[np.ndarray, np.ndarray], built: HnswIndex) -> None:
    data, queries = clustered
    exact = ExactIndex(DIM)
    exact.add(_labels(len(data)), data)
    truth = _labels(len(data))[np.argmax(queries @ data.T, axis=1)]
    assert all(exact.search(query, 1)[0][0] == want for query, want in zip(queries[:200], truth, strict=False))
    got = np.array([built.search(query, 1)[0][0] for query in queries])
    assert np.mean(got == truth) >= 0.995


def test_exact_index_keeps_rows_packed_and_forgets_removed_vectors() -> None:
    vectors = SyntheticFaces(DIM, 10, seed=1).sample(np.arange(10), stream=0)
    exact = ExactIndex(DIM)
    exact.add(_labels(10), vectors)
    exact.remove(np.array([3, 10]))
    labels, stored = exact.items()
    assert sorted(labels.tolist()) == [1, 2, 4, 5, 6, 7, 8, 9]
    assert not any(np.array_equal(row, vectors[2]) for row in stored)
    found, scores = exact.search(vectors[2], 10)
    assert 3 not in found and len(found) == 8 and np.all(np.diff(scores) <= 0)


def test_hnsw_grows_geometrically_and_keeps_deleted_slots_until_rebuilt() -> None:
    syn = SyntheticFaces(DIM, 300, seed=2)
    index = HnswIndex.build(DIM, PARAMS, _labels(10), syn.sample(np.arange(10), stream=0))
    index.add(_labels(190, start=11), syn.sample(np.arange(10, 200), stream=0))
    assert len(index) == index.element_count == 200
    index.remove(_labels(50))
    assert (len(index), index.deleted) == (150, 50)
    fresh = syn.sample(np.arange(200, 230), stream=0)
    index.add(_labels(30, start=1000), fresh)
    assert (len(index), index.deleted, index.element_count) == (180, 50, 230)
    for i, vector in enumerate(fresh):
        assert index.search(vector, 1)[0][0] == 1000 + i
    assert not set(index.search(syn.sample(np.arange(50), stream=0)[0], 20)[0].tolist()) & set(range(1, 51))


def _saved(tmp_path: Path) -> tuple[Path, np.ndarray, HnswIndex]:
    vectors = SyntheticFaces(DIM, 100, seed=3).sample(np.repeat(np.arange(100), 3), stream=0)
    index = HnswIndex.build(DIM, PARAMS, _labels(300), vectors)
    index.remove(_labels(5))
    index.save(tmp_path, RECORD, change_seq=42)
    return tmp_path, vectors, index


def test_save_load_round_trip_keeps_no_deleted_vector_in_the_file(tmp_path: Path) -> None:
    directory, vectors, index = _saved(tmp_path)
    loaded, manifest = HnswIndex.load(directory, RECORD, PARAMS)
    assert (manifest.change_seq, manifest.element_count, manifest.deleted_count) == (42, 300, 5)
    assert (manifest.dim, manifest.space, manifest.face_model_version) == (DIM, "ip", "m1")
    assert len(loaded) == 295
    for label in range(6, 301, 7):
        assert loaded.search(vectors[label - 1], 1)[0][0] == index.search(vectors[label - 1], 1)[0][0] == label
    content = (directory / INDEX_FILE).read_bytes()
    assert all(vectors[i].tobytes() not in content for i in range(5))
    assert all(vectors[i].tobytes() in content for i in range(5, 300))
    # The deleted slots hold stand-ins, copies of surviving faces: every vector in the file is one of theirs.
    records, _, columns = saved_graph(directory / INDEX_FILE, DIM)
    assert {row.tobytes() for row in records[:, columns]} == {v.tobytes() for v in vectors[5:]}
    del records
    assert sorted(p.name for p in directory.iterdir()) == [INDEX_FILE, MANIFEST_FILE]


def _truncate(directory: Path) -> None:
    path = directory / INDEX_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(directory: Path) -> None:
    path = directory / INDEX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(**changes: object) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


def _foreign_file_with_forged_sha(directory: Path) -> None:
    """A valid hnswlib file of another dimension, with a manifest re-signed to match it."""
    other = HnswIndex.build(64, PARAMS, _labels(300), SyntheticFaces(64, 300, seed=4).sample(np.arange(300), 0))
    sha = other.save(directory / "other", CollectionRecord("c", "arn", "m1", 64, 0.0, "uid-1"), 42).sha256
    os.replace(directory / "other" / INDEX_FILE, directory / INDEX_FILE)
    _edit_manifest(sha256=sha)(directory)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "sha256"),
        (_flip_byte, "sha256"),
        (lambda d: (d / MANIFEST_FILE).unlink(), "sha256"),
        (lambda d: (d / INDEX_FILE).unlink(), "no saved index"),
        (_edit_manifest(dim=64), "dim"),
        (_edit_manifest(space="l2"), "space"),
        (_edit_manifest(face_model_version="m2"), "face_model_version"),
        (_edit_manifest(collection_uid="uid-other"), "collection_uid"),
        (_edit_manifest(element_count=301), "layout"),
        (_foreign_file_with_forged_sha, "layout"),
    ],
    ids=["truncated", "flipped", "no-manifest", "no-index", "dim", "space", "model", "uid", "count", "foreign"],
)
def test_damaged_index_is_refused(tmp_path: Path, damage: object, reason: str) -> None:
    directory, _, _ = _saved(tmp_path)
    damage(directory)  # type: ignore[operator]
    with pytest.raises(IndexInvalid, match=reason):
        HnswIndex.load(directory, RECORD, PARAMS)


def test_crash_between_the_two_renames_rolls_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory, vectors, index = _saved(tmp_path)
    index.add(_labels(1, start=999), vectors[:1])
    real_replace = os.replace

    class Killed(Exception):
        pass

    def crash_on_manifest(src: Path, dst: Path) -> None:
        if Path(dst).name == MANIFEST_FILE:
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(Killed):
        index.save(directory, RECORD, change_seq=43)
    monkeypatch.setattr(os, "replace", real_replace)
    loaded, manifest = HnswIndex.load(directory, RECORD, PARAMS)
    assert (manifest.change_seq, len(loaded)) == (43, 296)
    assert sorted(p.name for p in directory.iterdir()) == [INDEX_FILE, MANIFEST_FILE]


def test_auto_ef_never_narrows_as_a_collection_grows() -> None:
    sizes = [0, 1, 20_000, 100_000, 100_001, 300_000, 1_000_000, 1_000_001, 10**9]
    efs = [auto_ef(n) for n in sizes]
    assert efs == sorted(efs) and efs[0] >= 16 and efs[-1] > efs[sizes.index(1_000_000)] > efs[0]
    assert auto_ef(1_000_000) == 125  # recall@1 0.998 at 1M x 128, 0.997 at 1M x 512 projected (README)


def test_search_breadth_follows_the_graph_unless_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # sqrt(50) / 0.25 = 29 is under the floor of 32; sqrt(150) / 0.25 = 49.
    monkeypatch.setattr(index_module, "EF_SQRT_DIVISOR", 0.25)
    syn = SyntheticFaces(DIM, 300, seed=5)
    grown = HnswIndex.build(DIM, PARAMS, _labels(50), syn.sample(np.arange(50), stream=0))
    fixed = HnswIndex.build(DIM, HnswParams(ef=40), _labels(50), syn.sample(np.arange(50), stream=0))
    assert (grown.ef, fixed.ef) == (32, 40)
    for index in (grown, fixed):
        index.add(_labels(100, start=51), syn.sample(np.arange(50, 150), stream=0))
    assert (grown.ef, fixed.ef) == (49, 40)
    grown.remove(_labels(60))  # deleted slots are still walked: the breadth follows the graph, not the faces
    assert grown.ef == 49
    grown.add(_labels(100, start=1000), syn.sample(np.arange(150, 250), stream=0))
    assert grown.element_count == 250 and grown.ef == 64  # sqrt(250) / 0.25 = 63.2: deleted slots count
    grown.save(tmp_path, RECORD, change_seq=1)
    assert HnswIndex.load(tmp_path, RECORD, PARAMS)[0].ef == 64


def test_deleted_faces_still_lead_the_search_after_a_checkpoint(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]
) -> None:
    """A checkpoint takes deleted faces' vectors out of the graph's file, but not their place in its paths: the
    faces reached through them are found as before, and enrolments after it as well as any."""
    data, queries = clustered
    vectors = dict(zip(_labels(len(data)).tolist(), data, strict=True))
    index = HnswIndex.build(DIM, PARAMS, _labels(len(data)), data)
    rng, syn, label = np.random.default_rng(3), SyntheticFaces(DIM, 4000, seed=7), 100_000
    for stream in (2, 3):  # a fifth deleted (the compaction ratio is a quarter), then as many enrolled
        doomed = rng.choice(sorted(vectors), len(vectors) // 5, replace=False)
        index.remove(doomed)
        for gone in doomed.tolist():
            del vectors[gone]
        index.save(tmp_path, RECORD, change_seq=stream)
        index, _ = HnswIndex.load(tmp_path, RECORD, PARAMS)
        enrolled = syn.sample(rng.integers(0, 4000, len(doomed)), stream=stream)
        index.add(_labels(len(doomed), start=label), enrolled)
        vectors.update(zip(_labels(len(doomed), start=label).tolist(), enrolled, strict=True))
        label += len(doomed)
    labels, stored = np.asarray(list(vectors)), np.stack(list(vectors.values()))
    truth = labels[np.argmax(queries @ stored.T, axis=1)]
    recall = np.mean([index.search(query, 1)[0][0] == want for query, want in zip(queries, truth, strict=True)])
    lost = sum(index.search(vector, 1)[0][0] != face for face, vector in vectors.items())
    assert recall >= 0.995 and lost <= len(vectors) // 5000
