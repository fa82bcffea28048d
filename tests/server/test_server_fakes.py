"""The daemon's HTTP layer with a fake pipeline, in this process: fast tests through boto3.

The same daemon runs with the real models in its own process in the other server tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from fakes import photo, serving

from edge.config import Settings
from edge.server.credentials import CREDENTIALS_FILE


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A uvicorn on a free loopback port serving the app with fake models: (url, credentials file)."""
    state_dir = tmp_path_factory.mktemp("fake-daemon")
    with serving(Settings(state_dir=state_dir)) as (url, _):
        yield url, state_dir / CREDENTIALS_FILE


def client(endpoint: tuple[str, Path], profile: str) -> Any:
    url, credentials = endpoint
    session = botocore.session.Session()
    session.set_config_variable("credentials_file", str(credentials))
    return boto3.Session(botocore_session=session, profile_name=profile).client(
        "rekognition", region_name="us-east-1", endpoint_url=url, config=Config(retries={"max_attempts": 1}))


def test_enrol_and_search_through_boto3(endpoint: tuple[str, Path]) -> None:
    admin, kiosk = client(endpoint, "admin"), client(endpoint, "kiosk")
    admin.create_collection(CollectionId="door")
    admin.index_faces(CollectionId="door", Image={"Bytes": photo(("ann", 40, 40, 160))}, ExternalImageId="ann")
    found = kiosk.search_faces_by_image(CollectionId="door", Image={"Bytes": photo(("ann", 200, 100, 120))})
    assert [m["Face"]["ExternalImageId"] for m in found["FaceMatches"]] == ["ann"]
    with pytest.raises(ClientError) as refused:
        kiosk.index_faces(CollectionId="door", Image={"Bytes": photo(("bob", 40, 40, 160))})
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    assert admin.describe_collection(CollectionId="door")["FaceCount"] == 1


def test_errors_keep_their_rekognition_code_and_status(endpoint: tuple[str, Path]) -> None:
    with pytest.raises(ClientError) as missing:
        client(endpoint, "admin").describe_collection(CollectionId="nowhere")
    error = missing.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("ResourceNotFoundException", 400)
