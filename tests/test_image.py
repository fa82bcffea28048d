"""Decoding: only JPEG and PNG by content, size limits before decoding, EXIF, grey and alpha."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import (
    ImageTooLargeException,
    InvalidImageFormatException,
    InvalidParameterException,
    RekognitionError,
)
from edge.vision.image import MAX_IMAGE_BYTES, decode_image


def _jpeg(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims the given size, with a tiny (wrong) body: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment with one Orientation tag right after SOI."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def test_jpeg_and_png_decode_to_rgb() -> None:
    jpg = decode_image(_jpeg(120, 90))
    assert (jpg.width, jpg.height, jpg.format) == (120, 90, "jpeg")
    assert jpg.rgb.shape == (90, 120, 3) and jpg.rgb.dtype == np.uint8
    ok, png = cv2.imencode(".png", np.zeros((100, 200, 3), np.uint8))
    assert ok
    decoded = decode_image(png.tobytes())
    assert (decoded.width, decoded.height, decoded.format) == (200, 100, "png")


def test_webp_named_jpg_is_rejected_by_content(misc: Path) -> None:
    with pytest.raises(InvalidImageFormatException):
        decode_image((misc / "format_webp_named_jpg.jpg").read_bytes())


@pytest.mark.parametrize("data", [b"GIF89a" + b"\x00" * 100, b"not an image", b"\xff\xd8\xff" + b"\x00" * 50])
def test_other_formats_and_garbage_are_invalid_image_format(data: bytes) -> None:
    with pytest.raises(InvalidImageFormatException):
        decode_image(data)


def test_more_than_5_mb_is_too_large() -> None:
    data = _jpeg(100, 100) + b"\x00" * MAX_IMAGE_BYTES
    with pytest.raises(ImageTooLargeException):
        decode_image(data)


def test_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(ImageTooLargeException):
        decode_image(_png_header(30000, 30000))


def test_images_under_80_pixels_are_refused() -> None:
    with pytest.raises(InvalidParameterException):
        decode_image(_jpeg(79, 200))


def test_greyscale_and_rgba_become_rgb(misc: Path) -> None:
    grey = decode_image((misc / "format_grayscale_1channel_lfw_AJ_Cook_0001.jpg").read_bytes())
    assert grey.rgb.shape == (250, 250, 3)
    assert np.array_equal(grey.rgb[..., 0], grey.rgb[..., 1])
    rgba = decode_image((misc / "format_rgba_32bit.png").read_bytes())
    assert rgba.rgb.shape[2] == 3 and (rgba.width, rgba.height) == (626, 1200)


def test_exif_orientation_is_applied() -> None:
    # A wide gradient image marked "rotate 90 CW" (orientation 6) must come out tall.
    img = np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (100, 1, 3))
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    decoded = decode_image(_with_exif_orientation(buf.tobytes(), 6))
    assert (decoded.width, decoded.height) == (100, 200)
    assert decoded.rgb.shape[:2] == (200, 100)


def test_huge_photo_is_decoded_reduced(misc: Path) -> None:
    decoded = decode_image((misc / "large_3061x4600_one_face.jpg").read_bytes())
    assert (decoded.width, decoded.height) == (3061, 4600)
    assert max(decoded.rgb.shape[:2]) <= 1920
    assert decoded.scale == pytest.approx(3061 / decoded.rgb.shape[1])


def test_every_corruption_is_a_typed_error_or_a_decode(faces_dev: Path) -> None:
    """Truncated and bit-flipped JPEGs never escape as anything but a Rekognition error."""
    original = next(faces_dev.glob("*/*.jpg")).read_bytes()
    rng = np.random.default_rng(7)
    variants = [original[:n] for n in (0, 1, 3, 10, 100, 600, len(original) // 2)]
    for _ in range(40):
        flipped = bytearray(original)
        for pos in rng.integers(0, len(flipped), 8):
            flipped[pos] ^= 0xFF
        variants.append(bytes(flipped))
    for data in variants:
        try:
            decoded = decode_image(data)
        except RekognitionError:
            continue
        assert decoded.rgb.ndim == 3
