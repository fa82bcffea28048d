"""Decode client images the way Rekognition accepts them: JPEG or PNG, at most 5 MB, at least 80x80.

The format is recognised by content, never by name, and the pixel count is read from the
header so a decompression bomb is refused before a single pixel is decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from edge.errors import ImageTooLargeException, InvalidImageFormatException, InvalidParameterException

MAX_IMAGE_BYTES = 5 * 1024 * 1024
MIN_SIDE = 80
# 40 MP: a 14 MP phone photo passes, a 20000x20000 bomb does not.
MAX_PIXELS = 40_000_000
# Images are decoded at a reduced scale until the long side is at most this: the detector
# looks at 128-192 px and a face chip is 150-160 px, so more pixels only cost time.
MAX_WORKING_SIDE = 1920

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...): all but DHT/JPG/DAC.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class DecodedImage:
    """RGB pixels plus the size of the image as the client sent it (after EXIF rotation).

    `scale` maps working pixels to original ones, so boxes can be reported as ratios of the
    original image whatever size the pipeline worked at.
    """

    rgb: np.ndarray
    width: int
    height: int
    scale: float
    format: str


def sniff_format(data: bytes) -> str:
    """Return 'jpeg' or 'png' from the magic bytes, else refuse the image."""
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    raise InvalidImageFormatException("Request has invalid image format")


def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """Width and height from the file header, without decoding pixels."""
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidImageFormatException("Request has invalid image format")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise InvalidImageFormatException("Request has invalid image format")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise InvalidImageFormatException("Request has invalid image format")


def _reduction(width: int, height: int, fmt: str) -> int:
    """The largest JPEG DCT reduction (1, 2, 4, 8) that keeps the long side >= MAX_WORKING_SIDE."""
    if fmt != "jpeg":
        return 1
    factor = 1
    while factor < 8 and max(width, height) / (factor * 2) >= MAX_WORKING_SIDE:
        factor *= 2
    return factor


_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_image(data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES) -> DecodedImage:
    """Decode bytes into a working-size RGB image, or raise the error Rekognition would.

    `max_bytes` is 5 MB for bytes sent in a request and 15 MB for an image read from S3.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidParameterException("Image bytes must be a blob")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ImageTooLargeException(
            f"Image size is too large: {len(data)} bytes, the maximum is {max_bytes} bytes")
    if not data:
        raise InvalidImageFormatException("Request has invalid image format")
    fmt = sniff_format(data)
    width, height = header_size(data, fmt)
    if width * height > MAX_PIXELS:
        raise ImageTooLargeException(
            f"Image dimensions {width}x{height} exceed the maximum of {MAX_PIXELS} pixels")
    factor = _reduction(width, height, fmt)
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR applies the EXIF orientation and turns grey and RGBA into 3-channel BGR.
    bgr = cv2.imdecode(buf, _REDUCED_FLAGS[factor])
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0:
        raise InvalidImageFormatException("Request has invalid image format")
    rotated = (bgr.shape[0] > bgr.shape[1]) != (height > width) and width != height
    orig_w, orig_h = (height, width) if rotated else (width, height)
    if min(orig_w, orig_h) < MIN_SIDE:
        raise InvalidParameterException(
            f"Requested image should have a minimum height and width of {MIN_SIDE} pixels")
    scale = 1.0
    long_side = max(bgr.shape[:2])
    if long_side > MAX_WORKING_SIDE:
        scale = MAX_WORKING_SIDE / long_side
        bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return DecodedImage(rgb=rgb, width=orig_w, height=orig_h, scale=orig_w / rgb.shape[1], format=fmt)
