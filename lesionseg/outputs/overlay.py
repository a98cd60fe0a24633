"""Draw a :class:`~lesionseg.types.SegmentationResult` on its image as a PNG."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw

from lesionseg.types import SegmentationResult

_COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 100, 255)]


def draw_overlay(pixels: np.ndarray, result: SegmentationResult, *, alpha: float = 0.35) -> bytes:
    """PNG of the image with each lesion's mask tinted, its outline, box and label drawn."""
    canvas = pixels.astype(np.float32)
    outlines = []
    for i, lesion in enumerate(result.lesions):
        colour = np.array(_COLOURS[i % len(_COLOURS)], np.float32)
        canvas[lesion.mask] = (1 - alpha) * canvas[lesion.mask] + alpha * colour
        contours, _ = cv2.findContours(
            lesion.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        outlines.append(contours)
    image = canvas.clip(0, 255).astype(np.uint8)
    for i, contours in enumerate(outlines):
        cv2.drawContours(image, contours, -1, _COLOURS[i % len(_COLOURS)], 1)
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    for i, lesion in enumerate(result.lesions):
        colour = _COLOURS[i % len(_COLOURS)]
        x0, y0, x1, y1 = lesion.box
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=1)
        draw.text((x0, max(0, y0 - 11)), f"{lesion.label} {lesion.score:.2f}", fill=colour)
    return encode_png(np.asarray(pil))


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB image, e.g. a frame as the models see it."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
