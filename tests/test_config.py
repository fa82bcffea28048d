"""Configuration: environment variables reach nested sections, and unknown keys stop the start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge.config import Settings, StoreSettings
from edge.store import open_store
from edge.store.index import HnswIndex, auto_ef
from edge.store.models import BoundingBox, NewFace


def test_environment_reaches_nested_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_FACE_STORE__HNSW_EF", "768")
    monkeypatch.setenv("EDGE_FACE_PIPELINE__DETECTOR", "full")
    settings = Settings()
    assert settings.store.hnsw_ef == 768 and settings.pipeline.detector == "full"


def test_unknown_and_out_of_range_keys_are_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "edge-face.yaml"
    config.write_text("pipeline:\n  detectr: full\n")
    monkeypatch.setenv("EDGE_FACE_CONFIG", str(config))
    with pytest.raises(ValidationError, match="detectr"):
        Settings()
    config.write_text("pipeline:\n  min_detection_confidence: 1.5\n")
    with pytest.raises(ValidationError, match="min_detection_confidence"):
        Settings()


def test_store_settings_choose_exact_or_hnsw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = open_store(tmp_path, StoreSettings(exact_max=10), autosave=False)
    try:
        store.create_collection("c", face_model_version="m", dim=8, arn="arn")
        faces = [NewFace(vector=rng.standard_normal(8), image_id=str(i), bounding_box=BoundingBox(0.1, 0.1, 0, 0),
                         confidence=99.0) for i in range(20)]
        added = store.add_faces("c", faces, model_version="m")
        store.checkpoint()
        assert list((tmp_path / "collections").glob("*/index.bin")), "20 faces > exact_max must use HNSW"
        hit = store.search("c", faces[3].vector, model_version="m", k=1)[0]
        assert hit.face.face_id == added[3].face_id
    finally:
        store.close()


@pytest.mark.parametrize("configured", [None, 300], ids=["auto", "fixed"])
def test_store_search_breadth_follows_the_collection_unless_configured(tmp_path: Path, configured: int | None) -> None:
    rng = np.random.default_rng(1)
    store = open_store(tmp_path, StoreSettings(exact_max=10, hnsw_ef=configured), autosave=False)
    try:
        store.create_collection("c", face_model_version="m", dim=8, arn="arn")
        store.add_faces("c", [NewFace(vector=rng.standard_normal(8), image_id=str(i),
                                      bounding_box=BoundingBox(0.1, 0.1, 0, 0), confidence=99.0) for i in range(20)],
                        model_version="m")
        index = store._collections["c"].index
        assert isinstance(index, HnswIndex) and index.ef == (configured or auto_ef(20))
    finally:
        store.close()
