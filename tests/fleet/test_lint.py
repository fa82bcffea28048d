"""The roles and the playbook pass ansible-lint's strictest profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.fleet,
    pytest.mark.skipif(shutil.which("ansible-lint", path=str(BIN)) is None,
                       reason="ansible-lint is not installed: `make test-fleet` installs it"),
]


def test_ansible_lint_production_profile_passes(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_COLOR": "1", "ANSIBLE_HOME": str(tmp_path)}
    done = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--offline"], cwd=ANSIBLE, env=env,
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed." in done.stdout + done.stderr
