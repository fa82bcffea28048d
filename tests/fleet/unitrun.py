"""A stand-in for `systemctl` where no systemd runs: the fleet tests install into a temporary root.

`unitrun.py --root ROOT restart|start|stop UNIT` reads ROOT/etc/systemd/system/UNIT.service and its drop-ins, as the
role installed them, and runs the unit's ExecStart with its Environment= and EnvironmentFile= under a
clean environment, every absolute path moved under ROOT. Like `systemctl restart` on a Type=notify unit
it stops the running process (SIGTERM), then returns only once the new one says READY=1 on its
NOTIFY_SOCKET (exit 0), or exits, or outlasts the start timeout (exit 1); `start` does that only when
the unit is not running, and prints "started" when it did. `enable UNIT` is
`systemctl --root=ROOT enable UNIT`, which needs no running systemd. What systemd adds around the
process (user, sandbox, limits) is checked by `systemd-analyze`, not here.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Paths in units that the roles install under the root.
ROOTED = re.compile(r"(?<![\w/])/(?=(?:opt|etc|var)/)")
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


def unit_settings(root: Path, unit: str) -> dict[str, list[str]]:
    """[Service] settings of the unit and its drop-ins in order, each key's values as systemd accumulates them."""
    directory = root / "etc/systemd/system"
    files = [directory / f"{unit}.service", *sorted((directory / f"{unit}.service.d").glob("*.conf"))]
    settings: dict[str, list[str]] = {}
    for path in files:
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
            elif section == "[Service]":
                key, _, value = line.partition("=")
                settings.setdefault(key, [])
                if value:
                    settings[key].append(value)
                else:
                    settings[key].clear()  # an empty assignment resets the list, as in systemd
    return settings


def rooted(root: Path, text: str) -> str:
    return ROOTED.sub(str(root) + "/", text)


def environment(root: Path, settings: dict[str, list[str]]) -> dict[str, str]:
    """What systemd hands a service: a fixed PATH and the unit's own variables, nothing of the caller's."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for line in settings.get("Environment", []):
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            env[key] = rooted(root, value)
    for name in settings.get("EnvironmentFile", []):
        path = Path(rooted(root, name.removeprefix("-")))
        if not path.exists() and name.startswith("-"):
            continue
        for raw in path.read_text().splitlines():
            if raw.strip() and not raw.lstrip().startswith("#"):
                key, _, value = raw.partition("=")
                env[key.strip()] = value.strip()
    return env


def running(pidfile: Path) -> bool:
    if not pidfile.exists():
        return False
    try:
        os.kill(int(pidfile.read_text()), 0)
    except ProcessLookupError:
        return False
    return True


def stop(pidfile: Path) -> None:
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    pidfile.unlink()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def start(root: Path, unit: str, pidfile: Path) -> int:
    settings = unit_settings(root, unit)
    command = shlex.split(rooted(root, settings["ExecStart"][-1]))
    env = environment(root, settings)
    address = f"@edge-face-unitrun-{os.getpid()}"
    env["NOTIFY_SOCKET"] = address
    log = root / "var/log" / f"{unit}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + address[1:])
        notify.settimeout(0.2)
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(str(process.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if "READY=1" in notify.recv(4096).decode().splitlines():
                    return 0
            except TimeoutError:
                pass
            if process.poll() is not None:
                print(f"{unit}: exited with {process.returncode} before it was ready; see {log}", file=sys.stderr)
                pidfile.unlink()
                return 1
        print(f"{unit}: not ready after {START_TIMEOUT_S:.0f} s; see {log}", file=sys.stderr)
        stop(pidfile)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("action", choices=["start", "restart", "stop", "enable"])
    parser.add_argument("unit")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.action == "enable":
        return subprocess.run(["systemctl", f"--root={root}", "enable", f"{args.unit}.service"], check=False).returncode
    pidfile = root / "run" / f"{args.unit}.pid"
    if args.action == "start":
        if running(pidfile):
            return 0
        print("started")
    else:
        stop(pidfile)
    return 0 if args.action == "stop" else start(root, args.unit, pidfile)


if __name__ == "__main__":
    sys.exit(main())
