"""Private files replaced atomically: keys, credentials and index files all go through here.

A crash leaves either the old file or the new one, never half of one, and no other user can read
a byte of it at any moment (the temporary is private before anything is written to it).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o600


@contextmanager
def replacing(path: Path, *, tmp: Path | None = None) -> Iterator[Path]:
    """A private temporary path to write; when the block succeeds it durably replaces `path`.

    `tmp` names the temporary where a reader must be able to find it after a crash (the index
    rolls a finished manifest forward); by default it is a fresh hidden name beside `path`.
    """
    tmp = tmp or path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE))
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # A failure from here on leaves a finished temporary, which a reader may roll forward.
    os.chmod(tmp, FILE_MODE)  # a writer that recreated the file (hnswlib) used the umask
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_private(path: Path, data: bytes | str) -> None:
    """Replace `path` atomically with a 0600 file holding `data`."""
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)


def private_secret(path: Path, nbytes: int = 32) -> bytes:
    """A random secret made once and kept in a 0600 file; later calls read it back."""
    if not path.exists():
        write_private(path, secrets.token_bytes(nbytes))
    return path.read_bytes()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (the latter makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
