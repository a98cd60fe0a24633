"""Decode DICOM uploads into one :class:`~lesionseg.types.MedicalImage` per frame.

Detection is by content: the ``DICM`` marker at byte 128, or (files without the 128-byte
preamble) a first element in group 0x0002/0x0008 that pydicom can parse. Pixel data of every
transfer syntax pydicom has a decoder for is read (JPEG, JPEG-LS, JPEG 2000 and RLE through
pylibjpeg / pyjpegls).

Intensity mapping of grayscale images to (H, W, 3) uint8, in the order of the DICOM display
pipeline (PS3.3 C.11):

1. Modality LUT: ``value * RescaleSlope + RescaleIntercept`` (or the Modality LUT Sequence),
   e.g. CT stored values -> Hounsfield units;
2. VOI: the caller's window (:func:`lesionseg.windows.parse_window`: a preset of
   ``Settings.window_presets`` or ``"center,width"``, in modality units), else the file's
   first Window Center/Width, else its VOI LUT Sequence, else a linear min-max stretch over
   all frames of the object. A window maps ``[center - width/2, center + width/2]`` linearly
   to 0-255 (as :func:`lesionseg.io.images.window_ct`);
3. MONOCHROME1 is inverted (0 = white in the file, so that lesions look as in MONOCHROME2).

RGB and YBR images are converted to RGB by pydicom's decoders (higher bit depths scaled to
8 bits); PALETTE COLOR goes through the file's palette. A window on a colour image is refused.

Pixel spacing: ``PixelSpacing`` (top level or in the functional groups) -> source
``"pixel_spacing"``; else ``ImagerPixelSpacing`` (at the detector plane, not corrected for
magnification) -> ``"imager_pixel_spacing"``; else unknown. Zero or negative spacings count as
absent.

Every failure raises :class:`~lesionseg.errors.InvalidImageError` (or ImageTooLargeError);
messages never contain patient identifiers (:func:`scrub` removes them from library messages).
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array

from lesionseg.errors import InputError, InvalidImageError
from lesionseg.io.images import check_frames, check_pixels, check_total_pixels, window_ct
from lesionseg.measure.geometry import VolumeGeometry
from lesionseg.types import MedicalImage

# pydicom's default (WARN) logs invalid element values verbatim, a patient's name included.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_OTHER_FORMATS = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"}
_GRAY = {"MONOCHROME1", "MONOCHROME2"}
_PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientMotherBirthName",
    "PatientAddress",
    "AccessionNumber",
)
_READ_ERRORS = (InvalidDicomError, ValueError, EOFError, OSError, struct.error, KeyError, TypeError)


@dataclass(frozen=True)
class DicomImage:
    """A decoded DICOM object.

    Attributes:
        dataset: the parsed object (pixel data still encoded), the source a SEG references.
        frames: one image per frame, in frame order.
        window: (center, width) applied to grayscale frames in modality units, or None when
            a VOI LUT table, a min-max stretch or colour data set the intensities.
    """

    dataset: Dataset
    frames: tuple[MedicalImage, ...]
    window: tuple[float, float] | None


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part-10 file, or a bare little-endian data set pydicom can parse."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if len(data) < 8 or data.startswith(_OTHER_FORMATS):
        return False
    group, element = struct.unpack("<HH", data[:4])
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except _READ_ERRORS:
        return False
    return len(dataset) > 0


def scrub(message: str, dataset: Dataset | None) -> str:
    """``message`` with every patient identifier of ``dataset`` replaced by ``***``."""
    if dataset is None:
        return message
    for keyword in _PHI_KEYWORDS:
        value = dataset.get(keyword)
        for item in value if isinstance(value, list | pydicom.multival.MultiValue) else [value]:
            text = str(item or "").strip()
            if len(text) >= 2:
                message = message.replace(text, "***")
    return message


def read_dataset(data: bytes) -> Dataset:
    """Parse the DICOM header (pixel data stays encoded) or raise InvalidImageError."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except _READ_ERRORS as exc:
        raise InvalidImageError(
            f"the DICOM file is corrupt or truncated ({type(exc).__name__} while reading "
            "the header)"
        ) from exc
    if "TransferSyntaxUID" not in dataset.file_meta:  # a bare data set: the encoding pydicom found
        implicit, little = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian
            if implicit
            else pydicom.uid.ExplicitVRLittleEndian
            if little
            else pydicom.uid.ExplicitVRBigEndian
        )
    return dataset


def _fg_item(dataset: Dataset, frame: int, sequence: str) -> Dataset | None:
    """First item of a functional-group ``sequence`` for ``frame``: per-frame, else shared."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = dataset.get(groups)
        if items and index < len(items) and items[index].get(sequence):
            return items[index].get(sequence)[0]
    return None


def _positive_pair(value) -> tuple[float, float] | None:
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError, IndexError):
        return None
    return pair if all(math.isfinite(v) and v > 0 for v in pair) else None


def pixel_spacing(
    dataset: Dataset, frame: int = 0
) -> tuple[tuple[float, float] | None, str | None]:
    """((row, column) spacing in mm, source) or (None, None); see the module docstring."""
    measures = _fg_item(dataset, frame, "PixelMeasuresSequence")
    for source in (dataset, measures):
        if source is not None and (pair := _positive_pair(source.get("PixelSpacing"))):
            return pair, "pixel_spacing"
    if pair := _positive_pair(dataset.get("ImagerPixelSpacing")):
        return pair, "imager_pixel_spacing"
    return None, None


def _file_window(dataset: Dataset, frame: int) -> tuple[float, float] | None:
    voi = _fg_item(dataset, frame, "FrameVOILUTSequence")
    for source in (dataset, voi):
        if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
            continue
        center, width = source.WindowCenter, source.WindowWidth
        center = center[0] if isinstance(center, pydicom.multival.MultiValue) else center
        width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
        if float(width) > 0:
            return float(center), float(width)
    return None


def _modality(raw: np.ndarray, dataset: Dataset, frame: int) -> np.ndarray:
    """Stored values -> modality values (float32), from the top level or functional groups."""
    rescale = _fg_item(dataset, frame, "PixelValueTransformationSequence")
    if "RescaleSlope" not in dataset and rescale is not None and "RescaleSlope" in rescale:
        slope, intercept = float(rescale.RescaleSlope), float(rescale.RescaleIntercept)
        return raw.astype(np.float32) * slope + intercept
    return apply_modality_lut(raw, dataset).astype(np.float32)


def _check_size(
    dataset: Dataset, max_pixels: int, max_frames: int, max_total: int | None
) -> tuple[int, str]:
    for keyword in ("Rows", "Columns", "PhotometricInterpretation", "BitsAllocated"):
        if keyword not in dataset:
            kind = getattr(dataset.get("SOPClassUID"), "name", "unknown SOP class")
            raise InvalidImageError(f"the DICOM object ({kind}) has no image: {keyword} missing")
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise InvalidImageError("the DICOM object has no Pixel Data")
    frames = int(dataset.get("NumberOfFrames") or 1)
    check_pixels(int(dataset.Rows), int(dataset.Columns), max_pixels)
    check_frames(frames, max_frames)
    check_total_pixels(frames, int(dataset.Rows), int(dataset.Columns), max_total)
    return frames, str(dataset.PhotometricInterpretation).strip().upper()


def decode_dicom(
    data: bytes,
    *,
    max_pixels: int,
    max_frames: int,
    window: tuple[float, float] | None = None,
    default_window: tuple[float, float] | None = None,
    default_window_modality: str | None = None,
    max_total_pixels: int | None = None,
) -> DicomImage:
    """Decode every frame; sizes are checked from Rows/Columns/NumberOfFrames first.
    ``default_window`` stands in for a missing ``window`` on grayscale images only (the
    window a model was trained with), and only on images of ``default_window_modality`` when
    that is given; colour images ignore it."""
    dataset = read_dataset(data)
    n_frames, photometric = _check_size(dataset, max_pixels, max_frames, max_total_pixels)
    if photometric not in _GRAY | _COLOUR | {"PALETTE COLOR"}:
        raise InvalidImageError(f"unsupported DICOM PhotometricInterpretation {photometric!r}")
    if window is not None and photometric not in _GRAY:
        raise InputError(f"a window applies to grayscale images only, this one is {photometric}")
    try:
        raw = [pixel_array(dataset, index=i) for i in range(n_frames)]
    except (RuntimeError, ValueError, NotImplementedError, EOFError, AttributeError) as exc:
        syntax = getattr(dataset.get("file_meta", Dataset()).get("TransferSyntaxUID"), "name", "")
        raise InvalidImageError(
            scrub(
                f"cannot decode the DICOM pixel data ({syntax or 'unknown syntax'}): {exc}", dataset
            )
        ) from exc
    spacing = [pixel_spacing(dataset, i) for i in range(n_frames)]
    modality = str(dataset.get("Modality", "")).strip().upper()
    if default_window_modality and modality != default_window_modality.upper():
        default_window = None
    if photometric in _GRAY:
        pixels, window = _grayscale(
            raw, dataset, window or default_window, photometric == "MONOCHROME1"
        )
    else:
        pixels = [_colour(a, dataset, photometric) for a in raw]
    source = f"DICOM {dataset.get('Modality', '')} {photometric}".replace("  ", " ")
    frames = tuple(
        MedicalImage(p, sp, source, sp_source)
        for p, (sp, sp_source) in zip(pixels, spacing, strict=True)
    )
    return DicomImage(dataset, frames, window)


def _grayscale(
    raw: list[np.ndarray], dataset: Dataset, window: tuple[float, float] | None, invert: bool
) -> tuple[list[np.ndarray], tuple[float, float] | None]:
    values = [_modality(a, dataset, i) for i, a in enumerate(raw)]
    if window is None:
        window = _file_window(dataset, 0)
    if window is not None:
        gray = [window_ct(v, *window) for v in values]
    elif "VOILUTSequence" in dataset:
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        gray = [apply_voi(a, dataset).astype(np.float32) / (2**bits - 1) for a in raw]
        gray = [(g.clip(0, 1) * 255 + 0.5).astype(np.uint8) for g in gray]
    else:
        lo = min(float(v.min()) for v in values)
        hi = max(float(v.max()) for v in values)
        gray = [window_ct(v, (lo + hi) / 2, max(hi - lo, 1e-6)) for v in values]
    if invert:
        gray = [255 - g for g in gray]
    return [np.repeat(g[:, :, None], 3, axis=2) for g in gray], window


def _colour(raw: np.ndarray, dataset: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, dataset)
        top = 255 if rgb.dtype == np.uint8 else 65535
    else:
        rgb, top = raw, 2 ** int(dataset.get("BitsStored") or 8) - 1
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidImageError(f"expected 3 colour samples per pixel, got shape {list(rgb.shape)}")
    if rgb.dtype != np.uint8 or top != 255:
        rgb = (rgb.astype(np.float32) / top * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def volume_geometry(sources: list[Dataset]) -> VolumeGeometry | None:
    """Where each frame of one multi-frame object, or of the single-frame objects of one
    series (frame k = the k-th), lies in the patient: ImagePositionPatient,
    ImageOrientationPatient (top level or functional groups) and PixelSpacing. None when any
    of these is missing or unusable, or the frames are not parallel."""
    frames = [(ds, i) for ds in sources for i in range(int(ds.get("NumberOfFrames") or 1))]
    origins, orientations, spacings = [], [], []
    for ds, i in frames:
        position = _fg_item(ds, i, "PlanePositionSequence")
        orientation = _fg_item(ds, i, "PlaneOrientationSequence")
        ipp = ds.get("ImagePositionPatient") or (position and position.get("ImagePositionPatient"))
        iop = ds.get("ImageOrientationPatient") or (
            orientation and orientation.get("ImageOrientationPatient")
        )
        spacing, source = pixel_spacing(ds, i)
        try:
            origin = np.array([float(v) for v in ipp], np.float64)
            cosines = np.array([float(v) for v in iop], np.float64)
        except (TypeError, ValueError):
            return None
        if origin.shape != (3,) or cosines.shape != (6,) or source != "pixel_spacing":
            return None
        if not (np.isfinite(origin).all() and np.isfinite(cosines).all()):
            return None
        origins.append(origin)
        orientations.append(cosines)
        spacings.append(spacing)
    row, col = orientations[0][:3], orientations[0][3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-2
        or abs(np.linalg.norm(col) - 1) > 1e-2
        or abs(row @ col) > 1e-2
        or not all(np.allclose(o, orientations[0], atol=1e-3) for o in orientations)
    ):
        return None
    return VolumeGeometry(
        np.array(origins),
        row / np.linalg.norm(row),
        col / np.linalg.norm(col),
        np.array(spacings, np.float64),
        "image_position_patient",
    )
