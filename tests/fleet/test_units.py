"""The systemd units as systemd itself reads them: no warning from `verify`, and little exposure.

`systemd-analyze verify` exits 0 on warnings (an unknown key is ignored, with a line on stderr), so any
stderr fails. It also checks that ExecStart's program exists: the units are rendered with this venv's
`edge-face` in place of the installed release's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from systemd_analyze import MAX_EXPOSURE, UNITS, exposure, render, verify

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


@pytest.mark.parametrize("name", UNITS)
def test_units_verify_without_a_single_warning(tmp_path: Path, name: str) -> None:
    done = verify(render(name, tmp_path))
    assert (done.returncode, done.stderr) == (0, "")


def test_verify_would_report_a_misspelt_setting(tmp_path: Path) -> None:
    """The check above can fail: a typo is only a warning to systemd, and an exit status of 0."""
    done = verify(render("edge-face.service", tmp_path, extra="WatchdogSecs=5"))
    assert done.returncode == 0
    assert "Unknown key 'WatchdogSecs'" in done.stderr


@pytest.mark.parametrize("name", UNITS)
def test_units_expose_little(tmp_path: Path, name: str) -> None:
    assert exposure(render(name, tmp_path)) <= MAX_EXPOSURE
