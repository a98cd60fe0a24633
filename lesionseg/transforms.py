"""Geometry and intensity transforms shared by the SAM families (numpy in, numpy out).

SAM-style models see a square ``S x S`` input: the image is resized so that its longest side
is ``S`` (aspect kept), normalised, and zero-padded at the bottom and right. Boxes follow the
same resize; masks come back by cropping the padding and resizing to the original size.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

Normalisation = Literal["minmax", "imagenet"]


def resized_hw(original_hw: tuple[int, int], target: int) -> tuple[int, int]:
    """Return (h', w') with the longest side scaled to ``target`` (rounded half up, >= 1)."""
    h, w = original_hw
    scale = target / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def resize_longest_side(image: np.ndarray, target: int) -> np.ndarray:
    """Resize (H, W, C) so the longest side is ``target`` px.

    Area interpolation when shrinking (anti-aliased, as LiteMedSAM's training code and
    SamProcessor's anti-aliased resize), bilinear when enlarging.
    """
    new_h, new_w = resized_hw(image.shape[:2], target)
    shrinking = new_h * new_w < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize (h, w) float32 to (H, W) float32, bilinear, half-pixel centres, no antialias.

    Equals ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` on the CPU
    bit for bit, without torch (measured against torch 2.14 in tests/test_segmenter.py). Its
    compiled kernels fuse multiply-adds, emulated here in float64 (in rare double-rounding
    cases that can differ in the last float32 bit), and outputs with H + W <= 128 go through
    another kernel that weighs the four source pixels at once.
    """
    if x.shape == tuple(out_hw):
        return x  # torch's weights are then (1, 0): the same values
    h0, h1, hw0, hw1 = _linear_taps(x.shape[0], out_hw[0])
    w0, w1, ww0, ww1 = _linear_taps(x.shape[1], out_hw[1])
    if out_hw[0] + out_hw[1] <= 128:  # torch's "vectorized" (channels-last) kernel
        r0, r1 = x[h0], x[h1]  # (H, w)
        out = r0[:, w1] * (hw0[:, None] * ww1)
        for rows, wh, cols, ww in ((r0, hw0, w0, ww0), (r1, hw1, w0, ww0), (r1, hw1, w1, ww1)):
            out = _fma(rows[:, cols], wh[:, None] * ww, out)
        return out
    rows = _fma(x[:, w0], ww0, x[:, w1] * ww1)  # (h, W): every source row along the width
    return _fma(rows[h0], hw0[:, None], rows[h1] * hw1[:, None])  # (H, W)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """Per output index along one axis: the two source indices and their float32 weights,
    computed the way torch's upsample kernel computes them."""
    scale = np.float32(n_in) / np.float32(n_out)
    centres = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    source = np.maximum(_fma(centres, scale, np.float32(-0.5)), np.float32(0))
    i0 = np.minimum(source.astype(np.int64), n_in - 1)  # floor: source >= 0
    lambda1 = np.clip(source - i0.astype(np.float32), 0, 1)
    return i0, i0 + (i0 < n_in - 1), np.float32(1) - lambda1, lambda1


def _fma(a: np.ndarray, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """float32 ``a * b + c`` rounded once (the product of two float32 is exact in float64)."""
    out = a.astype(np.float64)
    out *= b
    out += c
    return out.astype(np.float32)


def normalise(image: np.ndarray, mode: Normalisation) -> np.ndarray:
    """Map a (h, w, 3) uint8 image to float32.

    ``minmax``: (x - min) / (max - min) over the whole image, in [0, 1] (LiteMedSAM).
    ``imagenet``: x / 255, then per-channel ImageNet mean/std (SamProcessor).
    """
    x = image.astype(np.float32)
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / max(hi - lo, 1e-8)
    assert mode == "imagenet", mode
    return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def pad_to_square(image: np.ndarray, size: int, value: float = 0) -> np.ndarray:
    """Pad (h, w, C) at the bottom and right to (size, size, C) with ``value``."""
    h, w = image.shape[:2]
    assert h <= size and w <= size, (h, w, size)
    return np.pad(image, ((0, size - h), (0, size - w), (0, 0)), constant_values=value)


def preprocess(image: np.ndarray, size: int, mode: Normalisation) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) float32: resize longest side, normalise, pad."""
    x = normalise(resize_longest_side(image, size), mode)
    return np.ascontiguousarray(pad_to_square(x, size).transpose(2, 0, 1))


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Map (N, 4) XYXY boxes between two sizes of the same image (per-axis scale)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return (np.asarray(boxes, np.float32) * np.array([sx, sy, sx, sy], np.float32)).astype(
        np.float32
    )


def clip_boxes(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Clip (N, 4) XYXY boxes to an image of size (H, W)."""
    h, w = hw
    out = np.asarray(boxes, np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def expand_boxes(boxes: np.ndarray, margin: float, hw: tuple[int, int]) -> np.ndarray:
    """Grow (N, 4) XYXY boxes by ``margin`` x their own width/height on every side, clipped.

    ``margin`` 0.1 makes a 20 x 10 px box 24 x 12 px. Negative margins shrink (never below
    1 px). A detector trained on tight boxes may prompt SAM better with a small margin; the
    training command tunes it on validation cases (``model.json`` ``detector.box_margin``).
    """
    out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    if margin == 0 or out.size == 0:
        return out
    dw = (out[:, 2] - out[:, 0]) * margin
    dh = (out[:, 3] - out[:, 1]) * margin
    grown = out + np.stack([-dw, -dh, dw, dh], axis=1)
    cx, cy = (out[:, 0] + out[:, 2]) / 2, (out[:, 1] + out[:, 3]) / 2
    grown[:, 0] = np.minimum(grown[:, 0], cx - 0.5)
    grown[:, 2] = np.maximum(grown[:, 2], cx + 0.5)
    grown[:, 1] = np.minimum(grown[:, 1], cy - 0.5)
    grown[:, 3] = np.maximum(grown[:, 3], cy + 0.5)
    return clip_boxes(grown, hw)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) XYXY boxes -> (N, M) float32."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x1 - x0).clip(0) * (y1 - y0).clip(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box (pixel-edge coordinates) of a non-empty (H, W) bool mask -> (4,) float32."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    assert rows.size and cols.size, "mask_to_box needs a non-empty mask"
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)
