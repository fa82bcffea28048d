"""Shared fixtures: the test data folder (outside the repo) and one loaded pipeline per range."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import PipelineSettings, Settings
from edge.evaluation.dataset import data_root


def _data_dir(name: str) -> Path:
    path = data_root() / name
    if not path.is_dir():
        pytest.skip(f"test data {path} is absent (set EDGE_FACE_DATA to the folder holding {name}/)")
    return path


@pytest.fixture(scope="session")
def faces_dev() -> Path:
    return _data_dir("faces-dev")


@pytest.fixture(scope="session")
def misc() -> Path:
    return _data_dir("misc")


@pytest.fixture(scope="session")
def settings() -> PipelineSettings:
    """The embedded defaults, with the model directory the Makefile exports."""
    return Settings().pipeline


@pytest.fixture(scope="session")
def pipeline(settings: PipelineSettings):  # type: ignore[no-untyped-def]
    from edge.vision.pipeline import FacePipeline

    pipe = FacePipeline.from_settings(settings)
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def full_range_pipeline(settings: PipelineSettings):  # type: ignore[no-untyped-def]
    from edge.vision.pipeline import FacePipeline

    pipe = FacePipeline.from_settings(settings.model_copy(update={"detector": "full"}))
    yield pipe
    pipe.close()
