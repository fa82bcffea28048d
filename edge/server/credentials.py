"""The daemon's access keys: scoped to operations and collections, encrypted at rest, changed without a restart.

- `keys.json` (0600) is what the daemon checks: every key with its name, its scope (the operations it
  may call, and optionally the only collections it may touch) and its secret, encrypted with AES-GCM
  under a master key. SigV4 needs the secret itself to check a signature, so it cannot be hashed; the
  encryption keeps it out of backups and copies of the file. The master key comes from systemd's
  credentials (`LoadCredentialEncrypted=edge-face-keys`, sealed to the TPM or the host where it has
  one) or, without systemd, from `keys.master` (0600) beside the file.
- `credentials` is the client-facing copy of the two keys made on first start, in the AWS
  shared-credentials format (`admin` and the read-only `kiosk` profile), so `make run` works out of
  the box. Keys made later with `edge-face keys create` show their secret once and nowhere else.

`edge-face keys` edits `keys.json` under a lock; the daemon re-reads it when it changes, so a new key
works and a revoked one is refused on the very next request.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import string
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.files import check_private, private_secret, write_private
from edge.rekognition.operations import OPERATIONS
from edge.store.formats import Stamp, require_readable

KEYS_FILE = "keys.json"
MASTER_KEY_FILE = "keys.master"
#: The name under which systemd hands the master key to the daemon ($CREDENTIALS_DIRECTORY).
SYSTEMD_CREDENTIAL = "edge-face-keys"
CREDENTIALS_FILE = "credentials"
#: Named scopes; None is every operation.
SCOPES: dict[str, frozenset[str] | None] = {
    "admin": None,
    "read-only": frozenset(name for name, op in OPERATIONS.items() if op.read_only),
    "search": frozenset({"SearchFacesByImage", "SearchUsersByImage", "SearchFaces", "SearchUsers", "DetectFaces",
                         "CompareFaces"}),
}
#: Named scopes as earlier releases stored them (keys.json lists a key's operations): such a key has the scope,
#: with the operations added to it since (ListTagsForResource, for read-only keys).
_EARLIER_SCOPES: dict[frozenset[str], str] = {
    frozenset(SCOPES["read-only"] or ()) - {"ListTagsForResource"}: "read-only",
}
#: The keys made on first start: (name, scope).
FIRST_KEYS = (("admin", "admin"), ("kiosk", "read-only"))
_KEY_ID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


class AccessKey(BaseModel):
    """One key, with its secret in the clear: only ever in memory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$")
    access_key_id: str = Field(pattern=r"^[A-Z0-9]{16,128}$")
    secret_access_key: str = Field(min_length=16, repr=False)
    #: The operations it may call; None: all of them.
    operations: frozenset[str] | None = None
    #: The only collections it may touch; None: all of them.
    collections: frozenset[str] | None = None
    created_at: float = 0.0
    revoked_at: float | None = None

    @property
    def scope(self) -> str:
        """The named scope its operations match, or "custom"."""
        return next((name for name, ops in SCOPES.items() if ops == self.operations), "custom")


class _StoredKey(BaseModel):
    """One key as `keys.json` holds it: the secret sealed, bound to its key id."""

    model_config = ConfigDict(extra="forbid")

    name: str
    access_key_id: str
    sealed_secret: str
    operations: list[str] | None
    collections: list[str] | None
    created_at: float
    revoked_at: float | None = None


#: The key file's format (`edge.store.formats`): `version` and, where it differs, `min_reader` in the file.
STAMP = Stamp(2, 2)


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = STAMP.version
    keys: list[_StoredKey]


class KeyStore:
    """The keys of one state directory; `get` re-reads the file whenever it changed on disk."""

    def __init__(self, state_dir: Path, master_key: bytes | None = None) -> None:
        self.path = state_dir / KEYS_FILE
        self._state_dir = state_dir
        self._aead = AESGCM(master_key or _master_key(state_dir))
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, AccessKey] = {}

    @classmethod
    def open(cls, state_dir: Path) -> tuple[KeyStore, bool]:
        """The keys, made on first start (then True, and `credentials` holds the first two for clients).

        A key file, credentials file or master key that others may read is refused, as ssh refuses a
        world-readable private key.
        """
        store = cls(state_dir)
        with store._editing() as keys:
            if keys:
                return store, False
            made = [new_key(name, SCOPES[scope]) for name, scope in FIRST_KEYS]
            write_private(state_dir / CREDENTIALS_FILE, credentials_text(made))
            keys.extend(made)
        return store, True

    def get(self, access_key_id: str) -> AccessKey | None:
        """The live (not revoked) key with this id."""
        key = self._current().get(access_key_id)
        return None if key is None or key.revoked_at is not None else key

    def all(self) -> list[AccessKey]:
        """Every key, revoked ones included, oldest first."""
        return sorted(self._current().values(), key=lambda k: k.created_at)

    def create(self, name: str, operations: Iterable[str] | None, collections: Iterable[str] | None) -> AccessKey:
        unknown = set(operations or ()) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"no such operations: {', '.join(sorted(unknown))}")
        key = new_key(name, None if operations is None else frozenset(operations),
                       None if collections is None else frozenset(collections))
        with self._editing() as keys:
            if any(k.name == name and k.revoked_at is None for k in keys):
                raise ValueError(f"a live key named {name!r} exists: rotate or revoke it")
            keys.append(key)
        return key

    def revoke(self, key: str) -> AccessKey:
        """Revoke a key by id or name; it is kept (revoked) in the file for the record."""
        with self._editing() as keys:
            index = _find(keys, key)
            keys[index] = keys[index].model_copy(update={"revoked_at": time.time()})
            return keys[index]

    def rotate(self, key: str, *, keep_old: bool = False) -> AccessKey:
        """A new key with the same name and scope; the old one is revoked unless `keep_old` (for a changeover)."""
        with self._editing() as keys:
            index = _find(keys, key)
            old = keys[index]
            new = new_key(old.name, old.operations, old.collections)
            if not keep_old:
                keys[index] = old.model_copy(update={"revoked_at": time.time()})
            keys.append(new)
            return new

    def put(self, wanted: Iterable[AccessKey], *, revoke_others: bool = False) -> list[tuple[str, AccessKey]]:
        """Make these keys live exactly as given, ids and secrets included (a fleet keeps them in its vault).

        A live key of the same name under another id is revoked (a rotation); with `revoke_others`, so is
        every key not given. A revoked id is never brought back. All or nothing: a refusal writes nothing.
        Returns what changed, as ("added" | "updated" | "revoked", key).
        """
        wanted = list(wanted)
        for field in ("access_key_id", "name"):
            values = [getattr(k, field) for k in wanted]
            if len(set(values)) != len(values):
                raise ValueError(f"two of the keys given share one {field}")
        changes: list[tuple[str, AccessKey]] = []
        now = time.time()

        def revoke(index: int) -> None:
            keys[index] = keys[index].model_copy(update={"revoked_at": now})
            changes.append(("revoked", keys[index]))

        with self._editing() as keys:
            for key in wanted:
                same = next((i for i, k in enumerate(keys) if k.access_key_id == key.access_key_id), None)
                if same is not None and keys[same].revoked_at is not None:
                    raise ValueError(f"{key.access_key_id} ({key.name}) was revoked: give the key a new id")
                for index in [i for i, k in enumerate(keys) if k.name == key.name and k.revoked_at is None
                              and k.access_key_id != key.access_key_id]:
                    revoke(index)
                if same is None:
                    keys.append(key.model_copy(update={"created_at": now, "revoked_at": None}))
                    changes.append(("added", keys[-1]))
                elif keys[same] != (updated := key.model_copy(update={"created_at": keys[same].created_at,
                                                                      "revoked_at": None})):
                    keys[same] = updated
                    changes.append(("updated", updated))
            if revoke_others:
                given = {k.access_key_id for k in wanted}
                for index in [i for i, k in enumerate(keys) if k.revoked_at is None and k.access_key_id not in given]:
                    revoke(index)
        return changes

    def _current(self) -> dict[str, AccessKey]:
        with self._lock:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                self._stamp, self._keys = None, {}
                return self._keys
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._keys = {k.access_key_id: k for k in self._read()}
                self._stamp = stamp
            return self._keys

    def _read(self) -> list[AccessKey]:
        if not self.path.exists():
            return []
        for secret in (self.path, self._state_dir / CREDENTIALS_FILE):
            if secret.exists():
                check_private(secret)
        document = json.loads(self.path.read_text())
        if document.get("version") is None:  # the first format: secrets in the clear, two scopes
            return [_from_first_format(entry) for entry in document["keys"]]
        found = _stamp(document)
        require_readable(str(self.path), found, STAMP)
        if found.version > STAMP.version:  # a newer build's additions, which its min_reader lets this one ignore
            document = {"version": found.version,
                        "keys": [{name: entry[name] for name in _StoredKey.model_fields if name in entry}
                                 for entry in document["keys"]]}
        return [self._open(k) for k in _KeyFile.model_validate(document).keys]

    @contextmanager
    def _editing(self) -> Iterator[list[AccessKey]]:
        """The keys to change in place, written back sealed and atomically; one editor at a time."""
        self._state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._state_dir / f".{KEYS_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            keys = self._read()
            before = list(keys)
            yield keys
            if keys != before or (keys and json.loads(self.path.read_text()).get("version") is None):
                write_private(self.path, _KeyFile(keys=[self._seal(k) for k in keys]).model_dump_json(indent=2))
        finally:
            os.close(fd)

    def _seal(self, key: AccessKey) -> _StoredKey:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, key.secret_access_key.encode(), key.access_key_id.encode())
        return _StoredKey(name=key.name, access_key_id=key.access_key_id,
                          sealed_secret=base64.b64encode(nonce + sealed).decode(),
                          operations=None if key.operations is None else sorted(key.operations),
                          collections=None if key.collections is None else sorted(key.collections),
                          created_at=key.created_at, revoked_at=key.revoked_at)

    def _open(self, stored: _StoredKey) -> AccessKey:
        raw = base64.b64decode(stored.sealed_secret)
        try:
            secret = self._aead.decrypt(raw[:12], raw[12:], stored.access_key_id.encode()).decode()
        except InvalidTag:
            raise ValueError(f"{self.path}: the secret of {stored.access_key_id} does not open with this master "
                             "key (another device's master key, or an edited file)") from None
        return AccessKey(name=stored.name, access_key_id=stored.access_key_id, secret_access_key=secret,
                         operations=_current_operations(stored.operations),
                         collections=None if stored.collections is None else frozenset(stored.collections),
                         created_at=stored.created_at, revoked_at=stored.revoked_at)


def _current_operations(stored: list[str] | None) -> frozenset[str] | None:
    """A stored key's operations, a named scope of an earlier release brought up to date."""
    if stored is None:
        return None
    operations = frozenset(stored)
    earlier = _EARLIER_SCOPES.get(operations)
    return SCOPES[earlier] if earlier is not None else operations


def key_from_spec(spec: Any) -> AccessKey:
    """A key as a fleet's vault writes it: name, access_key_id, secret_access_key, then a `scope` (admin,
    read-only, search) or a list of `operations`, and optionally the only `collections` it may use.

    A refusal names the key and the field, never the value (it may be the secret).
    """
    if not isinstance(spec, dict):
        raise ValueError("each key is an object with name, access_key_id, secret_access_key and scope")
    fields = dict(spec)
    name = str(fields.get("name", "?"))
    scope = fields.pop("scope", None)
    if scope is not None:
        if scope not in SCOPES or "operations" in fields:
            raise ValueError(f"key {name!r}: scope is one of {', '.join(SCOPES)}, and then no operations")
        fields["operations"] = SCOPES[scope]
    unknown = set(fields.get("operations") or ()) - set(OPERATIONS)
    if unknown:
        raise ValueError(f"key {name!r}: no such operations: {', '.join(sorted(unknown))}")
    try:
        return AccessKey.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        raise ValueError(f"key {name!r}: {problems}") from None


def credentials_text(keys: list[AccessKey]) -> str:
    """The keys as an AWS shared-credentials file, one profile each."""
    lines = [
        "# edge-face access keys, made on the device's first start. Give each client only the profile it needs:",
        "# admin may call every operation; kiosk is read-only (Search*, Detect*, Compare*, List*, Describe*).",
        "# More keys, scoped to operations and collections: `edge-face keys create --help`.",
    ]
    for key in keys:
        lines += ["", f"[{key.name}]", f"aws_access_key_id = {key.access_key_id}",
                  f"aws_secret_access_key = {key.secret_access_key}"]
    return "\n".join(lines) + "\n"


def _master_key(state_dir: Path) -> bytes:
    """systemd's credential when the unit provides one, else a key file made once beside the keys."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / SYSTEMD_CREDENTIAL).is_file():
        key = (Path(directory) / SYSTEMD_CREDENTIAL).read_bytes()
    else:
        key = private_secret(state_dir / MASTER_KEY_FILE, 32)
    if len(key) != 32:
        raise ValueError(f"the keys' master key must be 32 bytes, got {len(key)}")
    return key


def new_key(name: str, operations: frozenset[str] | None, collections: frozenset[str] | None = None) -> AccessKey:
    """A key shaped like AWS's own (AKIA + 16, 40-character secret), so every client accepts it."""
    return AccessKey(
        name=name,
        access_key_id="AKIA" + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(16)),
        secret_access_key="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40)),
        operations=operations, collections=collections, created_at=time.time(),
    )


def _stamp(document: dict[str, Any]) -> Stamp:
    version = int(document.get("version") or 1)
    return Stamp(version, int(document.get("min_reader", version)))


def key_file_stamp(state_dir: Path) -> Stamp | None:
    """The key file's format stamp, read without opening its secrets (None without a key file)."""
    path = state_dir / KEYS_FILE
    return _stamp(json.loads(path.read_text())) if path.exists() else None


def _from_first_format(entry: dict[str, Any]) -> AccessKey:
    return AccessKey(name=entry["profile"], access_key_id=entry["access_key_id"],
                     secret_access_key=entry["secret_access_key"], operations=SCOPES[entry["scope"]])


def _find(keys: list[AccessKey], wanted: str) -> int:
    live = [i for i, k in enumerate(keys) if wanted in (k.access_key_id, k.name) and k.revoked_at is None]
    if len(live) != 1:
        raise KeyError(f"no live key with the id or name {wanted!r}")
    return live[0]
