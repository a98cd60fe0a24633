"""Turn a :class:`~lesionseg.types.SegmentationResult` into the JSON schema and an overlay PNG.

The JSON is the one the service returns::

    {"width": W, "height": H, "pixel_spacing_mm": [row, col] | null,
     "lesions": [{"box": [x0, y0, x1, y1], "label": str, "score": float,
                  "iou_prediction": float, "area_px": int, "area_mm2": float | null,
                  "mask": {"size": [H, W], "counts": "<COCO compressed RLE>"}}],
     "models": {...}, "timings_ms": {...}}
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .masks import encode_rle
from .types import SegmentationResult

_COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 100, 255)]


def result_to_dict(result: SegmentationResult, models: dict | None = None) -> dict:
    """JSON-ready dict of one image's result (masks as COCO compressed RLE)."""
    spacing = result.pixel_spacing_mm
    return {
        "width": result.width,
        "height": result.height,
        "pixel_spacing_mm": None if spacing is None else [float(spacing[0]), float(spacing[1])],
        "lesions": [
            {
                "box": [round(v, 2) for v in lesion.box],
                "label": lesion.label,
                "score": round(lesion.score, 4),
                "iou_prediction": round(lesion.iou_prediction, 4),
                "area_px": lesion.area_px,
                "area_mm2": None if lesion.area_mm2 is None else round(lesion.area_mm2, 3),
                "mask": encode_rle(lesion.mask),
            }
            for lesion in result.lesions
        ],
        "models": models or {},
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
    }


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
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()
