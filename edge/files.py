"""Private files replaced atomically: keys, credentials and index files all go through here.

A crash leaves either the old file or the new one, never half of one, and no other user can read
a byte of it at any moment (the temporary is private before anything is written to it). Modes are
set explicitly, never left to the umask: face data must stay private outside systemd too.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


@contextmanager
def replacing(path: Path, *, tmp: Path | None = None) -> Iterator[Path]:
    """A private temporary path to write; when the block succeeds it durably replaces `path`.

    `tmp` names the temporary where a reader must be able to find it after a crash (the index
    rolls a finished manifest forward); by default it is a fresh hidden name beside `path`.
    """
    tmp = tmp or path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    private_directory(path.parent)
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
    check_private(path)
    return path.read_bytes()


def check_private(path: Path) -> None:
    """Refuse a secret that others may read, as ssh refuses such a private key: it may have been copied,
    so it must be replaced, not quietly tightened."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is accessible by other users (mode {mode:04o}): treat it as leaked, "
                              "replace or chmod 600 it")


def private_directory(path: Path) -> None:
    """Make `path` and any missing parent with mode 0700 (`mkdir(parents=True)` gives parents the umask's)."""
    if path.is_dir():
        return
    private_directory(path.parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


def make_private(path: Path) -> bool:
    """Take group and other permissions off a file (0600) or directory (0700); True if it had any."""
    mode = path.lstat().st_mode
    if not mode & 0o077 or stat.S_ISLNK(mode):
        return False
    os.chmod(path, DIR_MODE if stat.S_ISDIR(mode) else FILE_MODE)
    return True


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (the latter makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
