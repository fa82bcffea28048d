"""The ansible roles, run for real: a central and two doors installed into temporary roots on this machine.

The playbook runs with `connection: local` against a root prefix per host (ansible/README.md, "Testing"):
first `--check --diff`, then for real, then again, which must change nothing. The central and the doors
then serve from their prefix, started as systemd would start the installed unit (tests/fleet/unitrun.py
stands in for systemctl, which cannot run here): the central on a throwaway PostgreSQL, the doors with
the keys and the certificate the play put there, one door following a collection enrolled at the
central with the sync key the play made for it. A deliberately broken release is then rolled out: the
first door rolls back to the release before and serves again, and the rollout stops before the second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import string
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError
from systemd_analyze import MAX_EXPOSURE, exposure, verify
from unitrun import rooted

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
UNITRUN = Path(__file__).with_name("unitrun.py")
PLATFORM = f"{os.uname().machine}-cp{sys.version_info[0]}{sys.version_info[1]}"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_PYTHON = "/usr/bin/python3"
RECAP = re.compile(r"^(\S+)\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)"
                   r"\s+rescued=(\d+)\s+ignored=(\d+)", re.M)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.fleet,
    pytest.mark.skipif(shutil.which("ansible-playbook", path=str(BIN)) is None,
                       reason="ansible is not installed: `make test-fleet` installs it"),
]


@dataclass
class Door:
    name: str
    prefix: Path
    port: int
    keys: list[dict[str, str]]
    cert: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.cert else 'http'}://127.0.0.1:{self.port}"

    def readyz(self) -> int:
        context = ssl.create_default_context(cafile=str(self.cert)) if self.cert else None
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=10, context=context) as reply:
                return int(reply.status)
        except OSError:
            return 0

    def client(self, name: str = "admin") -> Any:
        key = next(k for k in self.keys if k["name"] == name)
        return boto3.client("rekognition", region_name="us-east-1", endpoint_url=self.url,
                            aws_access_key_id=key["access_key_id"], aws_secret_access_key=key["secret_access_key"],
                            verify=str(self.cert) if self.cert else None, config=Config(retries={"max_attempts": 1}))

    def current_release(self) -> str:
        return os.readlink(self.prefix / "opt/edge-face/current").removeprefix("releases/")

    def releases(self) -> list[str]:
        return sorted(p.name for p in (self.prefix / "opt/edge-face/releases").iterdir())


@dataclass
class Run:
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        names = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
        return {m.group(1): dict(zip(names, map(int, m.groups()[1:]), strict=True))
                for m in RECAP.finditer(self.output)}


@dataclass
class Site:
    root: Path
    inventory: Path
    doors: list[Door]
    central: Door
    database: PostgreSQL | None
    runs: dict[str, Run]
    #: What the check run left in the doors' roots: nothing, it must be.
    after_check: list[str]
    logs: int = 0

    def playbook(self, *args: str, bundle_dir: Path | None = None) -> Run:
        extra = ["-e", json.dumps({"edge_face_release_bundle_dir": str(bundle_dir)})] if bundle_dir else []
        temp = str(self.root / "ansible-tmp")
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_HOME": str(self.root / "ansible-home"),
               "ANSIBLE_LOCAL_TEMP": temp, "ANSIBLE_REMOTE_TMP": temp, "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_PIPELINING": "1"}
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.inventory), "site.yml", *extra, *args],
                              cwd=ANSIBLE, env=env, capture_output=True, text=True, check=False, timeout=1800)
        self.logs += 1
        (self.root / f"playbook-{self.logs}.log").write_text(done.stdout + done.stderr)  # for a failure's reader
        return Run(done.returncode, done.stdout + done.stderr)


class PostgreSQL:
    """A throwaway cluster run by Debian's `postgres` user, on a socket in a temporary directory."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="edge-face-pg-"))
        self.directory.chmod(0o755)
        shutil.chown(self.directory, "postgres")
        self.port = free_port()
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.directory / "data"), "--auth-local=peer")
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-l", str(self.directory / "log"),
                          "-w", "-o", f"-k {self.directory} -p {self.port} -c listen_addresses=''", "start")

    def _as_postgres(self, *command: str) -> str:
        return subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True,
                              check=True, timeout=120).stdout

    def query(self, sql: str) -> str:
        return self._as_postgres("psql", "-h", str(self.directory), "-p", str(self.port), "-XtAc", sql).strip()

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def access_keys() -> list[dict[str, str]]:
    """An admin and a read-only key, as a site's vault holds them (ansible/README.md)."""
    alphabet = string.ascii_uppercase + string.digits
    return [{"name": name, "scope": scope,
             "access_key_id": "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16)),
             "secret_access_key": secrets.token_urlsafe(30)}
            for name, scope in (("admin", "admin"), ("kiosk", "read-only"))]


def certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "door.crt", directory / "door.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=door-a",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def seal(contents: Path, description: dict[str, Any], archive: Path) -> None:
    """Pack a bundle's files as ansible/scripts/build-bundle does: SHA256SUMS, the archive, its description."""
    files = {str(p.relative_to(contents)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(contents.glob("*/*")) if p.is_file()}
    (contents / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in files.items()))
    with tarfile.open(archive, "w") as tar:
        for name in ("SHA256SUMS", "wheels", "systemd"):
            tar.add(contents / name, arcname=name)
    description = description | {"files": files, "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}
    archive.with_suffix(".json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    found = Path(os.environ.get("EDGE_FACE_BUNDLE", REPO / "dist" / "bundle"))
    if not (found / f"{PLATFORM}.json").is_file():
        pytest.skip(f"no release bundle {found / PLATFORM}.json: `make bundle` builds it")
    return found


def rebuilt_bundle(bundle_dir: Path, root: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    """The same bundle, but its edge-face wheel is built from these sources with each (marker, replacement)
    made in the file named."""
    source = root / "source"
    shutil.copytree(REPO / "edge", source / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name, replacements in edits.items():
        text = (source / name).read_text()
        for marker, replacement in replacements:
            assert marker in text, (name, marker)
            text = text.replace(marker, replacement)
        (source / name).write_text(text)
    contents = root / "contents"
    with tarfile.open(bundle_dir / f"{PLATFORM}.tar") as tar:
        tar.extractall(contents, filter="data")
    for wheel in (contents / "wheels").glob("edge_face-*.whl"):
        wheel.unlink()
    subprocess.run([str(REPO / ".tools/bin/uv"), "build", "--wheel", "--out-dir", str(contents / "wheels"), "--quiet",
                    str(source)], check=True, capture_output=True, timeout=300)
    (contents / "wheels" / ".gitignore").unlink(missing_ok=True)
    description = json.loads((bundle_dir / f"{PLATFORM}.json").read_text()) | {"commit": root.name}
    (root / "bundle").mkdir()
    seal(contents, description, root / "bundle" / f"{PLATFORM}.tar")
    return root / "bundle"


SERVE = "    from edge.server.app import serve\n"


@pytest.fixture(scope="module")
def broken_bundle_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same bundle, but its edge-face wheel is built from sources whose `serve` exits at once."""
    return rebuilt_bundle(bundle_dir, tmp_path_factory.mktemp("broken"), {"edge/cli/__init__.py": [
        (SERVE, SERVE + '    raise SystemExit("this release is broken on purpose")\n')]})


@pytest.fixture(scope="module")
def migrating_bundle_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release whose store schema (version 4) the release before it cannot read (min_reader 4), and whose
    `serve` migrates the state to it and then fails: what a rollback must undo."""
    return rebuilt_bundle(bundle_dir, tmp_path_factory.mktemp("migrating"), {
        "edge/store/db.py": [
            ("SCHEMA_VERSION = 3\nMIN_READER = 2\n", "SCHEMA_VERSION = 4\nMIN_READER = 4\n"),
            ("_MIGRATIONS = {1: _REQUESTS, 2: _TAGS}",
             '_MIGRATIONS = {1: _REQUESTS, 2: _TAGS, 3: "CREATE TABLE v4 (x);"}')],
        "edge/cli/__init__.py": [(SERVE, SERVE + "    from edge.store import open_store\n\n"
                                  "    open_store(Path(args.state_dir), settings.store).close()\n"
                                  '    raise SystemExit("this release migrates the state, then fails on purpose")\n')],
    })


@pytest.fixture(scope="module")
def site(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The example site's shape, in temporary roots: the check run, the first run and the second run done."""
    root = tmp_path_factory.mktemp("site")
    cert, key = certificate(root)
    doors = [Door("door-a", root / "door-a", free_port(), access_keys(), cert),
             Door("door-b", root / "door-b", free_port(), access_keys())]
    (doors[0].prefix / "dev").mkdir(parents=True)
    (doors[0].prefix / "dev" / "apex_0").touch()  # where a Coral's node would be
    database = PostgreSQL() if shutil.which("runuser") and (PG_BIN / "initdb").exists() else None
    central = Door("central", root / "central", free_port(), access_keys())
    service_command = [sys.executable, str(UNITRUN), "--root", "{{ edge_face_release_prefix }}"]
    inventory: dict[str, Any] = {
        "all": {"vars": {
            "ansible_connection": "local",
            # Modules also run as `postgres`, which cannot enter this venv's home: the system's Python, as on a device.
            "ansible_python_interpreter": SYSTEM_PYTHON if Path(SYSTEM_PYTHON).exists() else sys.executable,
            "ansible_become_method": "su",
            "edge_face_release_bundle_dir": str(bundle_dir),
            "edge_face_release_model_source": os.environ["EDGE_FACE_PIPELINE__MODEL_DIR"],
            "edge_face_release_manage_packages": False,
            "edge_face_release_manage_users": False,
            "edge_face_release_service_command": service_command,
            "edge_face_release_ready_timeout_s": 120,
            "edge_face_device_user": "root",
            "edge_face_central_user": "root",
        }},
        "edge_face_central": {"hosts": {"central": {
            "edge_face_release_prefix": str(central.prefix),
            "edge_face_central_settings": {"server": {"port": central.port}},
            "edge_face_central_access_keys": central.keys,
            # Without PostgreSQL here the central is installed, not run.
            "edge_face_central_serve": database is not None,
            "edge_face_central_manage_database": database is not None,
            **({"edge_face_central_pg_socket_dir": str(database.directory),
                "edge_face_central_pg_port": database.port} if database else {}),
        }}},
        "edge_face_devices": {"hosts": {door.name: {
            "edge_face_release_prefix": str(door.prefix),
            "edge_face_device_settings": {"server": {"port": door.port}},
            "edge_face_device_access_keys": door.keys,
        } for door in doors}},
    }
    if database is not None:  # door-b follows the central's "staff", polling every second
        inventory["edge_face_devices"]["hosts"]["door-b"] |= {
            "edge_face_device_settings": {"server": {"port": doors[1].port}, "sync": {"interval_s": 1}},
            "edge_face_device_sync_collections": ["staff"], "edge_face_device_sync_central_url": central.url}
    inventory["edge_face_devices"]["hosts"]["door-a"] |= {
        "edge_face_device_tls_cert": cert.read_text(), "edge_face_device_tls_key": key.read_text(),
        "edge_face_device_accelerator": "coral", "edge_face_device_allowed_networks": ["192.168.10.0/24"]}
    (root / "hosts.yml").write_text(yaml.safe_dump(inventory))
    built = Site(root, root / "hosts.yml", doors, central, database, {}, [])
    try:
        built.runs["check"] = built.playbook("--check", "--diff")
        built.after_check = sorted(str(p) for prefix in [central.prefix, *(d.prefix for d in doors)]
                                   for p in prefix.rglob("*") if p.name != "apex_0")
        built.runs["first"] = built.playbook()
        built.runs["second"] = built.playbook()
        yield built
    finally:
        for door in doors:
            subprocess.run([sys.executable, str(UNITRUN), "--root", str(door.prefix), "stop", "edge-face"], check=False)
        subprocess.run([sys.executable, str(UNITRUN), "--root", str(central.prefix), "stop", "edge-face-central"],
                       check=False)
        if database is not None:
            database.stop()


def test_check_mode_shows_the_changes_and_makes_none(site: Site) -> None:
    run = site.runs["check"]
    assert run.returncode == 0, run.output[-6000:]
    assert "+++ after" in run.output  # --diff shows what would be written
    assert all(counts["failed"] == 0 for counts in run.recap().values())
    assert site.after_check == [str(site.doors[0].prefix / "dev")]
    # Secrets never reach the output, not even as a diff.
    for door in site.doors:
        for key in door.keys:
            assert key["secret_access_key"] not in run.output


def test_the_first_run_installs_doors_that_serve_with_the_site_keys(site: Site) -> None:
    run = site.runs["first"]
    assert run.returncode == 0, run.output[-6000:]
    assert set(run.recap()) == {"central", "door-a", "door-b"}
    for door in site.doors:
        assert door.readyz() == 200
        assert not (door.prefix / "var/lib/edge-face/credentials").exists()  # the first start's keys: revoked
        assert (door.prefix / "opt/edge-face/current/venv/bin/edge-face").exists()
        key_file = door.prefix / "var/lib/edge-face/keys.json"
        assert key_file.stat().st_mode & 0o777 == 0o600
        for key in door.keys:
            assert key["secret_access_key"] not in run.output + key_file.read_text()  # sealed
        admin, kiosk = door.client("admin"), door.client("kiosk")
        admin.create_collection(CollectionId="lobby")
        assert kiosk.list_collections()["CollectionIds"] == ["lobby"]
        with pytest.raises(ClientError, match="AccessDenied"):
            kiosk.create_collection(CollectionId="not-allowed")
    # door-a: HTTPS with its certificate, whose key is private to the daemon's user.
    assert site.doors[0].url.startswith("https://")
    assert (site.doors[0].prefix / "etc/edge-face/tls/device.key").stat().st_mode & 0o777 == 0o600


def test_a_second_run_changes_nothing(site: Site) -> None:
    run = site.runs["second"]
    assert run.returncode == 0, run.output[-6000:]
    recap = run.recap()
    assert set(recap) == {"central", "door-a", "door-b"}
    assert {host: counts["changed"] for host, counts in recap.items()} == {"central": 0, "door-a": 0, "door-b": 0}


def test_the_installed_units_verify_and_stay_closed(site: Site, tmp_path: Path) -> None:
    """The units and drop-ins as the play left them, with their paths under the door's root."""
    for door in site.doors:
        installed = door.prefix / "etc/systemd/system"
        copy = tmp_path / door.name
        shutil.copytree(installed, copy, symlinks=True)
        for path in [copy / "edge-face.service", *copy.glob("edge-face.service.d/*.conf")]:
            path.write_text(rooted(door.prefix, path.read_text()))
        assert (installed / "multi-user.target.wants/edge-face.service").is_symlink()  # enabled
        done = verify(copy / "edge-face.service")
        assert (done.returncode, done.stderr) == (0, "")
        assert exposure(copy / "edge-face.service") <= MAX_EXPOSURE
    accelerator = (site.doors[0].prefix / "etc/systemd/system/edge-face.service.d/accelerator.conf").read_text()
    assert "DeviceAllow=/dev/apex_0 rw" in accelerator
    assert not (site.doors[1].prefix / "etc/systemd/system/edge-face.service.d/accelerator.conf").exists()


def test_a_door_follows_what_is_enrolled_at_the_central(site: Site, faces_dev: Path) -> None:
    """The central on PostgreSQL, enrolled through boto3; door-b, given its sync key by the play, finds the face."""
    if site.database is None:
        pytest.skip("PostgreSQL 15 is not installed here: the central was installed, not run")
    assert site.database.query("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'edge_face'") == "root"
    assert (site.central.prefix / "etc/systemd/system/multi-user.target.wants/edge-face-central.service").is_symlink()
    door = site.doors[1]
    assert (door.prefix / "etc/edge-face/edge-face.env").stat().st_mode & 0o777 == 0o600
    person = next(d for d in sorted(faces_dev.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2)
    enrolled, visitor = sorted(person.glob("*.jpg"))[:2]
    central = site.central.client()
    central.create_collection(CollectionId="staff")
    face = central.index_faces(CollectionId="staff", Image={"Bytes": enrolled.read_bytes()},
                               ExternalImageId=person.name)["FaceRecords"][0]["Face"]["FaceId"]
    kiosk = door.client("kiosk")
    deadline = time.monotonic() + 90
    matches: list[Any] = []
    while not matches and time.monotonic() < deadline:
        with contextlib.suppress(ClientError):  # not synced yet
            matches = kiosk.search_faces_by_image(CollectionId="staff", Image={"Bytes": visitor.read_bytes()},
                                                  FaceMatchThreshold=70)["FaceMatches"]
        time.sleep(1)
    assert [m["Face"]["FaceId"] for m in matches] == [face]
    with pytest.raises(ClientError, match="InvalidParameter"):  # read-only on the door: enrol at the central
        door.client().index_faces(CollectionId="staff", Image={"Bytes": enrolled.read_bytes()})


def rolled_back(run: Run, host: str, to: str) -> None:
    """The host failed, after its rescue, with the rollback's report as its last word."""
    counts = run.recap()[host]
    assert counts["failed"] == 1 and counts["rescued"] == 1, run.output[-6000:]
    report = [line for line in run.output.splitlines() if line.startswith(f"fatal: [{host}]")][-1]
    assert f"Rolled back to {to}, which serves again." in " ".join(report.split()), report


def test_a_central_that_does_not_become_ready_stops_the_rollout_before_any_door(
        site: Site, broken_bundle_dir: Path) -> None:
    if site.database is None:
        pytest.skip("PostgreSQL 15 is not installed here: the central was installed, not run")
    good = site.central.current_release()
    doors = {door.name: door.releases() for door in site.doors}
    run = site.playbook(bundle_dir=broken_bundle_dir)
    assert run.returncode != 0
    rolled_back(run, "central", good)
    assert site.central.current_release() == good
    assert site.central.readyz() == 200
    assert set(run.recap()) == {"central"}
    assert {door.name: door.releases() for door in site.doors} == doors


def test_a_door_that_does_not_become_ready_is_rolled_back_and_the_rollout_stops(
        site: Site, broken_bundle_dir: Path) -> None:
    """The doors alone (`--limit`), as a site updates them: the first door is the canary."""
    first, second = site.doors
    good = first.current_release()
    untouched = second.releases()
    run = site.playbook("--limit", "edge_face_devices", bundle_dir=broken_bundle_dir)
    assert run.returncode != 0
    rolled_back(run, "door-a", good)
    # door-a runs the release before, with its data; the rollout stopped before door-b.
    assert first.current_release() == good
    assert len(first.releases()) == 2
    deadline = time.monotonic() + 30
    while first.readyz() != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "lobby" in first.client().list_collections()["CollectionIds"]
    assert "door-b" not in run.recap()
    assert second.releases() == untouched
    assert second.readyz() == 200


def test_a_release_that_migrates_the_state_out_of_reach_and_fails_is_rolled_back_with_the_state(
        site: Site, migrating_bundle_dir: Path, faces_dev: Path) -> None:
    """The new release moves the store's schema to a version the release before it cannot read, then fails
    readiness: the rollback puts the state back from the snapshot taken before the switch, so the previous
    release serves again with every face enrolled before, and no snapshot is left on the door."""
    door = site.doors[0]
    good = door.current_release()
    admin = door.client()
    admin.create_collection(CollectionId="staff-a")
    people = [d for d in sorted(faces_dev.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2][:3]
    enrolled = {person.name: admin.index_faces(
        CollectionId="staff-a", Image={"Bytes": sorted(person.glob("*.jpg"))[0].read_bytes()},
        ExternalImageId=person.name, MaxFaces=1)["FaceRecords"][0]["Face"]["FaceId"] for person in people}
    run = site.playbook("--limit", "door-a", bundle_dir=migrating_bundle_dir)
    assert run.returncode != 0
    log = (door.prefix / "var/log/edge-face.log").read_text()
    assert "this release migrates the state, then fails on purpose" in log  # it did: the store was at version 4
    rolled_back(run, "door-a", good)
    assert "Its state was put back as it was before the upgrade." in " ".join(run.output.split())
    assert door.current_release() == good
    deadline = time.monotonic() + 30
    while door.readyz() != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert door.readyz() == 200
    assert {f["FaceId"] for f in admin.list_faces(CollectionId="staff-a")["Faces"]} == set(enrolled.values())
    kiosk = door.client("kiosk")
    for person in people:
        visitor = sorted(person.glob("*.jpg"))[1].read_bytes()
        matches = kiosk.search_faces_by_image(CollectionId="staff-a", Image={"Bytes": visitor},
                                              FaceMatchThreshold=70)["FaceMatches"]
        assert matches and matches[0]["Face"]["FaceId"] == enrolled[person.name]
    state = door.prefix / "var/lib/edge-face"
    assert not (state / "rollback-snapshot").exists()
    assert sorted(p.name for p in state.iterdir() if "snapshot" in p.name) == []
