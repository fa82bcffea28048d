"""Each built model against its reference, and the manifest's hashes actually guarding the files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.config import PipelineSettings
from edge.vision.embedder import Embedder, unit
from edge.vision.models import ModelCatalog, ModelError
from edge.vision.runtime import select_backend, spread_over

# The least cosine each precision must keep against the reference (dlib itself, FaceNet's TF graph).
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.9999, "int8-dynamic": 0.998, "int8": 0.998}


@pytest.fixture(scope="module")
def catalog(settings: PipelineSettings) -> ModelCatalog:
    return ModelCatalog(settings.model_dir)


@pytest.fixture(scope="module")
def parity(catalog: ModelCatalog) -> dict[str, np.ndarray]:
    """Chips from real photos with the reference models' embeddings, written by the build."""
    manifest = json.loads((catalog.model_dir / "manifest.json").read_text())
    if not manifest.get("parity_reference"):
        pytest.skip("the models were built without --faces, so no parity reference exists")
    with np.load(catalog.model_dir / manifest["parity_reference"]["file"]) as data:
        return {key: data[key] for key in data.files}


def _embedders(catalog: ModelCatalog) -> list[str]:
    return [a.name for a in catalog.artifacts if a.kind == "embedder"]


def test_every_embedder_matches_its_reference(catalog: ModelCatalog, parity: dict[str, np.ndarray]) -> None:
    cpu = select_backend(["cpu"])
    failures = []
    for art in (a for a in catalog.artifacts if a.kind == "embedder"):
        chips, reference = parity[f"{art.family}_inputs"], parity[f"{art.family}_reference"]
        embedder = Embedder(catalog, art, backend=cpu, threads=1)
        ours = np.stack([embedder.embed(chip) for chip in chips])
        ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        worst = float(np.min(np.einsum("ij,ij->i", ours, ref)))
        if worst < MIN_COSINE[art.precision]:
            failures.append(f"{art.name}: min cosine {worst:.6f} < {MIN_COSINE[art.precision]}")
    assert not failures, failures


@pytest.mark.parametrize("family", ["dlib_resnet_v1", "facenet_casia"])
def test_flip_pairs_and_spread_threads_give_the_calibrated_embedding(
        catalog: ModelCatalog, parity: dict[str, np.ndarray], family: str) -> None:
    """The mirror pass runs as a batch of two where the model's graph allows it (FaceNet's fixes its batch at
    one: a second pass then), on the embedder's own thread or on the two a lone request is granted: the vector
    must still be the mean of the two single passes the calibration was fitted on."""
    cpu = select_backend(["cpu"])
    chips = parity[f"{family}_inputs"][:8]
    for precision in ("fp32", "int8-dynamic"):
        art = catalog.find("embedder", family, precision)
        single = Embedder(catalog, art, backend=cpu, threads=1)
        flip = Embedder(catalog, art, backend=cpu, threads=1, flip_augment=True)
        for chip in chips:
            expected = unit(single.raw(chip) + single.raw(chip[:, ::-1]))
            np.testing.assert_allclose(flip.embed(chip), expected, atol=1e-6)
            with spread_over(2):
                np.testing.assert_allclose(flip.embed(chip), expected, atol=1e-6)
                np.testing.assert_allclose(single.embed(chip), unit(single.raw(chip)), atol=1e-6)


def test_every_precision_of_both_embedders_is_built(catalog: ModelCatalog) -> None:
    names = set(_embedders(catalog))
    for family in ("dlib_resnet_v1", "facenet_casia"):
        for precision in ("fp32", "fp16", "int8-dynamic"):
            assert f"{family}-{precision}" in names
    assert {"blazeface_short", "blazeface_full", "face_mesh"} <= {a.family for a in catalog.artifacts}


def test_a_tampered_model_is_refused(catalog: ModelCatalog, tmp_path: Path) -> None:
    shutil.copy(catalog.model_dir / "manifest.json", tmp_path / "manifest.json")
    art = catalog.find("embedder", "dlib_resnet_v1", "fp32")
    data = bytearray(art.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / art.path.name).write_bytes(bytes(data))
    tampered = ModelCatalog(tmp_path)
    with pytest.raises(ModelError, match="sha256"):
        tampered.verified_path(tampered.find("embedder", "dlib_resnet_v1", "fp32"))


def test_a_missing_model_directory_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="make models"):
        ModelCatalog(tmp_path)
