"""3-D lesions on synthetic volumes with known answers (no models): geometry, RECIST, linking."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lesionseg.io.dicom import volume_geometry as dicom_geometry
from lesionseg.io.nifti import decode_nifti
from lesionseg.io.nifti import volume_geometry as nifti_geometry
from lesionseg.measure.lesions3d import link_lesions, measure_lesions
from lesionseg.measure.recist import recist_axes
from lesionseg.types import Lesion, SegmentationResult

ZOOMS = (0.7, 0.9, 2.5)  # mm: anisotropic in plane and across
SEMI_AXES = (14.0, 9.0, 10.0)  # mm along x, y, z
CENTRE_VOXEL = (30.0, 25.0, 8.0)  # a voxel centre: the central slice holds the long axis
ORIGIN_RAS = np.array([10.0, -20.0, 30.0])


def results_of(masks, labels=None, spacing=None) -> list[SegmentationResult]:
    """One SegmentationResult per frame; ``masks[f]`` a list of (H, W) bool."""
    out = []
    for f, frame in enumerate(masks):
        lesions = tuple(
            Lesion((0, 0, 1, 1), (labels or {}).get((f, i), "lesion"), 1.0, 0.9, m,
                   int(m.sum()), None)
            for i, m in enumerate(frame)
        )  # fmt: skip
        h, w = frame[0].shape if frame else (8, 8)
        out.append(SegmentationResult(w, h, lesions, spacing))
    return out


def ellipsoid_nifti() -> tuple[bytes, np.ndarray]:
    """A NIfTI (X, Y, Z) = (60, 50, 17) with an ellipsoid; x flipped in the affine."""
    shape = (60, 50, 17)
    idx = np.indices(shape).astype(np.float64)
    mm = [(idx[i] - CENTRE_VOXEL[i]) * ZOOMS[i] for i in range(3)]
    inside = sum((mm[i] / SEMI_AXES[i]) ** 2 for i in range(3)) <= 1
    affine = np.diag([-ZOOMS[0], ZOOMS[1], ZOOMS[2], 1.0])
    affine[:3, 3] = ORIGIN_RAS
    image = nib.Nifti1Image(np.where(inside, 200.0, 0.0).astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes()), inside


def test_ellipsoid_in_an_anisotropic_nifti():
    data, inside = ellipsoid_nifti()
    volume = decode_nifti(data, max_pixels=10**6, max_frames=100, max_bytes=10**8)
    geometry = nifti_geometry(volume)
    assert geometry is not None and geometry.source == "nifti_affine"
    assert geometry.spacing[0] == pytest.approx((ZOOMS[1], ZOOMS[0]))  # (rows = y, cols = x)
    np.testing.assert_allclose(geometry.thicknesses(), ZOOMS[2])
    masks = [[inside[:, :, k].T] if inside[:, :, k].any() else [] for k in range(17)]
    results = results_of(masks)
    ids = link_lesions(results, geometry)
    assert {i for frame in ids for i in frame} == {1}, "one ellipsoid is one lesion"
    (lesion,) = measure_lesions(results, ids, geometry)
    voxel = np.prod(ZOOMS)
    assert lesion.voxels == inside.sum()
    assert lesion.volume_mm3 == pytest.approx(inside.sum() * voxel, rel=1e-6)
    assert lesion.volume_mm3 == pytest.approx(4 / 3 * np.pi * np.prod(SEMI_AXES), rel=0.03)
    diagonal = np.hypot(ZOOMS[0], ZOOMS[1])  # one pixel's worth
    assert lesion.long_axis_frame == CENTRE_VOXEL[2]
    assert abs(lesion.long_axis_mm - 2 * SEMI_AXES[0]) <= diagonal
    assert abs(lesion.short_axis_mm - 2 * SEMI_AXES[1]) <= diagonal
    (_, y0), (_, y1) = lesion.long_axis_points  # along x (columns), through the centre
    assert abs(y0 - (CENTRE_VOXEL[1] + 0.5)) <= 1 and abs(y1 - (CENTRE_VOXEL[1] + 0.5)) <= 1
    (sx0, _), (sx1, _) = lesion.short_axis_points  # along y (rows)
    assert abs(sx0 - sx1) <= 1
    # The centre in patient coordinates: RAS from the affine, then LPS (x and y negated).
    centre_ras = ORIGIN_RAS + np.array(CENTRE_VOXEL) * [-ZOOMS[0], ZOOMS[1], ZOOMS[2]]
    np.testing.assert_allclose(lesion.centroid_mm, centre_ras * [-1, -1, 1], atol=0.5)


@pytest.mark.parametrize("degrees", [0, 30, 117])
def test_rotated_ellipse_long_and_short_axes(degrees):
    spacing = (0.8, 0.6)  # (row, column) mm
    a, b, theta = 30.0, 12.0, np.deg2rad(degrees)
    yy, xx = np.mgrid[:130, :170]
    x, y = (xx + 0.5) * spacing[1] - 50, (yy + 0.5) * spacing[0] - 52
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    axes = recist_axes((u / a) ** 2 + (v / b) ** 2 <= 1, spacing)
    diagonal = np.hypot(*spacing)
    assert abs(axes.long_mm - 2 * a) <= diagonal and abs(axes.short_mm - 2 * b) <= diagonal
    mm = lambda p: (p[1] - p[0]) * [spacing[1], spacing[0]]  # noqa: E731
    long_dir, short_dir = mm(axes.long_points), mm(axes.short_points)
    assert np.linalg.norm(long_dir) == pytest.approx(axes.long_mm)
    assert np.linalg.norm(short_dir) == pytest.approx(axes.short_mm)
    angle = np.rad2deg(np.arctan2(long_dir[1], long_dir[0])) % 180
    assert min(abs(angle - degrees % 180), 180 - abs(angle - degrees % 180)) < 3
    assert abs(long_dir @ short_dir) < 1e-6 * axes.long_mm * axes.short_mm  # perpendicular
    centre = np.array([50 / spacing[1], 52 / spacing[0]])
    assert np.linalg.norm(axes.long_points.mean(axis=0) - centre) < 1.5  # through the centre
    # The short axis crosses the long one (a digitised outline may put it off the centre).
    (p, q), (r, s) = axes.long_points, axes.short_points
    cross = lambda a, b: a[0] * b[1] - a[1] * b[0]  # noqa: E731
    assert cross(q - p, r - p) * cross(q - p, s - p) < 0
    assert cross(s - r, p - r) * cross(s - r, q - r) < 0


def test_single_pixel_and_empty_masks():
    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    axes = recist_axes(one, (2.0, 1.0))
    assert (axes.long_mm, axes.short_mm) == pytest.approx((2.0, 1.0))  # the pixel's extent
    assert recist_axes(np.zeros((5, 5), bool)) is None


def series(positions, orientation=(1, 0, 0, 0, 1, 0)) -> list[pydicom.Dataset]:
    files = []
    for z in positions:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [-80.0, -60.0, float(z)]
        ds.ImageOrientationPatient = list(orientation)
        files.append(ds)
    return files


def test_dicom_series_geometry_uses_positions_not_slice_thickness():
    files = series([10.0, 0.0, 4.0, 6.0])  # file order is not space order; uneven gaps
    for ds in files:
        ds.SliceThickness = 99.0  # never used
    geometry = dicom_geometry(files)
    assert geometry.source == "image_position_patient"
    assert geometry.order.tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(geometry.thicknesses(), [4.0, 4.0, 3.0, 3.0])
    spacing = float(files[0].PixelSpacing[0])
    np.testing.assert_allclose(
        geometry.to_patient(2, np.array([2.0]), np.array([3.0])),
        [[-80 + 3 * spacing, -60 + 2 * spacing, 4.0]],
    )
    # A lesion on the two frames nearest in space, linked although not neighbours in the files.
    mask = np.zeros((128, 128), bool)
    mask[10:20, 30:34] = True
    results = results_of([[], [mask], [mask], []], spacing=(spacing, spacing))
    ids = link_lesions(results, geometry)
    assert ids == [[], [1], [1], []]
    (lesion,) = measure_lesions(results, ids, geometry)
    assert lesion.volume_mm3 == pytest.approx(40 * spacing**2 * (4.0 + 3.0))
    assert lesion.frames == (1, 2)


def test_geometry_is_unknown_without_positions_or_with_mixed_orientations():
    no_position = series([0.0, 2.0])
    del no_position[1].ImagePositionPatient
    assert dicom_geometry(no_position) is None
    tilted = series([0.0, 2.0])
    tilted[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    assert dicom_geometry(tilted) is None
    assert dicom_geometry(series([0.0, 0.0])).thicknesses() is None  # two frames, one place


def test_linking_by_overlap_and_label():
    def box(y0, y1, x0, x1):
        m = np.zeros((40, 40), bool)
        m[y0:y1, x0:x1] = True
        return m

    masks = [
        [box(5, 15, 5, 15), box(25, 35, 25, 35)],
        [box(6, 16, 6, 16), box(25, 35, 25, 35)],  # second: another label, not linked
        [box(8, 12, 4, 8), box(8, 12, 12, 16)],  # the first splits in two: still one lesion
        [],
        [box(8, 12, 4, 8)],  # after an empty frame: a new lesion
    ]
    results = results_of(masks, labels={(1, 1): "cyst"})
    ids = link_lesions(results)
    assert ids == [[1, 2], [1, 3], [1, 1], [], [4]]
    lesions = measure_lesions(results, ids)
    assert [x.frames for x in lesions] == [(0, 1, 2), (0,), (1,), (4,)]
    assert lesions[2].label == "cyst"
    assert lesions[0].volume_mm3 is None and lesions[0].long_axis_mm is None  # no spacing
    assert lesions[0].long_axis_points.tolist() != [[0, 0], [0, 0]]  # still drawn, in pixels
    touching = results_of([[box(0, 10, 0, 10)], [box(9, 19, 9, 19)]])  # 1 px of 100: < 10 %
    assert link_lesions(touching) == [[1], [2]]


def test_two_overlapping_parts_on_one_frame_are_counted_once():
    """Two masks of one frame, both linked to the lesion on the next frame, overlap: the
    lesion's voxels, volume and axes are its union's there (as its SEG segment holds it)."""
    files = series([0.0, 2.0])
    geometry = dicom_geometry(files)
    spacing = float(files[0].PixelSpacing[0])
    left, right, below = (np.zeros((128, 128), bool) for _ in range(3))
    left[10:20, 10:30] = True  # 200 px
    right[10:20, 20:40] = True  # 200 px, 100 of them shared with left
    below[10:20, 10:40] = True  # 300 px, on the other frame
    results = results_of([[left, right], [below]], spacing=(spacing, spacing))
    ids = link_lesions(results, geometry)
    assert ids == [[1, 1], [1]]
    (lesion,) = measure_lesions(results, ids, geometry)
    assert lesion.voxels == 300 + 300
    assert lesion.volume_mm3 == pytest.approx(600 * spacing**2 * 2.0)
    (union,) = measure_lesions(results_of([[left | right]], spacing=(spacing, spacing)), [[1]])
    assert lesion.long_axis_mm == pytest.approx(union.long_axis_mm)
