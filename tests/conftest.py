"""Shared fixtures: the test data folder (outside the repo) and one loaded pipeline per range."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_postgresql.janitor import DatabaseJanitor

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



@pytest.fixture(scope="session")
def pg_server() -> Iterator[tuple[str, int]]:
    """A throwaway PostgreSQL for the session, on a unix socket only, in a temporary directory outside pytest's
    (which pytest keeps private to root). initdb refuses root, so as root it runs as Debian's `postgres` user."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.skip("PostgreSQL is not installed (make setup installs postgresql-15)")
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="edge-face-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:  # the port only names the socket file; nothing listens on TCP
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "start", "-w", "-D", str(data), "-l", str(root / "log"), "-o",
                    f"-F -p {port} -k {root} -c listen_addresses=''"], check=True, capture_output=True)
    try:
        yield str(root), port
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast"], check=False,
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: tuple[str, int]) -> Iterator[str]:
    """A libpq connection string to a fresh database (pytest-postgresql's janitor creates and drops it)."""
    host, port = pg_server
    name = f"test_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(user="postgres", host=host, port=port, dbname=name):
        yield f"host={host} port={port} user=postgres dbname={name}"
