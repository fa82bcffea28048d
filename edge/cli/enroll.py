"""`edge-face enroll DIR`: a folder of photos into a collection, with progress, resumable, never twice.

Layout: a photo directly in DIR is one face, its ExternalImageId the file name; a sub-folder is one
person, its name the UserId, and each photo in it a face associated with that user. Photos go
through the same operations a client calls (IndexFaces, CreateUser, AssociateFaces): over HTTP to a
running daemon, signed like the aws CLI, or straight into a state directory when no daemon runs.

Every photo's outcome is appended to a journal (fsynced) once the collection holds it, so a run cut
short by Ctrl-C or a crash resumes where it stopped. A photo indexed just before a crash, whose line
never reached the journal, is indexed again with the same bytes and ExternalImageId, which
Rekognition (and edge-face) answers with the face it already holds: nothing is enrolled twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edge import errors
from edge.config import Settings

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
#: Rekognition's pattern for ExternalImageId and UserId; other characters become "_".
_NOT_ID = re.compile(r"[^a-zA-Z0-9_.\-:]")
#: What the summary says for each way a photo can fail, by Rekognition's codes and reasons.
UNREADABLE = frozenset({"InvalidImageFormatException", "ImageTooLargeException", "ValidationException", "OSError"})
#: Errors that are about the photo; any other error (a key without rights, no such collection) stops the run.
PHOTO_ERRORS = UNREADABLE | {"InvalidParameterException"}
SEVERAL_FACES = "several faces"
NO_FACE = "no face"
RETRIES = 5


class Refused(Exception):
    """An operation the collection refused, with Rekognition's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Target(Protocol):
    """Where the photos go: a daemon over HTTP, or a state directory opened here."""

    name: str

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class DaemonTarget:
    """A running daemon, through boto3 with a profile and endpoint, as an integrator's code calls it."""

    def __init__(self, endpoint_url: str, *, profile: str | None, region: str, ca_bundle: str | None) -> None:
        import boto3
        from botocore.config import Config

        self.name = endpoint_url
        self._client = boto3.Session(profile_name=profile).client(
            "rekognition", region_name=region, endpoint_url=endpoint_url, verify=ca_bundle,
            config=Config(retries={"max_attempts": 1}))

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        method = getattr(self._client, re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower())
        try:
            reply: dict[str, Any] = method(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise Refused(error.get("Code", "Unknown"), error.get("Message", str(exc))) from None
        return reply

    def close(self) -> None:
        self._client.close()


class StateDirTarget:
    """The operations on a state directory, for when no daemon runs (the store's lock refuses otherwise)."""

    def __init__(self, settings: Settings) -> None:
        from edge.rekognition.operations import Rekognition
        from edge.rekognition.tokens import token_secret
        from edge.store import StoreLocked, open_store
        from edge.vision.pipeline import FacePipeline

        self.name = str(settings.state_dir)
        try:
            self._store = open_store(settings.state_dir, settings.store)
        except StoreLocked:
            raise SystemExit(f"{settings.state_dir} is in use by a running daemon: enrol through it with "
                             "--endpoint-url (and --profile)") from None
        try:
            self._ops = Rekognition(self._store, FacePipeline.from_settings(settings.pipeline), settings.service,
                                    secret=token_secret(settings.state_dir))
        except BaseException:
            self._store.close()
            raise

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if "Image" in params:
            params = {**params, "Image": {"Bytes": base64.b64encode(params["Image"]["Bytes"]).decode()}}
        try:
            return self._ops.call(operation, params)
        except errors.RekognitionError as exc:
            raise Refused(exc.code, exc.message) from None

    def close(self) -> None:
        self._ops.pipeline.close()
        self._store.close()


@dataclass(frozen=True)
class Photo:
    path: Path
    key: str
    """Its path under the folder: the journal's key."""
    external_image_id: str
    user_id: str | None


@dataclass
class Outcome:
    key: str
    face_id: str | None
    reason: str | None
    """Why the photo was not enrolled: a Rekognition reason or error code, or one of the words above."""


def find_photos(root: Path) -> list[Photo]:
    """Photos directly in `root` (one face each) and in its sub-folders (one user each), in name order."""
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.suffix.lower() not in PHOTO_SUFFIXES or not path.is_file() or len(relative.parts) > 2:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        user = _id(relative.parts[0])[:128] if len(relative.parts) == 2 else None
        external = _id(path.stem) if user is None else f"{user}:{_id(path.stem)}"
        found.append(Photo(path, relative.as_posix(), external[:255], user))
    return found


class Journal:
    """One JSON line per finished photo, fsynced, so a resumed run skips what is done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, Outcome] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = Outcome(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # the last line of a run killed mid-write
                self.done[entry.key] = entry
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(self, outcome: Outcome) -> None:
        os.write(self._fd, (json.dumps(asdict(outcome)) + "\n").encode())
        os.fsync(self._fd)
        self.done[outcome.key] = outcome

    def close(self) -> None:
        os.close(self._fd)


def default_journal(target: str, collection_id: str, root: Path) -> Path:
    """One journal per (daemon or state directory, collection, folder), in the user's state directory."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    digest = hashlib.sha256(f"{target}\0{collection_id}\0{root.resolve()}".encode()).hexdigest()[:16]
    return state / "edge-face" / "enroll" / f"{collection_id}-{digest}.jsonl"


def enroll_photo(target: Target, collection_id: str, photo: Photo, users: set[str]) -> Outcome:
    """Index one photo's face (and associate it with its user); refuse photos that would mislead a door."""
    try:
        image = photo.path.read_bytes()
    except OSError as exc:
        return Outcome(photo.key, None, f"OSError: {exc.strerror}")
    try:
        reply = _retrying(target, "IndexFaces", {
            "CollectionId": collection_id, "Image": {"Bytes": image}, "ExternalImageId": photo.external_image_id,
            "MaxFaces": 1, "QualityFilter": "AUTO"})
    except Refused as exc:
        if exc.code not in PHOTO_ERRORS:
            raise
        return Outcome(photo.key, None, exc.code)
    records, unindexed = reply["FaceRecords"], reply["UnindexedFaces"]
    if not records:
        reasons = [r for u in unindexed for r in u["Reasons"]]
        return Outcome(photo.key, None, ", ".join(dict.fromkeys(reasons)) if reasons else NO_FACE)
    face_id = records[0]["Face"]["FaceId"]
    if any("EXCEEDS_MAX_FACES" in u["Reasons"] for u in unindexed):
        # Which of the people is meant is a guess a door must not make: take the face back out.
        _retrying(target, "DeleteFaces", {"CollectionId": collection_id, "FaceIds": [face_id]})
        return Outcome(photo.key, None, SEVERAL_FACES)
    if photo.user_id is None:
        return Outcome(photo.key, face_id, None)
    if photo.user_id not in users:
        try:
            _retrying(target, "CreateUser", {"CollectionId": collection_id, "UserId": photo.user_id})
        except Refused as exc:
            if exc.code != "ConflictException":  # made by an earlier run
                raise
        users.add(photo.user_id)
    associated = _retrying(target, "AssociateFaces", {
        "CollectionId": collection_id, "UserId": photo.user_id, "FaceIds": [face_id]})
    failed = [r for u in associated["UnsuccessfulFaceAssociations"] for r in u["Reasons"]]
    if failed:
        _retrying(target, "DeleteFaces", {"CollectionId": collection_id, "FaceIds": [face_id]})
        return Outcome(photo.key, None, ", ".join(failed))
    return Outcome(photo.key, face_id, None)


def enroll(target: Target, collection_id: str, root: Path, journal: Journal, *, create: bool,
           console: Console) -> Counter[str]:
    """Enrol every photo of `root` the journal does not hold yet; returns counts by outcome."""
    try:
        target.call("DescribeCollection", {"CollectionId": collection_id})
    except Refused as exc:
        if exc.code != "ResourceNotFoundException" or not create:
            raise
        target.call("CreateCollection", {"CollectionId": collection_id})
    photos = find_photos(root)
    todo = [p for p in photos if p.key not in journal.done]
    users = {p.user_id for p in photos if p.user_id and p.key in journal.done and journal.done[p.key].face_id}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f} photos/s"), TimeRemainingColumn())
    started = time.monotonic()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"enrolling into {collection_id}", total=len(photos),
                                 completed=len(photos) - len(todo), rate=0.0)
        for count, photo in enumerate(todo, 1):
            journal.record(enroll_photo(target, collection_id, photo, users))
            progress.update(task, advance=1, rate=count / max(time.monotonic() - started, 1e-9))
    return Counter("enrolled" if o.face_id else "refused" for o in journal.done.values())


def summary(journal: Journal, console: Console) -> None:
    """Every photo not enrolled, with its reason, grouped as a technician reads them."""
    refused = [o for o in journal.done.values() if o.face_id is None]
    enrolled = len(journal.done) - len(refused)
    console.print(f"{enrolled} photos enrolled, {len(refused)} not enrolled (journal: {journal.path})")
    if not refused:
        return
    table = Table("photo", "why not", "Rekognition's reason")
    for outcome in sorted(refused, key=lambda o: o.key):
        reason = outcome.reason or ""
        category = _category(reason)
        table.add_row(outcome.key, category, "" if reason == category else reason)
    console.print(table)


def _category(reason: str) -> str:
    if reason in (NO_FACE, SEVERAL_FACES):
        return reason
    if reason.split(":")[0] in UNREADABLE:
        return "unreadable"
    if reason.startswith(("LOW_", "EXTREME_POSE", "SMALL_BOUNDING_BOX")):
        return "low quality"
    if "LOW_MATCH_CONFIDENCE" in reason:
        return "does not match the person's other photos"
    return "refused"


def _retrying(target: Target, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """The call, retried with backoff while the daemon says it is busy."""
    attempt = 0
    while True:
        try:
            return target.call(operation, params)
        except Refused as exc:
            attempt += 1
            if exc.code != "ThrottlingException" or attempt == RETRIES:
                raise
            time.sleep(0.2 * 2**attempt)


def _id(name: str) -> str:
    return _NOT_ID.sub("_", name) or "_"

