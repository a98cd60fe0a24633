import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from lesionseg.errors import ImageTooLargeError, InvalidImageError
from lesionseg.io.images import decode_image

LIMIT = 10_000_000


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buffer, array, **kw)
    else:
        Image.fromarray(array).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


GRAY8 = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))  # (20, 25)
RGB8 = np.dstack([GRAY8, GRAY8 // 2, 255 - GRAY8])
GRAY16 = GRAY8.astype(np.uint16) * 200 + 1000


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encode(GRAY8, "PNG"), np.dstack([GRAY8] * 3)),
        (encode(RGB8, "PNG"), RGB8),
        (encode(GRAY8, "TIFF"), np.dstack([GRAY8] * 3)),
        (encode(RGB8, "TIFF"), RGB8),
        (encode(GRAY16, "PNG"), None),
        (encode(GRAY16, "TIFF"), None),
        (encode(np.dstack([GRAY16] * 3), "TIFF"), None),
        (encode(GRAY8.astype(np.float32) / 7, "TIFF"), None),
    ],
    ids=["png8", "png-rgb", "tiff8", "tiff-rgb", "png16", "tiff16", "tiff16-rgb", "tiff-float"],
)
def test_lossless_formats_and_intensity_mapping(data, expected):
    image = decode_image(data, max_pixels=LIMIT)
    assert image.pixels.shape == (20, 25, 3) and image.pixels.dtype == np.uint8
    if expected is not None:
        np.testing.assert_array_equal(image.pixels, expected)
    else:  # high bit depth: linear min-max stretch to the full 8-bit range, order kept
        gray = image.pixels[:, :, 0]
        assert gray.min() == 0 and gray.max() == 255
        assert np.all(np.diff(gray[0].astype(int)) >= 0)


def test_jpeg_is_decoded():
    image = decode_image(encode(RGB8, "JPEG", quality=95), max_pixels=LIMIT)
    assert image.pixels.shape == (20, 25, 3)
    assert np.abs(image.pixels.astype(int) - RGB8).mean() < 8


def test_rgba_and_palette_become_rgb():
    rgba = np.dstack([RGB8, np.full(GRAY8.shape, 128, np.uint8)])
    np.testing.assert_array_equal(decode_image(encode(rgba, "PNG"), max_pixels=LIMIT).pixels, RGB8)
    pal = Image.fromarray(RGB8).convert("P")
    buffer = io.BytesIO()
    pal.save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), max_pixels=LIMIT).pixels.shape == (20, 25, 3)


PNG = encode(RGB8, "PNG")


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", InvalidImageError, "empty"),
        (b"hello, this is not an image", InvalidImageError, "not a readable image"),
        (b"%PDF-1.4 fake pdf", InvalidImageError, "not a readable image"),
        (PNG[: len(PNG) // 2], InvalidImageError, "corrupt or truncated"),
        (b"II*\x00garbage", InvalidImageError, "TIFF"),
    ],
    ids=["empty", "text", "pdf", "truncated-png", "broken-tiff"],
)
def test_bad_input_raises_typed_error(data, error, message):
    with pytest.raises(error, match=message):
        decode_image(data, max_pixels=LIMIT)


def test_pixel_limit_is_checked_before_decoding():
    big = encode(np.zeros((300, 400), np.uint8), "PNG")
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        decode_image(big, max_pixels=300 * 400 - 1)
    assert decode_image(big, max_pixels=300 * 400).pixels.shape == (300, 400, 3)


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression-bomb header)."""
    data = bytearray(encode(np.zeros((1, 1), np.uint8), "PNG"))
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


@pytest.mark.parametrize("side", [5_000, 12_000, 50_000])
def test_decompression_bomb_is_rejected_from_its_header(side):
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(png_claiming_size(side, side), max_pixels=LIMIT)


def test_upload_byte_limit():
    with pytest.raises(ImageTooLargeError, match="LESIONSEG_MAX_UPLOAD_BYTES"):
        decode_image(PNG, max_pixels=LIMIT, max_bytes=len(PNG) - 1)
