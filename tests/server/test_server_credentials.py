"""The key files: formats the clients read, private modes, made once, secrets sealed at rest, and the
first format (plain secrets) carried over."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.configloader import raw_config_parse

from edge.server.credentials import CREDENTIALS_FILE, KEYS_FILE, MASTER_KEY_FILE, SCOPES, KeyStore, key_from_spec
from edge.store import StateTooNew


def test_first_start_makes_an_admin_and_a_read_only_profile(tmp_path: Path) -> None:
    keys, created = KeyStore.open(tmp_path)
    assert created
    by_name = {k.name: k for k in keys.all()}
    assert {p: k.scope for p, k in by_name.items()} == {"admin": "admin", "kiosk": "read-only"}
    for key in by_name.values():
        assert re.fullmatch(r"AKIA[A-Z0-9]{16}", key.access_key_id)
        assert len(key.secret_access_key) == 40
    # The credentials file is what botocore (hence the CLI and boto3) reads for --profile.
    profiles = raw_config_parse(str(tmp_path / CREDENTIALS_FILE))
    for name, key in by_name.items():
        assert profiles[name] == {"aws_access_key_id": key.access_key_id,
                                  "aws_secret_access_key": key.secret_access_key}
    for name in (CREDENTIALS_FILE, KEYS_FILE, MASTER_KEY_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600


def test_secrets_are_sealed_in_the_key_file(tmp_path: Path) -> None:
    keys, _ = KeyStore.open(tmp_path)
    made = keys.create("door-3", SCOPES["search"], ["door-3"])
    text = (tmp_path / KEYS_FILE).read_text()
    for key in keys.all():
        assert key.access_key_id in text and key.secret_access_key not in text
    assert made.secret_access_key not in repr(made)
    # Without the master key the file alone gives nothing away, and a sealed secret cannot be moved to
    # another key id.
    with pytest.raises(ValueError, match="does not open with this master key"):
        KeyStore(tmp_path, master_key=bytes(32)).all()
    document = json.loads(text)
    document["keys"][0]["sealed_secret"], document["keys"][1]["sealed_secret"] = (
        document["keys"][1]["sealed_secret"], document["keys"][0]["sealed_secret"])
    (tmp_path / KEYS_FILE).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="does not open with this master key"):
        KeyStore(tmp_path).all()


def test_later_starts_read_the_same_keys(tmp_path: Path) -> None:
    first, _ = KeyStore.open(tmp_path)
    credentials = (tmp_path / CREDENTIALS_FILE).read_text()
    again, created = KeyStore.open(tmp_path)
    assert not created and again.all() == first.all()
    assert (tmp_path / CREDENTIALS_FILE).read_text() == credentials


def test_a_key_file_from_a_newer_compatible_build_is_read_and_an_incompatible_one_refused(tmp_path: Path) -> None:
    """A rollback meets the key file the newer release wrote: its additions are ignored when its min_reader
    allows it; otherwise every key is refused with a message naming both versions, and the file is left."""
    keys, _ = KeyStore.open(tmp_path)
    before = {k.access_key_id: k for k in keys.all()}
    document = json.loads((tmp_path / KEYS_FILE).read_text())
    document |= {"version": 3, "min_reader": 2, "rotation_policy": "90d"}
    for entry in document["keys"]:
        entry["last_used_at"] = 1.0
    (tmp_path / KEYS_FILE).write_text(json.dumps(document))
    assert {k.access_key_id: k for k in KeyStore(tmp_path).all()} == before

    (tmp_path / KEYS_FILE).write_text(json.dumps(document | {"min_reader": 3}))
    written = (tmp_path / KEYS_FILE).read_bytes()
    with pytest.raises(StateTooNew, match=r"format version 3.*reads up to version 2"):
        KeyStore(tmp_path).all()
    with pytest.raises(StateTooNew):
        KeyStore(tmp_path).create("door-3", SCOPES["search"], None)
    assert (tmp_path / KEYS_FILE).read_bytes() == written


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    KeyStore.open(tmp_path)
    (tmp_path / KEYS_FILE).chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        KeyStore.open(tmp_path)


def test_the_first_format_is_sealed_on_first_use(tmp_path: Path) -> None:
    (tmp_path / KEYS_FILE).write_text(json.dumps({"keys": [
        {"profile": "admin", "access_key_id": "AKIAADMINADMINADMIN0", "secret_access_key": "a" * 40, "scope": "admin"},
        {"profile": "door-2", "access_key_id": "AKIADOOR2DOOR2DOOR20", "secret_access_key": "d" * 40,
         "scope": "read-only"}]}))
    (tmp_path / KEYS_FILE).chmod(0o600)
    keys, created = KeyStore.open(tmp_path)
    assert not created
    door = keys.get("AKIADOOR2DOOR2DOOR20")
    assert door is not None and door.scope == "read-only" and door.secret_access_key == "d" * 40
    assert "d" * 40 not in (tmp_path / KEYS_FILE).read_text()


def test_revoked_and_rotated_keys_change_what_the_daemon_accepts(tmp_path: Path) -> None:
    editor, _ = KeyStore.open(tmp_path)
    daemon = KeyStore(tmp_path)  # another process's view, as the daemon's
    kiosk = editor.create("kiosk-3", SCOPES["search"], ["door-3"])
    assert daemon.get(kiosk.access_key_id) == kiosk
    rotated = editor.rotate("kiosk-3")
    assert daemon.get(kiosk.access_key_id) is None
    assert daemon.get(rotated.access_key_id) is not None and rotated.collections == frozenset({"door-3"})
    editor.revoke(rotated.access_key_id)
    assert daemon.get(rotated.access_key_id) is None
    assert [k.revoked_at is not None for k in daemon.all() if k.name == "kiosk-3"] == [True, True]
    with pytest.raises(ValueError, match="no such operations"):
        editor.create("bad", ["SearchEverything"], None)


@pytest.mark.parametrize("name", [KEYS_FILE, CREDENTIALS_FILE, MASTER_KEY_FILE])
def test_a_key_file_others_may_read_is_refused_not_tightened(tmp_path: Path, name: str) -> None:
    """It may have been copied already: the operator must replace it, so the daemon does not start."""
    KeyStore.open(tmp_path)
    (tmp_path / name).chmod(0o644)
    with pytest.raises(PermissionError, match="accessible by other users"):
        KeyStore.open(tmp_path)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def vault_key(name: str, scope: str = "admin", secret: str = "s" * 40, **extra: object) -> dict[str, object]:
    """A key as a fleet's vault holds it (ansible/: edge_face_device_access_keys)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    key_id = "AKIA" + "".join(alphabet[(ord(c) * 7 + i) % 36] for i, c in enumerate((name * 16)[:16]))
    return {"name": name, "access_key_id": key_id, "secret_access_key": secret, "scope": scope, **extra}


def test_keys_from_a_vault_are_put_as_given_and_the_others_revoked(tmp_path: Path) -> None:
    keys, _ = KeyStore.open(tmp_path)
    first = {k.access_key_id for k in keys.all()}
    given = [vault_key("enrol"), vault_key("door", "search", collections=["staff"])]
    changes = keys.put([key_from_spec(k) for k in given], revoke_others=True)
    assert sorted((c, k.name) for c, k in changes) == [("added", "door"), ("added", "enrol"),
                                                      ("revoked", "admin"), ("revoked", "kiosk")]
    for spec in given:
        key = keys.get(str(spec["access_key_id"]))
        assert key is not None and key.secret_access_key == spec["secret_access_key"]
        assert key.collections == (frozenset({"staff"}) if spec["name"] == "door" else None)
    assert all(keys.get(key_id) is None for key_id in first)
    # The same keys again change nothing: a fleet's second run is quiet.
    assert keys.put([key_from_spec(k) for k in given], revoke_others=True) == []
    assert "s" * 40 not in (tmp_path / KEYS_FILE).read_text()


def test_a_put_key_follows_its_vault_entry(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path)
    old = vault_key("door")
    keys.put([key_from_spec(old)])
    # A new secret for the same id is an update; a new id under the same name rotates the old one out.
    assert [c for c, _ in keys.put([key_from_spec(vault_key("door", secret="t" * 40))])] == ["updated"]
    rotated = {**vault_key("door"), "access_key_id": "AKIAROTATEDROTATED00"}
    assert sorted(c for c, _ in keys.put([key_from_spec(rotated)])) == ["added", "revoked"]
    assert keys.get(str(old["access_key_id"])) is None
    with pytest.raises(ValueError, match="was revoked"):
        keys.put([key_from_spec(old)])


@pytest.mark.parametrize(("spec", "problem"), [
    (vault_key("door", scope="everything"), "scope is one of"),
    (vault_key("door", secret="short-secret"), "secret_access_key"),
    ({**vault_key("door"), "scope": None, "operations": ["IndexFaces", "Teleport"]}, "no such operations: Teleport"),
    ({**vault_key("door"), "access_key_id": "akia-lower"}, "access_key_id"),
])
def test_a_bad_vault_entry_is_refused_naming_the_field_not_the_secret(tmp_path: Path, spec: dict[str, object],
                                                                      problem: str) -> None:
    keys, _ = KeyStore.open(tmp_path)
    before = (tmp_path / KEYS_FILE).read_bytes()
    with pytest.raises(ValueError, match=problem) as refused:
        keys.put([key_from_spec(vault_key("good")), key_from_spec(spec)], revoke_others=True)
    assert "short-secret" not in str(refused.value)
    assert (tmp_path / KEYS_FILE).read_bytes() == before


def test_keys_import_reads_the_vault_from_stdin_and_prints_no_secret(tmp_path: Path) -> None:
    given = json.dumps([vault_key("enrol"), vault_key("kiosk-door", "read-only")])

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.cli", "keys", "--state-dir", str(tmp_path), "import",
                               "--exclusive"], input=given, capture_output=True, text=True, timeout=60, check=False)

    first, second = run(), run()
    assert first.returncode == 0, first.stderr
    assert sorted(line.split()[0] for line in first.stdout.splitlines()) == ["added", "added"]
    assert second.stdout == "unchanged\n"
    assert "s" * 40 not in first.stdout + first.stderr
