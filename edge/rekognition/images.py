"""Where a request's image comes from: its Bytes, or an S3Object read from a mapped local directory.

A kiosk that drops snapshots on disk names them as S3 objects; a bucket is a directory named in
the configuration, and nothing outside it can be reached through a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge import errors
from edge.vision.image import MAX_IMAGE_BYTES

#: Rekognition reads larger images from S3 than it accepts inline.
S3_MAX_BYTES = 15 * 1024 * 1024
_MISSING = "Unable to get object metadata from S3. Check object key, region and/or access permissions."


class ImageSource:
    """Resolves a validated `Image` parameter to bytes and the size limit that applies to them."""

    def __init__(self, buckets: dict[str, Path]) -> None:
        self._buckets = buckets

    def read(self, image: dict[str, Any]) -> tuple[bytes, int]:
        if "Bytes" in image:
            return image["Bytes"], MAX_IMAGE_BYTES
        s3 = image["S3Object"]
        root = self._buckets.get(s3.get("Bucket", ""))
        if root is None or "Name" not in s3:
            raise errors.InvalidS3ObjectException(_MISSING)
        root = root.resolve()
        path = (root / s3["Name"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise errors.InvalidS3ObjectException(_MISSING)
        return path.read_bytes(), S3_MAX_BYTES
