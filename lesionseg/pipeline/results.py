"""The filter and assemble stages: detector boxes -> SAM prompts, and boxes + masks -> the
lesions of one image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionseg.transforms import clip_boxes, expand_boxes
from lesionseg.types import Detections, Lesion, MaskPrediction, MedicalImage, SegmentationResult

PROMPT_LABEL = "lesion"  # label of caller-supplied boxes


def filter_detections(
    det: Detections,
    image_hw: tuple[int, int],
    *,
    score_threshold: float,
    max_lesions: int,
    box_margin: float = 0.0,
) -> Detections:
    """Keep boxes with score >= threshold, clipped to the image and non-empty, best first;
    then grow the kept boxes by ``box_margin`` (:func:`lesionseg.transforms.expand_boxes`):
    they are SAM's prompts and the boxes reported."""
    boxes = clip_boxes(det.boxes, image_hw)
    keep = (
        (det.scores >= score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    )
    idx = np.flatnonzero(keep)[:max_lesions]  # scores are sorted descending
    return Detections(
        expand_boxes(boxes[idx], box_margin, image_hw),
        det.scores[idx],
        det.class_ids[idx],
        tuple(det.labels[i] for i in idx),
    )


def prompted(boxes: np.ndarray) -> Detections:
    """Caller-supplied (N, 4) float32 boxes as detections: label "lesion", score 1."""
    return Detections(
        boxes, np.ones(len(boxes), np.float32), np.zeros(len(boxes), np.int64),
        (PROMPT_LABEL,) * len(boxes),
    )  # fmt: skip


def area_mm2(area_px: int, spacing: tuple[float, float] | None) -> float | None:
    """Pixel count times the pixel area, or None when the spacing is unknown."""
    return None if spacing is None else float(area_px * spacing[0] * spacing[1])


def build_result(
    image: MedicalImage,
    boxes: np.ndarray,
    labels: Sequence[str],
    scores: np.ndarray,
    prediction: MaskPrediction,
    timings_ms: dict[str, float],
) -> SegmentationResult:
    """Assemble the lesions of one image from its (N, 4) boxes and (N, H, W) masks (same
    order)."""
    lesions = []
    for i in range(len(labels)):
        mask = prediction.masks[i]
        area = int(mask.sum())
        lesions.append(
            Lesion(
                box=tuple(float(v) for v in boxes[i]),
                label=labels[i],
                score=float(scores[i]),
                iou_prediction=float(prediction.iou_predictions[i]),
                mask=mask,
                area_px=area,
                area_mm2=area_mm2(area, image.pixel_spacing_mm),
            )
        )
    return SegmentationResult(
        image.width,
        image.height,
        tuple(lesions),
        image.pixel_spacing_mm,
        dict(timings_ms),
        image.pixel_spacing_source,
    )
