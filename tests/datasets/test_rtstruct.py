"""RTSTRUCT contours -> masks: exact for pixel-edge and pixel-centre contours (test_readers),
filled at pixel centres for sub-pixel ones, with the Dice that costs on smoothed contours."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from lesionseg.datasets import open_dataset
from lesionseg.datasets.lits import TUMOUR_LABEL
from lesionseg.datasets.rtstruct import fill

from . import fixtures
from .fixtures.dicom import _contours


def test_fill_keeps_holes_and_edges():
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[4:8, 4:8] = False
    polygons = [loop - 0.5 for loop in fixtures.outline(ring)]
    assert len(polygons) == 2
    np.testing.assert_array_equal(fill(polygons, ring.shape), ring)
    through_centres = [np.array([[2, 2], [9, 2], [9, 9], [2, 9]], float)]
    square = np.zeros((12, 12), bool)
    square[2:10, 2:10] = True
    np.testing.assert_array_equal(fill(through_centres, square.shape), square)


def test_fill_single_point_and_outside_image():
    mask = fill([np.array([[3.0, 4.0]]), np.array([[-5, -5], [-1, -5], [-1, -1]], float)], (8, 8))
    assert np.flatnonzero(mask).tolist() == [4 * 8 + 3]


@pytest.fixture(scope="module")
def smooth(lits, tmp_path_factory):
    root = tmp_path_factory.mktemp("smooth")
    path = fixtures.write_dicom(lits, root, truth="rtstruct", style="smooth")
    return {
        f.name: f for case in open_dataset(path, labels=["tumour"]).cases for f in case.frames()
    }


def test_subpixel_contours_fill_the_pixel_centres_inside(lits, smooth):
    """A pixel is in the ROI when its centre is inside the contours drawn (even-odd), checked
    against OpenCV's point-in-polygon test; centres within 0.01 px of a contour are skipped."""
    checked = 0
    for name, frame in smooth.items():
        polygons = _contours(lits.labels[fixtures.slice_of(name)] == TUMOUR_LABEL, "smooth")
        inside = np.zeros((128, 128), int)
        near = np.zeros((128, 128), bool)
        for polygon in polygons:
            (x0, y0), (x1, y1) = np.floor(polygon.min(0)) - 1, np.ceil(polygon.max(0)) + 1
            contour = polygon.astype(np.float32).reshape(-1, 1, 2)
            for y in range(max(int(y0), 0), min(int(y1), 127) + 1):
                for x in range(max(int(x0), 0), min(int(x1), 127) + 1):
                    distance = cv2.pointPolygonTest(contour, (x, y), True)
                    inside[y, x] += distance > 0
                    near[y, x] |= abs(distance) < 0.01
        keep = ~near
        np.testing.assert_array_equal(frame.masks.any(axis=0)[keep], inside[keep] % 2 == 1, name)
        checked += int((inside > 0).sum())
    assert checked > 1000


def test_smoothed_contours_dice_per_lesion(lits, smooth):
    """The tolerance of smoothed contours (corners cut inside the boundary pixels' centres):
    lesions of >= 100 pixels keep Dice >= 0.85 (mean >= 0.93), lesions of >= 30 pixels a mean
    Dice >= 0.9. Contours along pixel edges or through boundary centres are exact."""
    dice = []
    for name, frame in smooth.items():
        outlines, k = ndimage.label(
            lits.labels[fixtures.slice_of(name)] == TUMOUR_LABEL, structure=np.ones((3, 3))
        )
        for i in range(1, k + 1):
            lesion = outlines == i
            best = max(
                (2 * (lesion & m).sum() / (lesion.sum() + m.sum()) for m in frame.masks), default=0
            )
            dice.append((lesion.sum(), best))
    dice = np.array(dice)
    large, medium = dice[dice[:, 0] >= 100, 1], dice[dice[:, 0] >= 30, 1]
    assert len(large) >= 20 and large.min() >= 0.85 and large.mean() >= 0.93
    assert medium.mean() >= 0.9
