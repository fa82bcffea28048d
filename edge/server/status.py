"""What a running daemon tells an operator about itself, in a file beside its state (`edge-face status`).

The daemon is the only one that knows which models and backend it chose on this hardware; it writes
them here once it is ready and removes the file when it stops. The state directory's lock, not this
file, says whether it still runs (a daemon killed with SIGKILL leaves the file behind).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from edge.config import ServerSettings
from edge.files import write_private

STATUS_FILE = "daemon.json"


def local_url(server: ServerSettings) -> str:
    """The URL a client on this machine uses to reach the daemon."""
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    return f"{'https' if server.tls_cert else 'http'}://{host}:{server.port}"


def publish(state_dir: Path, server: ServerSettings, pipeline: dict[str, str], recovery: dict[str, str]) -> None:
    write_private(state_dir / STATUS_FILE, json.dumps({
        "pid": os.getpid(), "started_at": time.time(), "endpoint": local_url(server), "pipeline": pipeline,
        "recovery": recovery}, indent=2) + "\n")


def withdraw(state_dir: Path) -> None:
    (state_dir / STATUS_FILE).unlink(missing_ok=True)


def read(state_dir: Path) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status
