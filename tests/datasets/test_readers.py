"""Every reader yields the LiTS slabs' lesions, classes, pixels and spacing (fixtures.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lesionseg.datasets import open_dataset
from lesionseg.datasets.lits import TUMOUR_LABEL
from lesionseg.io.images import window_ct

from . import fixtures
from .conftest import LAYOUTS

VOLUMES = ("nnunet", "msd", "dicom-seg", "dicom-rtstruct", "dicom-rtstruct-centers")
TWO_D = ("folders", "folders-binary", "busi", "coco", "coco-polygons")
EXPECTED_FORMAT = {
    "msd": "nnunet",
    "folders-binary": "folders",
    "coco-polygons": "coco",
    "dicom-seg": "dicom",
    "dicom-rtstruct": "dicom",
    "dicom-rtstruct-centers": "dicom",
}


def _components(mask: np.ndarray, filled: bool = False) -> list[bytes]:
    """Sorted 8-connected components of a (H, W) bool mask, each as its pixel indices; with
    ``filled``, holes filled (COCO polygons cannot hold holes)."""
    labelled, k = ndimage.label(mask, structure=np.ones((3, 3)))
    fill = ndimage.binary_fill_holes if filled else np.asarray
    return sorted(np.flatnonzero(fill(labelled == i)).tobytes() for i in range(1, k + 1))


def _instances(frame, label: int) -> list[bytes]:
    return sorted(np.flatnonzero(m).tobytes() for m in frame.masks[frame.labels == label])


def _frames(dataset) -> dict[int, object]:
    frames = {fixtures.slice_of(f.name): f for case in dataset.cases for f in case.frames()}
    assert set(frames) == {z for a, b in fixtures.SLABS for z in range(a, b)}
    return frames


def _window(layout: str) -> str | None:
    return "abdomen" if layout in VOLUMES else None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_format_detected(layouts, layout):
    path, _ = layouts[layout]
    assert open_dataset(path).format == EXPECTED_FORMAT.get(layout, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tumours_are_the_source_lesions(layouts, lits, layout):
    path, tumour = layouts[layout]
    dataset = open_dataset(path, labels=[tumour], window=_window(layout))
    assert dataset.classes == (tumour,)
    n_slices = sum(b - a for a, b in fixtures.SLABS)
    assert len(dataset.cases) == (len(fixtures.SLABS) if layout in VOLUMES else n_slices)
    for z, frame in _frames(dataset).items():
        assert set(frame.labels.tolist()) <= {0}
        expected = _components(lits.labels[z] == TUMOUR_LABEL, filled=layout == "coco-polygons")
        assert _instances(frame, 0) == expected, frame.name
        assert len(frame.masks) == len(lits.slice(z).areas)


@pytest.mark.parametrize("layout", [*VOLUMES, "folders", "coco"])
def test_liver_and_tumour_classes(layouts, lits, layout):
    path, _ = layouts[layout]
    dataset = open_dataset(path)
    assert dataset.classes == fixtures.CLASSES
    for z, frame in _frames(dataset).items():
        for c in range(2):
            assert _instances(frame, c) == _components(lits.labels[z] == c + 1), (frame.name, c)


@pytest.mark.parametrize("layout", TWO_D)
def test_2d_pixels(layouts, lits, layout):
    path, _ = layouts[layout]
    for z, frame in _frames(open_dataset(path)).items():
        assert frame.spacing is None
        for channel in range(3):
            np.testing.assert_array_equal(frame.image[:, :, channel], window_ct(lits.ct[z]))


@pytest.mark.parametrize("layout", VOLUMES)
def test_volume_pixels_labels_and_spacing(layouts, lits, layout):
    path, _ = layouts[layout]
    dataset = open_dataset(path, window="abdomen")
    case = dataset.cases[0]
    a, b = fixtures.SLABS[0]
    assert case.name == fixtures.case_name(a)
    volume = case.volume()
    assert volume.image.shape == volume.labels.shape == (b - a, 128, 128)
    np.testing.assert_array_equal(volume.labels, lits.labels[a:b])
    np.testing.assert_allclose(volume.spacing, (fixtures.SLICE_MM, *[fixtures.PIXEL_MM] * 2), 1e-5)
    expected = window_ct(lits.ct[a:b])
    assert np.abs(volume.image.astype(int) - expected).max() <= 1
    frame = next(case.frames())
    np.testing.assert_array_equal(frame.image[:, :, 1], volume.image[0])
    assert frame.spacing == pytest.approx((fixtures.PIXEL_MM,) * 2, rel=1e-5)


@pytest.mark.parametrize("layout", TWO_D)
def test_2d_cases_have_no_volume(layouts, layout):
    path, _ = layouts[layout]
    case = open_dataset(path).cases[0]
    assert case.volume() is None
    assert [f.name for f in case.frames()] == [case.name]
