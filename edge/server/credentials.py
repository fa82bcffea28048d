"""The daemon's access keys, made on first start.

Two files in the state directory, both mode 0600 and written atomically:

- `keys.json` is what the daemon checks: every key with its secret and its scope (`admin` may call
  every operation, `read-only` only Search*, Detect*, Compare*, List*, Describe*). Keys are added,
  rotated or revoked by editing it (and restarting).
- `credentials` is the client-facing copy in the AWS shared-credentials format, with an `admin` and
  a read-only `kiosk` profile: `AWS_SHARED_CREDENTIALS_FILE=... aws --profile kiosk ...`. The daemon
  never reads it, so a scope cannot be widened by editing what clients are handed.
"""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.files import check_private, write_private

Scope = Literal["admin", "read-only"]
KEYS_FILE = "keys.json"
CREDENTIALS_FILE = "credentials"
#: The profiles made on first start and their scopes.
PROFILES: dict[str, Scope] = {"admin": "admin", "kiosk": "read-only"}
_KEY_ID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


class AccessKey(BaseModel):
    """One access key as `keys.json` holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str
    access_key_id: str = Field(pattern=r"^[A-Z0-9]{16,128}$")
    secret_access_key: str = Field(min_length=16)
    scope: Scope


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[AccessKey]


def load_or_create_keys(state_dir: Path) -> tuple[dict[str, AccessKey], bool]:
    """The daemon's keys by access key id, and whether they were just made (then `credentials` is new too).

    A `keys.json` or `credentials` that others may read is refused, as ssh refuses a world-readable private key.
    """
    path = state_dir / KEYS_FILE
    if not path.exists():
        keys = [_new_key(profile, scope) for profile, scope in PROFILES.items()]
        # credentials first: keys.json appearing is what marks the pair complete.
        write_private(state_dir / CREDENTIALS_FILE, credentials_text(keys))
        write_private(path, _KeyFile(keys=keys).model_dump_json(indent=2) + "\n")
        return {k.access_key_id: k for k in keys}, True
    for secret in (path, state_dir / CREDENTIALS_FILE):
        if secret.exists():
            check_private(secret)
    keys = _KeyFile.model_validate(json.loads(path.read_text())).keys
    return {k.access_key_id: k for k in keys}, False


def credentials_text(keys: list[AccessKey]) -> str:
    """The keys as an AWS shared-credentials file, one profile each."""
    lines = [
        "# edge-face access keys, made on the device's first start. Give each client only the profile it needs:",
        "# admin may call every operation; kiosk is read-only (Search*, Detect*, Compare*, List*, Describe*).",
        f"# The daemon checks {KEYS_FILE} beside this file: editing this copy changes nothing.",
    ]
    for key in keys:
        lines += ["", f"[{key.profile}]", f"aws_access_key_id = {key.access_key_id}",
                  f"aws_secret_access_key = {key.secret_access_key}"]
    return "\n".join(lines) + "\n"


def _new_key(profile: str, scope: Scope) -> AccessKey:
    """A key shaped like AWS's own (AKIA + 16, 40-character secret), so every client accepts it."""
    return AccessKey(
        profile=profile,
        access_key_id="AKIA" + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(16)),
        secret_access_key="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40)),
        scope=scope,
    )
