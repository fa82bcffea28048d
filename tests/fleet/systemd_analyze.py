"""systemd's own checks of a unit file: `verify` (warnings included) and `security`'s exposure score."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNITS = ("edge-face.service", "edge-face-central.service")
INSTALLED = "/opt/edge-face/current/venv/bin/edge-face"
#: The issue's bar for the device unit; the central is held to the same.
MAX_EXPOSURE = 1.5


def render(name: str, directory: Path, extra: str = "") -> Path:
    """The unit from systemd/, running this venv's edge-face, plus `extra` lines in [Service]."""
    text = (REPO / "systemd" / name).read_text()
    assert INSTALLED in text
    text = text.replace(INSTALLED, str(Path(sys.executable).parent / "edge-face"))
    if extra:
        text = text.replace("[Service]\n", f"[Service]\n{extra}\n", 1)
    unit = directory / name
    unit.write_text(text)
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False,
                          timeout=60)


def exposure(unit: Path) -> float:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, check=False, timeout=60)
    found = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))
