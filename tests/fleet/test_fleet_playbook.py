"""The ansible roles, run for real: a central and two doors installed into temporary roots on this machine.

The playbook runs with `connection: local` against a root prefix per host (ansible/README.md, "Testing"):
first `--check --diff`, then for real, then again, which must change nothing. The doors then serve from
their prefix, started as systemd would start the installed unit (tests/fleet/unitrun.py stands in for
systemctl, which cannot run here), and answer with the keys and the certificate the play put there. A
deliberately broken release is then rolled out: the first door rolls back to the release before and
serves again, and the rollout stops before the second door.
"""

from __future__ import annotations

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

    def client(self, profile: str = "admin") -> Any:
        key = next(k for k in self.keys if k["profile"] == profile)
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
    central: Path
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
    alphabet = string.ascii_uppercase + string.digits
    return [{"profile": profile, "scope": scope,
             "access_key_id": "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16)),
             "secret_access_key": secrets.token_urlsafe(30)}
            for profile, scope in (("admin", "admin"), ("kiosk", "read-only"))]


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


@pytest.fixture(scope="module")
def broken_bundle_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same bundle, but its edge-face wheel is built from sources whose `serve` exits at once."""
    root = tmp_path_factory.mktemp("broken")
    source = root / "source"
    shutil.copytree(REPO / "edge", source / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    cli = source / "edge" / "cli.py"
    text = cli.read_text()
    marker = "    from edge.server.app import serve\n"
    assert marker in text
    cli.write_text(text.replace(marker, marker + '    raise SystemExit("this release is broken on purpose")\n'))
    contents = root / "contents"
    with tarfile.open(bundle_dir / f"{PLATFORM}.tar") as tar:
        tar.extractall(contents, filter="data")
    for wheel in (contents / "wheels").glob("edge_face-*.whl"):
        wheel.unlink()
    subprocess.run([str(REPO / ".tools/bin/uv"), "build", "--wheel", "--out-dir", str(contents / "wheels"), "--quiet",
                    str(source)], check=True, capture_output=True, timeout=300)
    (contents / "wheels" / ".gitignore").unlink(missing_ok=True)
    description = json.loads((bundle_dir / f"{PLATFORM}.json").read_text()) | {"commit": "broken"}
    (root / "bundle").mkdir()
    seal(contents, description, root / "bundle" / f"{PLATFORM}.tar")
    return root / "bundle"


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
    central = root / "central"
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
            "edge_face_release_prefix": str(central),
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
    inventory["edge_face_devices"]["hosts"]["door-a"] |= {
        "edge_face_device_tls_cert": cert.read_text(), "edge_face_device_tls_key": key.read_text(),
        "edge_face_device_accelerator": "coral", "edge_face_device_allowed_networks": ["192.168.10.0/24"]}
    (root / "hosts.yml").write_text(yaml.safe_dump(inventory))
    built = Site(root, root / "hosts.yml", doors, central, database, {}, [])
    try:
        built.runs["check"] = built.playbook("--check", "--diff")
        built.after_check = sorted(str(p) for prefix in [central, *(d.prefix for d in doors)]
                                   for p in prefix.rglob("*") if p.name != "apex_0")
        built.runs["first"] = built.playbook()
        built.runs["second"] = built.playbook()
        yield built
    finally:
        for door in doors:
            subprocess.run([sys.executable, str(UNITRUN), "--root", str(door.prefix), "stop", "edge-face"], check=False)
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
        assert (door.prefix / "opt/edge-face/current/venv/bin/edge-face").exists()
        assert (door.prefix / "var/lib/edge-face/keys.json").stat().st_mode & 0o777 == 0o600
        for key in door.keys:
            assert key["secret_access_key"] not in run.output
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


def test_the_central_is_prepared_but_not_started(site: Site) -> None:
    """Until the sync issue gives `serve` its central role, the central is installed and left stopped."""
    units = site.central / "etc/systemd/system"
    assert (units / "edge-face-central.service").exists()
    assert not (units / "multi-user.target.wants/edge-face-central.service").exists()
    assert (site.central / "opt/edge-face/current/venv/bin/edge-face").exists()
    if site.database is None:
        pytest.skip("PostgreSQL 15 is not installed here: the database tasks did not run")
    assert site.database.query("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'edge_face'") == "root"


def test_a_release_that_does_not_become_ready_is_rolled_back(site: Site, broken_bundle_dir: Path) -> None:
    first, second = site.doors
    good = first.current_release()
    untouched = second.releases()
    run = site.playbook(bundle_dir=broken_bundle_dir)
    assert run.returncode != 0
    recap = run.recap()
    assert recap["door-a"]["failed"] == 1 and recap["door-a"]["rescued"] == 1, run.output[-6000:]
    # The restart fails, then the rollback's report.
    report = [line for line in run.output.splitlines() if line.startswith("fatal: [door-a]")][-1]
    assert f"Rolled back to {good}, which serves again." in " ".join(report.split()), report
    # door-a runs the release before, with its data; the rollout stopped before door-b.
    assert first.current_release() == good
    assert len(first.releases()) == 2
    deadline = time.monotonic() + 30
    while first.readyz() != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.client().list_collections()["CollectionIds"] == ["lobby"]
    assert second.releases() == untouched
    assert second.readyz() == 200
