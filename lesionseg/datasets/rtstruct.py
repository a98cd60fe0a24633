"""DICOM RT Structure Sets: ROI contours (patient mm) -> per-slice pixel masks.

Each CLOSED_PLANAR contour is put on the slice of the series whose plane it lies on (within
a tenth of the slice gap; a contour between slices is an error), mapped to pixel coordinates
with that slice's ImagePositionPatient, the series' ImageOrientationPatient and PixelSpacing,
and filled even-odd together with the ROI's other contours on that slice, so a contour inside
another is a hole. A pixel belongs to the ROI when its centre is inside, or on a contour.

Exactness: contours along pixel edges, or through the centres of the boundary pixels (as
OpenCV's findContours and most exports of pixel masks draw them), give the mask back exactly;
a smoothed or sub-pixel contour is filled at pixel centres, off by up to a pixel on its border.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from lesionseg.datasets.base import DatasetError

_EPS = 1e-3  # pixels: a centre this close to a contour is on it


@dataclass(frozen=True)
class Geometry:
    """A series' pixel grid.

    Attributes:
        origins: (Z, 3) ImagePositionPatient of each slice in order, mm.
        rows: (3,) unit vector along a row (columns increase), ImageOrientationPatient[:3].
        columns: (3,) unit vector down a column (rows increase), ImageOrientationPatient[3:].
        spacing: (row, column) PixelSpacing, mm.
        shape: (Z, H, W).
    """

    origins: np.ndarray
    rows: np.ndarray
    columns: np.ndarray
    spacing: tuple[float, float]
    shape: tuple[int, int, int]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.rows, self.columns)

    @property
    def positions(self) -> np.ndarray:
        """(Z,) slice positions along the normal, mm."""
        return self.origins @ self.normal


def roi_names(ds: Dataset) -> dict[int, str]:
    """ROI number -> name, in StructureSetROISequence order."""
    return {
        int(r.ROINumber): str(r.get("ROIName", f"roi_{r.ROINumber}")).strip()
        for r in ds.get("StructureSetROISequence", [])
    }


def referenced_series(ds: Dataset) -> set[str]:
    """Series Instance UIDs the structure set says it was drawn on."""
    return {
        str(series.SeriesInstanceUID)
        for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in series
    }


def referenced_images(ds: Dataset) -> set[str]:
    """SOP Instance UIDs the contours name in their ContourImageSequence."""
    return {
        str(image.ReferencedSOPInstanceUID)
        for roi in ds.get("ROIContourSequence", [])
        for contour in roi.get("ContourSequence", [])
        for image in contour.get("ContourImageSequence", [])
    }


def frames_of_reference(ds: Dataset) -> set[str]:
    return {
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if "FrameOfReferenceUID" in f
    }


def masks(ds: Dataset, path: Path, geometry: Geometry, numbers: Sequence[int]) -> np.ndarray:
    """(len(numbers), Z, H, W) bool: the filled contours of ROIs ``numbers``."""
    z, height, width = geometry.shape
    out = np.zeros((len(numbers), z, height, width), bool)
    positions = geometry.positions
    gaps = np.diff(positions)
    tolerance = 0.1 * (float(np.min(np.abs(gaps))) if len(gaps) else 1.0)
    names = roi_names(ds)
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.get("ReferencedROINumber", -1))
        if number not in numbers:
            continue
        per_slice: dict[int, list[np.ndarray]] = {}
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            points = np.asarray(contour.get("ContourData", []), np.float64)
            if points.size == 0 or points.size % 3:
                raise DatasetError(
                    f"{path}: ROI {names.get(number)!r} has ContourData "
                    f"of {points.size} values, not x, y, z triplets"
                )
            points = points.reshape(-1, 3)
            level = float(np.mean(points @ geometry.normal))
            k = int(np.argmin(np.abs(positions - level)))
            if abs(positions[k] - level) > tolerance:
                raise DatasetError(
                    f"{path}: a contour of ROI {names.get(number)!r} lies at {level:.2f} mm "
                    "along the slice normal, on no slice of the series (nearest "
                    f"{positions[k]:.2f} mm)"
                )
            offset = points - geometry.origins[k]
            xy = np.stack(
                [
                    offset @ geometry.rows / geometry.spacing[1],
                    offset @ geometry.columns / geometry.spacing[0],
                ],
                axis=1,
            )
            per_slice.setdefault(k, []).append(np.round(xy, 6))
        index = list(numbers).index(number)
        for k, polygons in per_slice.items():
            out[index, k] = fill(polygons, (height, width))
    return out


def fill(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixel centres (x = column, y = row) inside the polygons (each (N, 2) x, y),
    even-odd over all of them, or on one of their edges."""
    height, width = shape
    starts = np.concatenate(polygons)
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    mask = np.zeros(shape, bool)
    # Even-odd: crossings of each row of centres with the non-horizontal edges (half-open).
    x0, y0, x1, y1 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    slanted = y0 != y1
    x0, y0, x1, y1 = x0[slanted], y0[slanted], x1[slanted], y1[slanted]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first, last = (
        max(int(np.ceil(lo.min(initial=0))), 0),
        min(int(np.floor(hi.max(initial=-1))), height - 1),
    )
    for y in range(first, last + 1):
        crossing = (lo <= y) & (y < hi)
        xs = np.sort(
            x0[crossing]
            + (y - y0[crossing]) * (x1[crossing] - x0[crossing]) / (y1[crossing] - y0[crossing])
        )
        for a, b in zip(xs[0::2], xs[1::2], strict=True):
            c0, c1 = max(int(np.ceil(a - _EPS)), 0), min(int(np.floor(b + _EPS)), width - 1)
            if c0 <= c1:
                mask[y, c0 : c1 + 1] = True
    # On an edge: lattice points of every edge (sampled at steps of at most one pixel).
    steps = np.maximum(np.ceil(np.abs(ends - starts).max(axis=1)).astype(int), 1)
    edge = np.repeat(np.arange(len(starts)), steps + 1)
    t = (
        np.arange(len(edge)) - np.repeat(np.cumsum(steps + 1) - (steps + 1), steps + 1)
    ) / np.repeat(steps, steps + 1)
    points = starts[edge] + (ends[edge] - starts[edge]) * t[:, None]
    lattice = np.round(points)
    on = (np.abs(points - lattice) < _EPS).all(axis=1)
    cols, rows = lattice[on, 0].astype(int), lattice[on, 1].astype(int)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    mask[rows[inside], cols[inside]] = True
    return mask
