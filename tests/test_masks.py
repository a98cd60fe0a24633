import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lesionseg.io.masks import decode_rle, encode_rle, labels_to_png, mask_to_png


@pytest.mark.parametrize("hw", [(1, 1), (17, 33), (128, 128), (640, 480)])
def test_rle_round_trip_decodes_with_pycocotools(hw):
    rng = np.random.default_rng(hw[0])
    mask = rng.random(hw) > 0.7
    rle = encode_rle(mask)
    assert rle["size"] == list(hw) and isinstance(rle["counts"], str)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    np.testing.assert_array_equal(decode_rle(rle), mask)


def test_png_outputs():
    masks = np.zeros((2, 8, 9), bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:7, 5:8] = True
    single = np.asarray(Image.open(io.BytesIO(mask_to_png(masks[0]))))
    np.testing.assert_array_equal(single > 0, masks[0])
    labels = np.asarray(Image.open(io.BytesIO(labels_to_png(masks))))
    assert set(np.unique(labels)) == {0, 1, 2} and (labels == 2).sum() == 6
