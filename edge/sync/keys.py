"""The feed's Ed25519 signing keys: root (signs the key list; used only to rotate) and online (signs the feed).

TUF's split: the online key signs every publication and so lives on the central; if it leaks, the root
key signs a new root that names a new online key, and every device moves to it on its next sync
without being re-provisioned. Keep `root.pem` offline in production (copy it in only to rotate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

from edge.files import write_private

ROOT_KEY = "root.pem"
ONLINE_KEY = "online.pem"
DIR_MODE = 0o700


def load_signer(path: Path) -> CryptoSigner:
    private = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def new_signer(path: Path) -> CryptoSigner:
    """A fresh Ed25519 key, written 0600 to `path`."""
    signer = CryptoSigner.generate_ed25519()
    write_private(path, signer.private_bytes)
    return load_signer(path)


@dataclass(frozen=True)
class FeedKeys:
    root: CryptoSigner
    online: CryptoSigner

    @classmethod
    def load_or_create(cls, directory: Path) -> FeedKeys:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(directory, DIR_MODE)
        signers = []
        for name in (ROOT_KEY, ONLINE_KEY):
            path = directory / name
            signers.append(load_signer(path) if path.exists() else new_signer(path))
        return cls(*signers)

    @classmethod
    def rotate_online(cls, directory: Path) -> FeedKeys:
        """Replace the online key on disk; the root key must be there (copied in from where it is kept)."""
        root = directory / ROOT_KEY
        if not root.exists():
            raise FileNotFoundError(f"{root} is missing: copy the feed's root key in to rotate, then take it out")
        return cls(load_signer(root), new_signer(directory / ONLINE_KEY))
