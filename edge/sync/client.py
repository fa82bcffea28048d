"""How a device fetches its feed: GET requests signed with its own access key (SigV4, as every client of
the API signs), so the central knows which device asks and which collections it may read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

#: The X-Amz-Target a feed request carries and signs (the central requires a signed target on every request).
SYNC_TARGET = "EdgeFaceSync.GetFeed"
SERVICE = "rekognition"
REGION = "us-east-1"
CHUNK = 256 * 1024


class SignedFetcher(FetcherInterface):
    """python-tuf's network hook: every metadata and target download goes through `_fetch`."""

    def __init__(self, access_key_id: str, secret_access_key: str, *, timeout_s: float,
                 ca_bundle: Path | None = None) -> None:
        self._credentials = Credentials(access_key_id, secret_access_key)
        self._timeout = urllib3.Timeout(connect=min(timeout_s, 10.0), read=timeout_s)
        self._pool = urllib3.PoolManager(ca_certs=str(ca_bundle) if ca_bundle else None, retries=False)

    def signed_headers(self, method: str, url: str, body: bytes = b"") -> dict[str, str]:
        request = AWSRequest(method, url, data=body, headers={"X-Amz-Target": SYNC_TARGET})
        SigV4Auth(self._credentials, SERVICE, REGION).add_auth(request)
        return dict(request.headers.items())

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self._pool.request("GET", url, headers=self.signed_headers("GET", url), preload_content=False,
                                      timeout=self._timeout)
        if response.status != 200:
            detail = response.read(4096).decode("utf-8", "replace")
            response.release_conn()
            raise DownloadHTTPError(f"{url}: HTTP {response.status} {detail}", response.status)
        return self._chunks(response)

    @staticmethod
    def _chunks(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(CHUNK)
        finally:
            response.release_conn()
