"""Request bodies for the load benchmarks (the README example, fresh copies of images and DICOM
series) and the check of their JSON answers.

A server with an embedding cache answers an image it has seen without running the SAM encoder.
A benchmark of new images must therefore never send the same pixels twice: :func:`fresh_png`
and :func:`fresh_dicom` flip the least significant bit of the first 24 pixels of row 0 to spell
a counter (grey levels change by at most 1, in a corner), and a DICOM copy gets a new SOP
Instance UID too (and :func:`fresh_series` a new Series Instance UID for its files). Re-prompts,
on the other hand, re-send the exact bytes of an image already sent.
"""

from __future__ import annotations

import copy
import io
import itertools
import secrets
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid

from service.launcher import REPO_ROOT

EXAMPLE = REPO_ROOT / "data" / "examples" / "lits117-z110.png"  # the README's curl example
EXAMPLE_BOXES = [[104.0, 19.0, 126.0, 57.0]]  # the README's /segment/boxes example
MARK_BITS = 24

# A random start per process: copies made by two runs against one server do not repeat.
_COUNTER = itertools.count(secrets.randbelow(2**MARK_BITS))


def _bits() -> np.ndarray:
    """(24,) uint8 0/1: the next counter value, least significant bit first."""
    n = next(_COUNTER) % 2**MARK_BITS
    return ((n >> np.arange(MARK_BITS)) & 1).astype(np.uint8)


def read_example(path: Path = EXAMPLE) -> np.ndarray:
    """The README example as (H, W, 3) uint8 RGB (`make data` writes it)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: run `make data`")
    return np.asarray(Image.open(path).convert("RGB"))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def fresh_png(image: np.ndarray) -> bytes:
    """PNG of ``image`` (H, W[, C]) uint8 with pixels no earlier copy had (module docstring)."""
    assert image.dtype == np.uint8 and image.shape[1] >= MARK_BITS
    out = image.copy()
    bits = _bits()
    out[0, :MARK_BITS] ^= bits if out.ndim == 2 else bits[:, None]
    return png_bytes(out)


def read_dicom(path: str | Path) -> pydicom.Dataset:
    """A 16-bit uncompressed single-frame DICOM, ready for :func:`fresh_dicom`."""
    ds = pydicom.dcmread(path)
    syntax = ds.file_meta.TransferSyntaxUID
    assert not syntax.is_compressed and syntax.is_little_endian and ds.BitsAllocated == 16, path
    return ds


def fresh_dicom(ds: pydicom.Dataset, series_uid: str | None = None) -> bytes:
    """``ds`` written with a new SOP Instance UID and pixels no earlier copy had (in series
    ``series_uid`` when given)."""
    out = copy.deepcopy(ds)
    if series_uid is not None:
        out.SeriesInstanceUID = series_uid
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    pixels = bytearray(ds.PixelData)
    for i, bit in enumerate(_bits()):  # the low byte of each little-endian 16-bit pixel
        pixels[2 * i] ^= int(bit)
    out.PixelData = bytes(pixels)
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def fresh_series(datasets: list[pydicom.Dataset]) -> list[bytes]:
    """The files of one new series: each of ``datasets`` as a :func:`fresh_dicom` copy, all
    with one new Series Instance UID."""
    series_uid = generate_uid()
    return [fresh_dicom(ds, series_uid) for ds in datasets]


def result_problem(
    body: dict, hw: tuple[int, int], boxes: list | None = None, pixel_mm2: float | None = None
) -> str:
    """Why ``body``, a /segment or /segment/boxes JSON answer, is not a well-formed result for
    an (H, W) = ``hw`` image ("" when it is): image size, one RLE mask of that size per lesion,
    the ``boxes`` sent in their order, areas in mm² from ``pixel_mm2`` (mm² per pixel)."""
    try:
        assert (body["height"], body["width"]) == tuple(hw), "wrong image size"
        for lesion in body["lesions"]:
            assert lesion["mask"]["size"] == list(hw), "mask size"
            assert len(lesion["box"]) == 4 and lesion["area_px"] >= 0
        if boxes is not None:
            assert [lesion["box"] for lesion in body["lesions"]] == boxes, "box order"
        if pixel_mm2 is not None:
            for lesion in body["lesions"]:
                expected = lesion["area_px"] * pixel_mm2
                assert abs(lesion["area_mm2"] - expected) <= 1e-3 * max(1.0, expected), "area_mm2"
    except (AssertionError, KeyError, TypeError) as exc:
        return f"malformed response: {exc!r}"
    return ""
