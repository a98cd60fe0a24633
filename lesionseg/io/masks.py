"""Mask encodings: COCO compressed RLE (pycocotools-compatible) and PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> ``{"size": [H, W], "counts": str}``, COCO compressed RLE.

    ``pycocotools.mask.decode`` turns it back into the mask (after ``counts.encode()`` or as is,
    since pycocotools accepts str counts).
    """
    assert mask.ndim == 2, mask.shape
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of :func:`encode_rle` -> (H, W) bool."""
    counts = rle["counts"]
    coco = {
        "size": list(rle["size"]),
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }
    return mask_utils.decode(coco).astype(bool)


def mask_to_png(mask: np.ndarray) -> bytes:
    """(H, W) bool -> 8-bit grayscale PNG bytes (0 background, 255 lesion)."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def labels_to_png(masks: np.ndarray) -> bytes:
    """(N, H, W) bool -> 8-bit label PNG: pixel value k for lesion k (1-based, later wins)."""
    n = masks.shape[0]
    assert n < 256, "a label PNG holds at most 255 lesions"
    label = np.zeros(masks.shape[1:], np.uint8)
    for k in range(n):
        label[masks[k]] = k + 1
    buffer = io.BytesIO()
    Image.fromarray(label, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
