"""A throwaway PostgreSQL on a unix socket in a temporary directory, for the tests and the benchmarks.

initdb refuses to run as root (CI runs as root), so there the server runs as Debian's unprivileged
`postgres` user. The directory lives outside pytest's own temporary tree, which pytest keeps private.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def pg_bindir() -> Path | None:
    """Debian's PostgreSQL binaries (the newest installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@contextmanager
def throwaway_postgres() -> Iterator[tuple[str, int]]:
    """Start a server; yields (socket directory, port), both what libpq's host and port take."""
    bindir = pg_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (make setup installs postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="edge-face-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:  # the port only names the socket file; nothing listens on TCP
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    data = root / "data"
    pg_ctl = [*as_user, str(bindir / "pg_ctl")]
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        subprocess.run([*pg_ctl, "start", "-w", "-D", str(data), "-l", str(root / "log"), "-o",
                        f"-p {port} -k {root} -c listen_addresses=''"], check=True, capture_output=True)
        yield str(root), port
    finally:
        subprocess.run([*pg_ctl, "stop", "-D", str(data), "-m", "fast"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(host: str, port: int, name: str) -> str:
    """An empty database on the server; returns its libpq connection string."""
    import psycopg

    with psycopg.connect(f"host={host} port={port} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"host={host} port={port} user=postgres dbname={name}"
