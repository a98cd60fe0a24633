"""Every reader yields the LiTS slabs' lesions, classes, pixels and spacing (fixtures.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lesionseg.data import TUMOUR_LABEL, window_ct
from lesionseg.datasets import open_dataset

from . import fixtures

VOLUMES = ("nnunet", "msd")
LAYOUTS = VOLUMES


def _components(mask: np.ndarray) -> list[bytes]:
    """Sorted 8-connected components of a (H, W) bool mask, each as its pixel indices."""
    labelled, k = ndimage.label(mask, structure=np.ones((3, 3)))
    return sorted(np.flatnonzero(labelled == i).tobytes() for i in range(1, k + 1))


def _instances(frame, label: int) -> list[bytes]:
    return sorted(np.flatnonzero(m).tobytes() for m in frame.masks[frame.labels == label])


def _frames(dataset) -> dict[int, object]:
    frames = {fixtures.slice_of(f.name): f for case in dataset.cases for f in case.frames()}
    expected = {z for a, b in fixtures.SLABS for z in range(a, b)}
    assert set(frames) == expected
    return frames


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tumours_are_the_source_lesions(layouts, lits, layout):
    path, options = layouts[layout]
    dataset = open_dataset(path, labels=["tumour"], window="abdomen", **options)
    assert dataset.classes == ("tumour",)
    assert len(dataset.cases) == len(fixtures.SLABS)
    for z, frame in _frames(dataset).items():
        assert set(frame.labels.tolist()) <= {0}
        assert _instances(frame, 0) == _components(lits.labels[z] == TUMOUR_LABEL), frame.name
        assert len(frame.masks) == len(lits.slice(z).areas)


@pytest.mark.parametrize("layout", VOLUMES)
def test_liver_and_tumour_classes(layouts, lits, layout):
    path, options = layouts[layout]
    dataset = open_dataset(path, **options)
    assert dataset.classes == fixtures.CLASSES
    for z, frame in _frames(dataset).items():
        for c in range(2):
            assert _instances(frame, c) == _components(lits.labels[z] == c + 1), (frame.name, c)


@pytest.mark.parametrize("layout", VOLUMES)
def test_volume_pixels_labels_and_spacing(layouts, lits, layout):
    path, options = layouts[layout]
    dataset = open_dataset(path, window="abdomen", **options)
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
