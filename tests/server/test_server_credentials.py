"""The key files made on first start: formats the clients read, private modes, made once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from botocore.configloader import raw_config_parse

from edge.server.credentials import CREDENTIALS_FILE, KEYS_FILE, load_or_create_keys


def test_first_start_makes_an_admin_and_a_read_only_profile(tmp_path: Path) -> None:
    keys, created = load_or_create_keys(tmp_path)
    assert created
    by_profile = {k.profile: k for k in keys.values()}
    assert {p: k.scope for p, k in by_profile.items()} == {"admin": "admin", "kiosk": "read-only"}
    for key in keys.values():
        assert re.fullmatch(r"AKIA[A-Z0-9]{16}", key.access_key_id)
        assert len(key.secret_access_key) == 40
    # The credentials file is what botocore (hence the CLI and boto3) reads for --profile.
    profiles = raw_config_parse(str(tmp_path / CREDENTIALS_FILE))
    for name, key in by_profile.items():
        assert profiles[name] == {"aws_access_key_id": key.access_key_id,
                                  "aws_secret_access_key": key.secret_access_key}
    for name in (CREDENTIALS_FILE, KEYS_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CREDENTIALS_FILE, KEYS_FILE])


def test_later_starts_read_the_same_keys(tmp_path: Path) -> None:
    first, _ = load_or_create_keys(tmp_path)
    credentials = (tmp_path / CREDENTIALS_FILE).read_text()
    again, created = load_or_create_keys(tmp_path)
    assert not created and again == first
    assert (tmp_path / CREDENTIALS_FILE).read_text() == credentials


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    load_or_create_keys(tmp_path)
    (tmp_path / KEYS_FILE).chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_keys(tmp_path)


def test_keys_can_be_added_by_editing_the_key_file(tmp_path: Path) -> None:
    load_or_create_keys(tmp_path)
    path = tmp_path / KEYS_FILE
    document = json.loads(path.read_text())
    document["keys"].append({"profile": "door-2", "access_key_id": "AKIADOOR2DOOR2DOOR20",
                             "secret_access_key": "d" * 40, "scope": "read-only"})
    path.write_text(json.dumps(document))
    keys, _ = load_or_create_keys(tmp_path)
    assert keys["AKIADOOR2DOOR2DOOR20"].scope == "read-only"


@pytest.mark.parametrize("name", [KEYS_FILE, CREDENTIALS_FILE])
def test_a_key_file_others_may_read_is_refused_not_tightened(tmp_path: Path, name: str) -> None:
    """It may have been copied already: the operator must replace it, so the daemon does not start."""
    load_or_create_keys(tmp_path)
    (tmp_path / name).chmod(0o644)
    with pytest.raises(PermissionError, match="accessible by other users"):
        load_or_create_keys(tmp_path)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
