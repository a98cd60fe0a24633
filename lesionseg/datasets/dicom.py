"""DICOM as a PACS exports it: one folder per case, one image series and its ground truth.

Layout::

    CASE/...            the single-frame files of one series (any names, subfolders allowed)
    CASE/seg.dcm        a DICOM SEG: frames matched to the images by ReferencedSOPInstanceUID,
                        segment labels are the classes
      or rtstruct.dcm   an RTSTRUCT: ROI names are the classes, contours filled on their slice
                        (:mod:`lesionseg.datasets.rtstruct`)

A folder of DICOM files with no case subfolders is one case. Slices are ordered by position
along the normal of ImageOrientationPatient; images are decoded by the service's own
:func:`lesionseg.io.dicom.decode_dicom` with the dataset's window as the default window, as the
service applies a bundle's (grayscale images; colour ones ignore it), else each file's window,
else min-max per file. Classes are the segment / ROI names in the order they
first appear (cases in name order); where two classes overlap, the later one wins the pixel.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from lesionseg.datasets import rtstruct
from lesionseg.datasets.base import Case, DatasetError, Volume, read_bytes, select_classes
from lesionseg.errors import LesionSegError
from lesionseg.io.dicom import decode_dicom
from lesionseg.settings import Settings

_SEG = "1.2.840.10008.5.1.4.1.1.66.4"
_RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
_SKIP = ("DICOMDIR",)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name not in _SKIP and _is_dicom_file(p)
    )


def looks_like(root: Path) -> bool:
    if not root.is_dir():
        return False
    return any(_is_dicom_file(p) for p in root.iterdir() if p.is_file()) or any(
        f.is_dir() and _files(f) for f in root.iterdir()
    )


def _header(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(read_bytes(path)), stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, ValueError, EOFError, OSError, KeyError) as exc:
        raise DatasetError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from exc
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise DatasetError(f"{path}: not a readable DICOM file (truncated header, no SOP UIDs)")
    return ds


@dataclass(frozen=True)
class _Series:
    """A case's image files in slice order, their geometry, and the ground-truth file."""

    files: tuple[Path, ...]
    uids: tuple[str, ...]
    geometry: rtstruct.Geometry
    truth: Path
    truth_kind: str  # "seg" | "rtstruct"
    segments: dict[int, str]  # segment / ROI number -> name
    modality: str | None  # the images' Modality


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds.get(keyword)], np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: {keyword} missing or not numeric") from exc
    if values.shape != (n,):
        raise DatasetError(f"{path}: {keyword} has {values.size} values, expected {n}")
    return values


def _scan(folder: Path) -> _Series:
    images, truths = {}, []
    for path in _files(folder):
        ds = _header(path)
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class in (_SEG, _RTSTRUCT) or ds.get("Modality") in ("SEG", "RTSTRUCT"):
            truths.append(
                (path, ds, "seg" if sop_class == _SEG or ds.Modality == "SEG" else "rtstruct")
            )
        elif "Rows" in ds:
            images.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if len(images) != 1:
        raise DatasetError(
            f"{folder}: {len(images)} image series; a case folder holds the files of one series "
            "and its SEG or RTSTRUCT"
        )
    if len(truths) != 1:
        raise DatasetError(
            f"{folder}: {len(truths)} SEG/RTSTRUCT files; a case folder holds exactly one "
            "(an empty SEG or RTSTRUCT for a case without lesions)"
        )
    (series_uid, files), (truth, truth_ds, kind) = next(iter(images.items())), truths[0]
    first_path, first = files[0]
    orientation = _floats(first, "ImageOrientationPatient", 6, first_path)
    spacing = _floats(first, "PixelSpacing", 2, first_path)
    shape = (int(first.Rows), int(first.Columns))
    origins = []
    for path, ds in files:
        if int(ds.get("NumberOfFrames") or 1) != 1:
            raise DatasetError(
                f"{path}: multi-frame image; export the series as single-frame files"
            )
        same = (
            (int(ds.Rows), int(ds.Columns)) == shape
            and np.allclose(_floats(ds, "ImageOrientationPatient", 6, path), orientation, atol=1e-4)
            and np.allclose(_floats(ds, "PixelSpacing", 2, path), spacing, rtol=1e-4)
        )
        if not same:
            raise DatasetError(
                f"{path}: size, orientation or pixel spacing differs from {first_path.name}; a "
                "case's series must share one grid"
            )
        origins.append(_floats(ds, "ImagePositionPatient", 3, path))
    geometry = rtstruct.Geometry(
        np.array(origins),
        orientation[:3],
        orientation[3:],
        (float(spacing[0]), float(spacing[1])),
        (len(files), *shape),
    )
    order = np.argsort(geometry.positions, kind="stable")
    if len(order) > 1 and np.min(np.diff(geometry.positions[order])) < 1e-3:
        raise DatasetError(
            f"{folder}: two images lie at the same position; one series per case folder"
        )
    geometry = rtstruct.Geometry(
        geometry.origins[order], geometry.rows, geometry.columns, geometry.spacing, geometry.shape
    )
    ordered = [files[i] for i in order]
    uids = tuple(str(ds.SOPInstanceUID) for _, ds in ordered)
    segments = _check_truth(truth, truth_ds, kind, series_uid, set(uids), first)
    modality = str(first.get("Modality", "")).strip().upper() or None
    return _Series(tuple(p for p, _ in ordered), uids, geometry, truth, kind, segments, modality)


def _check_truth(
    path: Path, ds: Dataset, kind: str, series: str, uids: set[str], image: Dataset
) -> dict[int, str]:
    """Segment/ROI number -> name, after checking the file references this series."""
    if kind == "seg":
        referenced = {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])}
        images = {
            str(item.ReferencedSOPInstanceUID)
            for frame in ds.get("PerFrameFunctionalGroupsSequence", [])
            for derivation in frame.get("DerivationImageSequence", [])
            for item in derivation.get("SourceImageSequence", [])
        }
        names = {
            int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment_{s.SegmentNumber}")).strip()
            for s in ds.get("SegmentSequence", [])
        }
    else:
        referenced = rtstruct.referenced_series(ds)
        images = rtstruct.referenced_images(ds)
        names = rtstruct.roi_names(ds)
        frames = rtstruct.frames_of_reference(ds)
        if not referenced and frames and str(image.get("FrameOfReferenceUID", "")) not in frames:
            raise DatasetError(
                f"{path}: the RTSTRUCT's frame of reference is not the images'; it was drawn on "
                "another series"
            )
    what = "SEG" if kind == "seg" else "RTSTRUCT"
    if (referenced and series not in referenced) or (images - uids):
        others = ", ".join(sorted(referenced - {series})) or "images not in this folder"
        raise DatasetError(
            f"{path}: the {what} references another series ({others}); the images in this "
            f"folder are series {series}"
        )
    return names


def read(
    root: Path,
    *,
    labels: Sequence[str] | None,
    window: tuple[float, float] | None,
    settings: Settings,
) -> tuple[tuple[str, ...], tuple[Case, ...]]:
    """Classes and cases of DICOM case folders; every header is read and checked now."""
    folders = (
        [root]
        if any(_is_dicom_file(p) for p in root.iterdir() if p.is_file())
        else [f for f in sorted(root.iterdir()) if f.is_dir() and _files(f)]
    )
    scanned = [(folder, _scan(folder)) for folder in folders]
    names: list[str] = []
    for _, series in scanned:
        names += [n for n in series.segments.values() if n not in names]
    classes = select_classes(names, labels, root)
    cases = []
    for folder, series in scanned:
        name = folder.name if folder != root else root.name
        load = partial(_load, series, classes, window, settings)
        files = (*series.files, series.truth)
        cases.append(Case(name, folder, files, load_volume=load, modality=series.modality))
    return classes, tuple(cases)


def _load(series: _Series, classes: tuple[str, ...], window, settings: Settings) -> Volume:
    gray = []
    for path in series.files:
        try:
            decoded = decode_dicom(
                read_bytes(path),
                max_pixels=settings.max_image_pixels,
                max_frames=1,
                default_window=window,  # as the service applies a bundle's window
            )
        except LesionSegError as exc:
            raise DatasetError(f"{path}: {exc}") from exc
        gray.append(decoded.frames[0].pixels[:, :, 0])
    chosen = [
        (number, classes.index(name) + 1)
        for number, name in series.segments.items()
        if name in classes
    ]
    chosen.sort(key=lambda item: item[1])  # later classes overwrite earlier ones
    numbers = [number for number, _ in chosen]
    if not numbers:
        present = np.zeros((0, *series.geometry.shape), bool)
    elif series.truth_kind == "seg":
        present = _seg_masks(series, numbers)
    else:
        ds = pydicom.dcmread(io.BytesIO(read_bytes(series.truth)))
        present = rtstruct.masks(ds, series.truth, series.geometry, numbers)
    labels = np.zeros(series.geometry.shape, np.uint16)
    for (_, value), mask in zip(chosen, present, strict=True):
        labels[mask] = value
    positions = series.geometry.positions
    z = float(np.median(np.diff(positions))) if len(positions) > 1 else 0.0
    spacing = (abs(z), *series.geometry.spacing) if z else None
    return Volume(np.stack(gray), labels, spacing)


def _seg_masks(series: _Series, numbers: list[int]) -> np.ndarray:
    """(S, Z, H, W) bool of SEG segments ``numbers`` on the series' images in order."""
    import highdicom as hd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(io.BytesIO(read_bytes(series.truth)))
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=list(series.uids),
                segment_numbers=numbers,
                combine_segments=False,
                assert_missing_frames_are_empty=True,
            )  # (Z, H, W, S)
    except (ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise DatasetError(f"{series.truth}: cannot read the SEG's frames ({exc})") from exc
    if pixels.shape[1:3] != series.geometry.shape[1:]:
        raise DatasetError(f"{series.truth}: SEG frames are not the size of the images")
    present = pixels >= 0.5 if pixels.dtype.kind == "f" else pixels > 0  # FRACTIONAL: >= half
    return np.moveaxis(present, 3, 0)
