"""Per-collection vector indexes: an exact numpy scan and an hnswlib graph with verified, atomic files.

Both hold L2-normalised float32 vectors, so inner product is cosine similarity.  SQLite stays the
source of truth: an index file is a cache that is verified on load and rebuilt whenever in doubt.

Vectors wider than `GRAPH_DIM` are walked in the graph as their `Projection`, whose scores only rank
candidates: the store re-scores those with the full vectors it keeps (`VectorIndex.exact_scores`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import hnswlib
import numpy as np
import numpy.typing as npt

from edge.config import StoreSettings
from edge.files import fsync_path, replacing
from edge.store.errors import IndexInvalid, InvalidVector
from edge.store.formats import Stamp
from edge.store.models import CollectionRecord, Vector

Labels = npt.NDArray[np.int64]

SPACE = "ip"
#: The index files' format (`edge.store.formats`): this build reads up to version 2. A graph of full vectors
#: is written as version 1, as before; one of projected vectors as version 2, which earlier builds may not
#: read (they rebuild it from SQLite, as for any index they cannot use).
STAMP = Stamp(2, 1)
_FULL = Stamp(1, 1)
_PROJECTED = Stamp(2, 2)
INDEX_FILE = "index.bin"
MANIFEST_FILE = "index.json"
TMP_SUFFIX = ".tmp"
GROWTH = 1.5
"""Capacity grows geometrically so that enrolling n faces costs O(log n) resizes."""

HNSWLIB_VERSION = version("hnswlib")

# hnswlib 0.8.0 HierarchicalNSW::saveIndex header: offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData, maxlevel, enterpoint_node, maxM, maxM0, M, mult,
# ef_construction.  Each level-0 record is [link count:u16, flags:u8, pad:u8, links:u32*maxM0,
# vector:f32*dim, label:u64]; flag bit 0 marks a deleted element.
_HEADER = struct.Struct("<6QiI3QdQ")
_DELETE_MARK = 0x01
STAND_IN_CHUNK = 2048
"""Deleted elements given stand-ins at a time: their neighbours' vectors (2048 x 32 x 128 floats) take 32 MiB."""


GRAPH_DIM = 128
"""The widest vectors a graph holds as they are. A graph of FaceNet's 512-d vectors needed four times the search
breadth of 128-d ones for the same recall, and held 2 GB of vectors at 1M faces; one of their 128-d projection,
re-scored exactly, reaches that recall with a quarter of the memory and distance work (README, Speed)."""


class Projection:
    """A fixed random projection to `GRAPH_DIM` dimensions, re-normalised: inner products of the projected
    vectors estimate the cosines of the full ones (Johnson-Lindenstrauss), well enough to rank candidates.

    Its entries are +-1/sqrt(GRAPH_DIM) with signs taken from SHA-256 of a fixed text, so every build, machine
    and library version derives the same matrix: a graph shipped by a central is walked with the same one.
    """

    def __init__(self, dim: int) -> None:
        self.name = f"sha256-signs-{dim}x{GRAPH_DIM}"
        """What manifests and shipped graphs record, so that a graph is walked only with its own projection."""
        need = dim * GRAPH_DIM // 8
        digests = b"".join(
            hashlib.sha256(f"edge-face/{self.name}/{block}".encode()).digest() for block in range(-(-need // 32))
        )
        bits = np.unpackbits(np.frombuffer(digests[:need], dtype=np.uint8)).reshape(dim, GRAPH_DIM)
        self._matrix = ((bits.astype(np.float32) * 2 - 1) / np.sqrt(GRAPH_DIM)).astype(np.float32)

    def __call__(self, vectors: Vector) -> Vector:
        projected = np.atleast_2d(vectors) @ self._matrix
        norms = np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        return np.ascontiguousarray(projected / norms, dtype=np.float32)


@functools.cache
def projection_for(dim: int) -> Projection | None:
    """The projection a graph of `dim`-wide vectors is built over, derived once per width; None where it holds
    them as they are."""
    return Projection(dim) if dim > GRAPH_DIM else None


def projection_name(dim: int) -> str | None:
    """`Projection.name` of `projection_for(dim)`."""
    projection = projection_for(dim)
    return None if projection is None else projection.name


def graph_dim(dim: int) -> int:
    """The width of the vectors a graph over `dim`-wide faces holds (what its search breadth follows)."""
    return min(dim, GRAPH_DIM)


def normalize(vectors: npt.ArrayLike, dim: int) -> Vector:
    """Unit-length float32 rows of shape (n, dim); refuses what has no direction."""
    rows = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise InvalidVector(f"expected vectors of dimension {dim}, got shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InvalidVector("vectors must be finite and non-zero")
    return np.ascontiguousarray(rows / norms, dtype=np.float32)


class VectorIndex(Protocol):
    """What the store needs from an index; callers serialise mutations against searches."""

    @property
    def exact_scores(self) -> bool:
        """Whether `search`'s scores are the cosines themselves, or only rank candidates for re-scoring."""
        ...

    def __len__(self) -> int: ...

    def add(self, labels: Labels, vectors: Vector) -> None: ...

    def remove(self, labels: Labels) -> None: ...

    def search(self, query: Vector, k: int) -> tuple[Labels, npt.NDArray[np.float32]]: ...


class ExactIndex:
    """Brute-force cosine search: the oracle in tests, and fast enough for small collections.

    Rows stay packed (a removal moves the last row into the hole and zeroes the vacated row), so
    a deleted vector does not linger in memory.
    """

    def __init__(self, dim: int) -> None:
        self._vectors: Vector = np.zeros((0, dim), dtype=np.float32)
        self._labels: Labels = np.zeros(0, dtype=np.int64)
        self._rows: dict[int, int] = {}

    @property
    def exact_scores(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, labels: Labels, vectors: Vector) -> None:
        n, end = len(self._rows), len(self._rows) + len(labels)
        if end > len(self._labels):
            capacity = max(end, int(len(self._labels) * GROWTH), 1024)
            grown_vectors = np.zeros((capacity, self._vectors.shape[1]), dtype=np.float32)
            grown_vectors[:n] = self._vectors[:n]
            grown_labels = np.zeros(capacity, dtype=np.int64)
            grown_labels[:n] = self._labels[:n]
            self._vectors, self._labels = grown_vectors, grown_labels
        self._vectors[n:end] = vectors
        self._labels[n:end] = labels
        self._rows.update((int(label), n + i) for i, label in enumerate(labels))

    def remove(self, labels: Labels) -> None:
        for label in labels:
            row, last = self._rows.pop(int(label)), len(self._rows)
            if row != last:
                moved = int(self._labels[last])
                self._vectors[row] = self._vectors[last]
                self._labels[row] = moved
                self._rows[moved] = row
            self._vectors[last] = 0.0

    def search(self, query: Vector, k: int) -> tuple[Labels, npt.NDArray[np.float32]]:
        n = len(self._rows)
        k = min(k, n)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        # einsum, not BLAS: a threaded sgemv per query is slower and erratic on a busy 2-core box.
        scores = np.einsum("ij,j->i", self._vectors[:n], query.reshape(-1))
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        return self._labels[top].copy(), scores[top]

    def items(self) -> tuple[Labels, Vector]:
        """Copies of the live labels and vectors, to build an HNSW index when the collection grows."""
        n = len(self._rows)
        return self._labels[:n].copy(), self._vectors[:n].copy()


_DEFAULTS = StoreSettings()


@dataclass(frozen=True, slots=True)
class HnswParams:
    """The graph's shape and search breadth; the defaults and their meaning live in `StoreSettings`."""

    m: int = _DEFAULTS.hnsw_m
    ef_construction: int = _DEFAULTS.hnsw_ef_construction
    ef: int | None = _DEFAULTS.hnsw_ef
    """Search breadth (hnswlib widens it to k when k is larger); None follows `auto_ef`, a number fixes it."""

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> HnswParams:
        return cls(m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction, ef=settings.hnsw_ef)


EF_MIN = 32
EF_SQRT_DIVISOR = 8
"""ef = max(EF_MIN, sqrt(elements) / EF_SQRT_DIVISOR): on clustered faces (bench/store_scale.py, M 32) the breadth
for a given recall@1 grew as the square root of the graph's size; graphs hold at most `GRAPH_DIM` dimensions."""


def auto_ef(elements: int) -> int:
    """The search breadth for a graph of this many elements: a bigger graph needs a wider search for the same
    recall, and a small one should not pay for a 1M-face breadth."""
    return max(EF_MIN, math.ceil(math.sqrt(elements) / EF_SQRT_DIVISOR))


@dataclass(frozen=True, slots=True)
class Manifest:
    """Written beside every index file: hnswlib itself records neither space, dim nor provenance."""

    format: int
    collection_id: str
    collection_uid: str
    face_model_version: str
    dim: int
    space: str
    m: int
    ef_construction: int
    hnswlib_version: str
    element_count: int
    deleted_count: int
    change_seq: int
    """Every change of the collection up to this sequence number is reflected in the file."""
    sha256: str
    saved_at: float
    min_reader: int
    """Written only where it differs from `format` (`edge.store.formats`)."""
    projection: str | None = None
    """`Projection.name` of a graph over projected vectors (format 2); absent for one of the vectors themselves."""

    @property
    def stamp(self) -> Stamp:
        return Stamp(self.format, self.min_reader)


class HnswIndex:
    """hnswlib graph over unit vectors with label-addressed deletes and geometric growth.

    A deleted face keeps its slot, and its place in the graph's paths, until compaction rebuilds the graph;
    in every saved file its vector is replaced by a copy of its nearest surviving neighbour's (hnswlib's
    mark_deleted keeps the bytes), and the store reloads from that file to drop it from memory too.
    """

    def __init__(self, raw: hnswlib.Index, params: HnswParams, deleted: int, projection: Projection | None) -> None:
        self._raw = raw
        self._params = params
        self._deleted = deleted
        self._projection = projection
        self._retune()

    @classmethod
    def build(cls, dim: int, params: HnswParams, labels: Labels, vectors: Vector, *,
              projected: bool = False) -> HnswIndex:
        """A graph over `dim`-wide faces; `projected`: the vectors are given as `projection_for(dim)` made them."""
        raw = hnswlib.Index(space=SPACE, dim=graph_dim(dim))
        raw.init_index(
            max_elements=max(len(labels), 1),
            M=params.m,
            ef_construction=params.ef_construction,
        )
        index = cls(raw, params, deleted=0, projection=projection_for(dim))
        if len(labels):
            index._insert(labels, vectors if projected or index._projection is None else index._projection(vectors))
        return index

    @property
    def exact_scores(self) -> bool:
        return self._projection is None

    @property
    def projection(self) -> str | None:
        """The name of the projection the graph holds, None where it holds the vectors themselves."""
        return None if self._projection is None else self._projection.name

    def __len__(self) -> int:
        return int(self._raw.element_count) - self._deleted

    @property
    def deleted(self) -> int:
        """Slots holding a deleted element (a stand-in on disk), kept until the graph is rebuilt."""
        return self._deleted

    @property
    def element_count(self) -> int:
        return int(self._raw.element_count)

    @property
    def ef(self) -> int:
        """The search breadth in use: the configured one, or `auto_ef` of the graph's size."""
        return int(self._raw.ef)

    def _retune(self) -> None:
        """Follow the graph's size (deleted slots are still walked); callers hold off searches."""
        self._raw.set_ef(self._params.ef or auto_ef(self.element_count))

    def add(self, labels: Labels, vectors: Vector) -> None:
        self._insert(labels, vectors if self._projection is None else self._projection(vectors))

    def _insert(self, labels: Labels, vectors: Vector) -> None:
        """Add vectors of the graph's own width, in new slots.

        Never in a deleted face's slot: hnswlib would rewire the neighbours of its stand-in round a face from
        elsewhere, which cost recall after rounds of deletions and enrolments (README, Speed).
        """
        needed = self.element_count + len(labels)
        capacity = int(self._raw.max_elements)
        if needed > capacity:
            self._raw.resize_index(max(needed, int(capacity * GROWTH)))
        self._raw.add_items(vectors, labels)
        self._retune()

    def remove(self, labels: Labels) -> None:
        for label in labels:
            try:
                self._raw.mark_deleted(int(label))
            except RuntimeError as exc:
                raise IndexInvalid(f"cannot delete label {int(label)}: {exc}") from exc
            self._deleted += 1

    def search(self, query: Vector, k: int) -> tuple[Labels, npt.NDArray[np.float32]]:
        k = min(k, len(self))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self._projection is not None:
            query = self._projection(query)
        labels, distances = self._raw.knn_query(query, k=k, num_threads=1)
        return labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)

    def save(self, directory: Path, collection: CollectionRecord, change_seq: int) -> Manifest:
        """Replace index.bin and index.json atomically, with deleted vectors replaced by stand-ins in the file.

        Both files are first written and fsynced as .tmp, then renamed bin-first: a crash between
        the two renames leaves a .tmp manifest that matches the new bin, and `load` rolls it forward.
        Nested context managers exit inner first, which is what renames the index file first.
        """
        bin_path, json_path = directory / INDEX_FILE, directory / MANIFEST_FILE
        # The manifest's temporary is finished (and fsynced) before the index file is renamed, so
        # a crash between the two renames leaves what `load` needs to roll it forward.
        with replacing(json_path, tmp=_tmp(json_path)) as json_tmp, replacing(bin_path, tmp=_tmp(bin_path)) as bin_tmp:
            self._raw.save_index(str(bin_tmp))
            deleted = _scrub_deleted(bin_tmp, graph_dim(collection.dim), self._params, self.element_count)
            if deleted != self._deleted:
                raise IndexInvalid(f"saved file marks {deleted} deleted elements, expected {self._deleted}")
            stamp = _FULL if self._projection is None else _PROJECTED
            manifest = Manifest(
                format=stamp.version,
                collection_id=collection.collection_id,
                collection_uid=collection.uid,
                face_model_version=collection.face_model_version,
                dim=collection.dim,
                space=SPACE,
                m=self._params.m,
                ef_construction=self._params.ef_construction,
                hnswlib_version=HNSWLIB_VERSION,
                element_count=self.element_count,
                deleted_count=deleted,
                change_seq=change_seq,
                sha256=_sha256(bin_tmp),
                saved_at=time.time(),
                min_reader=stamp.min_reader,
                projection=None if self._projection is None else self._projection.name,
            )
            written = asdict(manifest)
            if manifest.min_reader == manifest.format:
                del written["min_reader"]
            if manifest.projection is None:
                del written["projection"]
            json_tmp.write_text(json.dumps(written, indent=2, sort_keys=True))
            fsync_path(json_tmp)
        return manifest

    def raw_bytes(self, directory: Path) -> bytes:
        """The graph as hnswlib saves it (to ship a built graph over a snapshot's faces)."""
        path = directory / f".{INDEX_FILE}.{os.getpid()}.ship"
        try:
            self._raw.save_index(str(path))
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    @classmethod
    def relabelled(cls, data: bytes, dim: int, params: HnswParams, count: int, first_label: int,
                   directory: Path) -> HnswIndex:
        """Load a graph built elsewhere over labels 0..count-1 as labels first_label..first_label+count-1.

        The header is checked against this store's dim and parameters (IndexInvalid otherwise); each
        level-0 record ends with its label, which is shifted in place before hnswlib reads the file.
        """
        size, _ = _check_header(data[:_HEADER.size], graph_dim(dim), params, count)
        if len(data) < _HEADER.size + count * size:
            raise IndexInvalid("shipped index shorter than its elements")
        path = directory / f".{INDEX_FILE}.{os.getpid()}.shipped"
        directory.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            tmp.write_bytes(data)
        try:
            records = np.memmap(path, dtype=np.uint8, mode="r+", offset=_HEADER.size, shape=(count, size))
            labels = records[:, size - 8 :].view("<u8")
            if not np.array_equal(np.sort(labels[:, 0]), np.arange(count, dtype=np.uint64)):
                raise IndexInvalid("shipped index is not labelled by position")
            labels += np.uint64(first_label)
            records.flush()
            del records, labels
            raw = hnswlib.Index(space=SPACE, dim=graph_dim(dim))
            try:
                raw.load_index(str(path))
            except (RuntimeError, MemoryError) as exc:
                raise IndexInvalid(f"hnswlib cannot load the shipped index: {exc}") from exc
            if raw.element_count != count:
                raise IndexInvalid(f"shipped index holds {raw.element_count} elements, expected {count}")
            return cls(raw, params, deleted=0, projection=projection_for(dim))
        finally:
            path.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path, collection: CollectionRecord, params: HnswParams) -> tuple[HnswIndex, Manifest]:
        """Load a saved index only if every check passes; otherwise raise IndexInvalid."""
        bin_path, json_path = directory / INDEX_FILE, directory / MANIFEST_FILE
        if not bin_path.is_file():
            raise IndexInvalid("no saved index")
        digest = _sha256(bin_path)
        manifest = _read_manifest(json_path)
        if manifest is None or manifest.sha256 != digest:
            pending = _read_manifest(_tmp(json_path))
            if pending is None or pending.sha256 != digest:
                raise IndexInvalid("sha256 mismatch: index file corrupt, truncated or replaced")
            os.replace(_tmp(json_path), json_path)
            fsync_path(directory)
            manifest = pending
        if not manifest.stamp.readable_by(STAMP.version):
            raise IndexInvalid(f"index format {manifest.format} needs a reader of format {manifest.min_reader} on")
        expected = {
            "projection": projection_name(collection.dim),
            "collection_uid": collection.uid,
            "face_model_version": collection.face_model_version,
            "dim": collection.dim,
            "space": SPACE,
            "m": params.m,
            "ef_construction": params.ef_construction,
            "hnswlib_version": HNSWLIB_VERSION,
        }
        for key, want in expected.items():
            if getattr(manifest, key) != want:
                raise IndexInvalid(f"manifest {key} is {getattr(manifest, key)!r}, expected {want!r}")
        with bin_path.open("rb") as f:
            _check_header(f.read(_HEADER.size), graph_dim(collection.dim), params, manifest.element_count)
        raw = hnswlib.Index(space=SPACE, dim=graph_dim(collection.dim))
        try:
            raw.load_index(str(bin_path))
        except (RuntimeError, MemoryError) as exc:
            raise IndexInvalid(f"hnswlib cannot load the index: {exc}") from exc
        if raw.element_count != manifest.element_count:
            raise IndexInvalid(f"index holds {raw.element_count} elements, manifest {manifest.element_count}")
        _tmp(bin_path).unlink(missing_ok=True)
        _tmp(json_path).unlink(missing_ok=True)
        return cls(raw, params, manifest.deleted_count, projection_for(collection.dim)), manifest


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def _read_manifest(path: Path) -> Manifest | None:
    """The manifest, without the fields a newer format added (whether they may be ignored is its min_reader's
    to say)."""
    try:
        fields = json.loads(path.read_text())
        fields.setdefault("min_reader", fields.get("format"))  # recorded only where it differs
        return Manifest(**{name: fields[name] for name in Manifest.__dataclass_fields__ if name in fields})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def manifest_stamp(path: Path) -> Stamp | None:
    """The format stamp of a saved index's manifest (None where there is none to read)."""
    manifest = _read_manifest(path)
    return None if manifest is None else manifest.stamp


def _check_header(header: bytes, dim: int, params: HnswParams, element_count: int) -> tuple[int, int]:
    """Refuse a file whose layout is not an hnswlib 0.8 graph of this dim and these params.

    Returns the size of a level-0 record and the offset of the vector inside it.
    """
    if len(header) != _HEADER.size:
        raise IndexInvalid("index file shorter than its header")
    (offset0, _, count, size, label_offset, data_offset, _, _, _, max_m0, m, _, ef_c) = _HEADER.unpack(header)
    links = max_m0 * 4 + 4
    layout = (offset0, data_offset, label_offset, size, m, ef_c, count)
    want = (0, links, links + dim * 4, links + dim * 4 + 8, params.m, params.ef_construction, element_count)
    if layout != want:
        raise IndexInvalid(f"index file layout {layout} does not match {want}")
    return size, data_offset


def _scrub_deleted(path: Path, dim: int, params: HnswParams, element_count: int) -> int:
    """Replace the vectors of deleted elements in a saved file by stand-ins; returns how many elements are deleted.

    A stand-in is a copy of the element's nearest surviving level-0 neighbour: none of the deleted vector, nothing
    the file does not hold already, but a point near where the deleted one was, so that searches still step
    through it. A zeroed vector lay at distance 1 from every query, was never stepped through, and cut off faces
    reached through it; the mean of the neighbours lay nearer to every query than faces do and made searches
    wander through deleted slots (README, Speed).
    """
    with path.open("rb") as f:
        header = f.read(_HEADER.size)
    size, data_offset = _check_header(header, dim, params, element_count)
    if element_count == 0:
        return 0
    records = np.memmap(path, dtype=np.uint8, mode="r+", offset=_HEADER.size, shape=(element_count, size))
    alive = (records[:, 2] & _DELETE_MARK) == 0
    deleted = np.flatnonzero(~alive)
    vectors = records[:, data_offset : data_offset + dim * 4].view("<f4")
    for chunk in np.array_split(deleted, -(-len(deleted) // STAND_IN_CHUNK)) if len(deleted) else ():
        rows = records[chunk]
        links = rows[:, 4:data_offset].view("<u4")
        listed = np.arange(links.shape[1]) < rows[:, :2].view("<u2")
        links = np.where(listed, links, 0)
        usable = listed & alive[links]
        neighbours = vectors[links]
        closeness = np.where(usable, np.einsum("nkd,nd->nk", neighbours, vectors[chunk]), -np.inf)
        nearest = np.argmax(closeness, axis=1)
        vectors[chunk] = np.where(usable.any(axis=1)[:, None], neighbours[np.arange(len(chunk)), nearest], 0)
    records.flush()
    del records, vectors
    return len(deleted)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
