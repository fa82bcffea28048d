"""Shared fixtures: the test data folder (outside the repo), one loaded pipeline per range, throwaway PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from bench.postgres import pg_bindir, throwaway_postgres
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


PHOTOS_PER_PERSON = 5


@pytest.fixture(scope="session")
def people(faces_dev: Path) -> list[list[Path]]:
    """Each person's photos, for the people of faces-dev with at least five."""
    found = [sorted(d.glob("*.jpg")) for d in sorted(faces_dev.iterdir()) if d.is_dir()]
    found = [photos for photos in found if len(photos) >= PHOTOS_PER_PERSON]
    if len(found) < 2:
        pytest.skip(f"faces-dev has fewer than two people with {PHOTOS_PER_PERSON} photos")
    return found


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



@pytest.fixture(scope="session")
def pg_server() -> Iterator[tuple[str, int]]:
    """A throwaway PostgreSQL for the session, on a unix socket (bench/postgres.py)."""
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (make setup installs postgresql-15)")
    with throwaway_postgres() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: tuple[str, int]) -> Iterator[str]:
    """A libpq connection string to a fresh database (pytest-postgresql's janitor creates and drops it)."""
    host, port = pg_server
    name = f"test_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(user="postgres", host=host, port=port, dbname=name):
        yield f"host={host} port={port} user=postgres dbname={name}"
