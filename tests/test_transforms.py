import numpy as np
import pytest

from lesionseg.transforms import (
    box_iou,
    mask_to_box,
    normalise,
    preprocess,
    resize_longest_side,
    resized_hw,
    scale_boxes,
)


@pytest.mark.parametrize(
    ("hw", "target", "expected"),
    [
        ((128, 128), 256, (256, 256)),
        ((480, 640), 256, (192, 256)),
        ((1955, 1841), 1024, (1024, 964)),
    ],
)
def test_resized_hw_keeps_aspect(hw, target, expected):
    assert resized_hw(hw, target) == expected
    assert resize_longest_side(np.zeros((*hw, 3), np.uint8), target).shape[:2] == expected


@pytest.mark.parametrize("mode", ["minmax", "imagenet"])
@pytest.mark.parametrize("hw", [(100, 60), (60, 100), (300, 300)])
def test_preprocess_pads_bottom_right(mode, hw):
    image = np.random.default_rng(0).integers(10, 200, (*hw, 3), dtype=np.uint8)
    x = preprocess(image, 256, mode)
    assert x.shape == (3, 256, 256) and x.dtype == np.float32
    h, w = resized_hw(hw, 256)
    assert np.all(x[:, h:, :] == 0) and np.all(x[:, :, w:] == 0)
    if mode == "minmax":
        assert x[:, :h, :w].min() == 0.0 and x[:, :h, :w].max() == pytest.approx(1.0)


def test_imagenet_normalisation_matches_reference():
    image = np.full((2, 2, 3), 255, np.uint8)
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(normalise(image, "imagenet")[0, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("hw", [(128, 128), (480, 640), (1955, 1841), (37, 1000)])
def test_box_mapping_round_trip(hw):
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0, hw[1] / 2, 10)
    y0 = rng.uniform(0, hw[0] / 2, 10)
    boxes = np.stack(
        [x0, y0, x0 + rng.uniform(1, hw[1] / 2, 10), y0 + rng.uniform(1, hw[0] / 2, 10)], 1
    )
    small = resized_hw(hw, 256)
    there = scale_boxes(boxes, hw, small)
    assert there[:, [0, 2]].max() <= small[1] + 1e-3 and there[:, [1, 3]].max() <= small[0] + 1e-3
    np.testing.assert_allclose(scale_boxes(there, small, hw), boxes, rtol=1e-5, atol=1e-3)


def test_box_and_mask_geometry_agree():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:20] = True
    box = mask_to_box(mask)
    np.testing.assert_array_equal(box, [10, 5, 20, 9])
    assert box_iou(box[None], box[None])[0, 0] == pytest.approx(1.0)
    assert box_iou(box[None], np.array([[20, 9, 30, 20]]))[0, 0] == 0.0
