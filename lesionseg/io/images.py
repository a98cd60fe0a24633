"""Decode uploaded image bytes into a :class:`~lesionseg.types.MedicalImage`.

Formats: PNG, JPEG, TIFF (via tifffile, so 16-bit and float TIFFs keep their values), BMP,
GIF (first frame), WebP.

Intensity mapping to the models' (H, W, 3) uint8 RGB:

* 8-bit grayscale: the value is kept and copied to the three channels;
* 8-bit RGB: kept; palette images are expanded to RGB; an alpha channel is dropped;
* 16-bit, 32-bit integer and float images (grayscale or RGB): linear min-max stretch of the
  image's own range to 0-255 (a constant image maps to 0). Windowing is left to the caller,
  who knows the modality: send an 8-bit image already windowed to keep full control;
* JPEG EXIF orientation is applied.

Every failure raises :class:`~lesionseg.errors.InvalidImageError` (or
:class:`~lesionseg.errors.ImageTooLargeError`) with a message that says what is wrong.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lesionseg.errors import ImageTooLargeError, InvalidImageError
from lesionseg.types import MedicalImage

CT_WINDOW = (40.0, 400.0)  # level, width in HU: MedSAM's abdomen window
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    """Map a (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any numeric type to uint8 RGB."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise InvalidImageError(
            f"expected a grayscale or RGB image, got pixel array of shape {list(array.shape)}"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        x = array.astype(np.float64)
        if not np.isfinite(x).all():
            raise InvalidImageError("image contains NaN or infinite pixel values")
        lo, hi = float(x.min()), float(x.max())
        array = np.zeros(x.shape, np.uint8) if hi <= lo else ((x - lo) / (hi - lo) * 255 + 0.5)
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def check_pixels(height: int, width: int, max_pixels: int) -> None:
    """Raise unless 0 < height * width <= max_pixels."""
    if height <= 0 or width <= 0:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if height * width > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (LESIONSEG_MAX_IMAGE_PIXELS)"
        )


def check_frames(frames: int, max_frames: int, what: str = "frames") -> None:
    """Raise :class:`ImageTooLargeError` unless 1 <= frames <= max_frames (``what``: "frames",
    "slices", ... as the caller's input names them)."""
    if frames < 1 or frames > max_frames:
        raise ImageTooLargeError(
            f"{frames} {what}; 1 to {max_frames} are accepted per request (LESIONSEG_MAX_FRAMES)"
        )


def check_total_pixels(frames: int, height: int, width: int, max_total: int | None) -> None:
    """Raise :class:`ImageTooLargeError` when frames x height x width is over ``max_total``."""
    if max_total is not None and frames * height * width > max_total:
        raise ImageTooLargeError(
            f"{frames} frames of {width}x{height} are {frames * height * width} pixels, over "
            f"the limit of {max_total} per request (LESIONSEG_MAX_TOTAL_PIXELS)"
        )


def check_upload_size(size: int, max_bytes: int | None) -> None:
    """Raise :class:`ImageTooLargeError` when an upload of ``size`` bytes is over the limit."""
    if max_bytes is not None and size > max_bytes:
        raise ImageTooLargeError(
            f"upload is {size} bytes, over the limit of {max_bytes} (LESIONSEG_MAX_UPLOAD_BYTES)"
        )


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int | None = None) -> MedicalImage:
    """Decode PNG/JPEG/TIFF/... bytes; the pixel count is checked before any pixel is decoded."""
    if not data:
        raise InvalidImageError("the uploaded image is empty (0 bytes)")
    check_upload_size(len(data), max_bytes)
    if data[:4] in _TIFF_MAGIC:
        return _decode_tiff(data, max_pixels)
    return _decode_pillow(data, max_pixels)


def _decode_tiff(data: bytes, max_pixels: int) -> MedicalImage:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            check_pixels(int(page.imagelength), int(page.imagewidth), max_pixels)
            array = page.asarray()
            bits = page.bitspersample
    except (tifffile.TiffFileError, ValueError, IndexError, EOFError, OSError) as exc:
        raise InvalidImageError(f"cannot read the TIFF image: {exc}") from exc
    return MedicalImage(to_uint8_rgb(np.asarray(array)), None, f"TIFF {bits}-bit")


def _decode_pillow(data: bytes, max_pixels: int) -> MedicalImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_pixels(image.height, image.width, max_pixels)
            image.load()  # decodes now: truncated files fail here
            image = ImageOps.exif_transpose(image)
    except (ImageTooLargeError, InvalidImageError):
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            "the upload is not a readable image (expected PNG, JPEG, TIFF, BMP, GIF or WebP)"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"the image is corrupt or truncated: {exc}") from exc
    fmt, mode = image.format or "image", image.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        image = image.convert("RGB")
    elif mode == "LA":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGB")
    array = np.asarray(image)
    return MedicalImage(to_uint8_rgb(array), None, f"{fmt} {mode}")


def window_ct(
    hu: np.ndarray, level: float = CT_WINDOW[0], width: float = CT_WINDOW[1]
) -> np.ndarray:
    """Map Hounsfield units to uint8 with a linear window (level, width)."""
    lo = level - width / 2
    return (np.clip((hu - lo) / width, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
