"""`edge-face state`: which builds may open the state directory, and the snapshot a fleet's rollback restores.

ansible asks the running release (`check --json`) which versions of each format it reads, then the new one
(`check --json --previous '<that answer>'`) whether the running one will still read the state once the new
one has opened it. When it will not, the play takes a snapshot before switching and restores it if the new
release fails. A release from before format stamps answers nothing; it reads only the versions it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.server import credentials
from edge.store.formats import Stamp, previous_reads
from edge.store.state import FORMATS, LEGACY, found_stamps

#: This build's formats, the key file's included (written by the new release before the switch).
BUILD: dict[str, Stamp] = {**FORMATS, "keys": credentials.STAMP}
#: What builds from before stamps read: only these versions.
BUILD_LEGACY: dict[str, int] = {**LEGACY, "keys": 2}
#: The formats the daemon migrates when it starts, which a snapshot taken just before the switch restores.
SNAPSHOT_FORMATS = tuple(FORMATS)


def _previous_versions(answer: str | None) -> dict[str, int | None] | None:
    """The versions the previous release reads, from its own `check --json` (None per format: it is from
    before stamps, and said nothing); None when no previous release was given."""
    if answer is None:
        return None
    try:
        formats = json.loads(answer)["formats"]
        return {name: int(formats[name]["build"]["version"]) for name in BUILD}
    except (ValueError, KeyError, TypeError):
        return dict.fromkeys(BUILD)


def assess(state_dir: Path, previous: str | None) -> dict[str, Any]:
    """Per format: the stamp on disk, this build's, whether this build reads it, what it leaves after opening
    it, and whether the previous release reads that; then whether a rollback needs a snapshot, and any reason
    to stop the upgrade before it changes anything."""
    found = found_stamps(state_dir) | {"keys": credentials.key_file_stamp(state_dir)}
    versions = _previous_versions(previous)
    formats: dict[str, Any] = {}
    for name, build in BUILD.items():
        on_disk = found[name]
        after = build if on_disk is None else on_disk.opened_by(build)
        formats[name] = {
            "found": None if on_disk is None else on_disk.as_dict(),
            "build": build.as_dict(),
            "readable": on_disk is None or on_disk.readable_by(build.version),
            "after": after.as_dict(),
            "previous_reads": None if versions is None else previous_reads(after, versions[name], BUILD_LEGACY[name]),
        }
    refuse = None
    unreadable = [name for name, f in formats.items() if not f["readable"] and name != "index"]  # index: a cache
    if unreadable:
        refuse = f"this release cannot read the state's {', '.join(unreadable)}, written by a newer build"
    elif formats["keys"]["previous_reads"] is False:
        refuse = ("the previous release could not read the key file this release writes before the switch; "
                  "upgrade through a release that reads both")
    return {
        "state_dir": str(state_dir),
        "formats": formats,
        "snapshot": any(formats[name]["previous_reads"] is False for name in SNAPSHOT_FORMATS),
        "refuse": refuse,
    }


def show(report: dict[str, Any]) -> str:
    """The assessment for a person: one line per format, then the verdict."""

    def stamp(value: dict[str, int] | None) -> str:
        return "absent" if value is None else f"version {value['version']} (readable from {value['min_reader']})"

    lines = []
    for name, f in report["formats"].items():
        line = (f"{name:<11} on disk {stamp(f['found'])}; this build writes {stamp(f['build'])}: "
                + ("reads it" if f["readable"] else "CANNOT READ IT"))
        if f["previous_reads"] is not None:
            line += "; the previous release " + ("reads" if f["previous_reads"] else "CANNOT READ") + " what it leaves"
        lines.append(line)
    if report["refuse"]:
        lines.append(f"refused: {report['refuse']}")
    elif report["snapshot"]:
        lines.append("a rollback to the previous release needs the state as it is now: snapshot it before the switch")
    return "\n".join(lines)
