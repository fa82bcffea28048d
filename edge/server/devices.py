"""The central's device keys: each device has its own access key, scoped to the collections it follows.

`devices.json` (0600, beside the central's state or at `feed.devices_file`) holds every device's
key and collections. The central re-reads it whenever it changes, so `edge-face central revoke-device`
shuts one stolen key out at once, without a restart and without touching the other devices.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edge.files import write_private
from edge.server.credentials import AccessKey, new_key

DEVICES_FILE = "devices.json"


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    access_key_id: str = Field(pattern=r"^[A-Z0-9]{16,128}$")
    secret_access_key: str = Field(min_length=16)
    collections: list[str]


class _DeviceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[Device] = []


class DeviceRegistry(Mapping[str, AccessKey]):
    """The devices file as the Authenticator's key mapping (by access key id), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._devices: dict[str, Device] = {}

    def device(self, access_key_id: str) -> Device | None:
        return self._current().get(access_key_id)

    def devices(self) -> list[Device]:
        return list(self._current().values())

    def add(self, name: str, collections: list[str]) -> Device:
        """A new device with a fresh key (AWS-shaped, so any SigV4 client signs with it)."""
        with self._lock:
            devices = self._read()
            if any(d.name == name for d in devices.values()):
                raise ValueError(f"a device named {name!r} exists: revoke it first")
            key = new_key(name, frozenset(), frozenset(collections))
            device = Device(name=name, access_key_id=key.access_key_id, secret_access_key=key.secret_access_key,
                            collections=collections)
            self._write([*devices.values(), device])
            return device

    def revoke(self, name: str) -> bool:
        """Remove one device's key; the others are untouched."""
        with self._lock:
            devices = self._read()
            kept = [d for d in devices.values() if d.name != name]
            if len(kept) == len(devices):
                return False
            self._write(kept)
            return True

    def __getitem__(self, access_key_id: str) -> AccessKey:
        device = self._current()[access_key_id]
        # A device key calls no Rekognition operation: it reads its collections' feeds, nothing else.
        return AccessKey(name=device.name, access_key_id=device.access_key_id,
                         secret_access_key=device.secret_access_key, operations=frozenset(),
                         collections=frozenset(device.collections))

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def _current(self) -> dict[str, Device]:
        with self._lock:
            return self._read()

    def _read(self) -> dict[str, Device]:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            self._stamp, self._devices = None, {}
            return self._devices
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            if stat.st_mode & 0o077:
                raise PermissionError(f"{self._path} is accessible by other users: chmod 600 it")
            parsed = _DeviceFile.model_validate(json.loads(self._path.read_text()))
            self._devices = {d.access_key_id: d for d in parsed.devices}
            self._stamp = stamp
        return self._devices

    def _write(self, devices: list[Device]) -> None:
        write_private(self._path, _DeviceFile(devices=devices).model_dump_json(indent=2) + "\n")
        self._stamp = None
