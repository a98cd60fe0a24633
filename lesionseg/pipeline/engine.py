"""detect -> filter -> segment over a batch of images, order preserving."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from lesionseg.models.detector import Detector
from lesionseg.models.segmenter import Segmenter, validate_boxes
from lesionseg.settings import Settings
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
    """Assemble the lesions of one image from its boxes and masks (same order)."""
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


class LesionPipeline:
    """Fully automatic (detector boxes) or box-prompted segmentation of a batch of images.

    Args:
        detector: the YOLO stage (None for a prompt-only pipeline).
        segmenter: the SAM stage.
        score_threshold, max_lesions, box_margin: settings of the filter stage.
    """

    def __init__(
        self,
        detector: Detector | None,
        segmenter: Segmenter,
        *,
        score_threshold: float = 0.25,
        max_lesions: int = 50,
        box_margin: float = 0.0,
    ):
        self.detector = detector
        self.segmenter = segmenter
        self.score_threshold = score_threshold
        self.max_lesions = max_lesions
        self.box_margin = box_margin

    @classmethod
    def from_settings(cls, settings: Settings, *, with_detector: bool = True) -> LesionPipeline:
        detector = Detector.from_settings(settings) if with_detector else None
        return cls(
            detector,
            Segmenter.from_settings(settings),
            score_threshold=settings.score_threshold,
            max_lesions=settings.max_lesions,
            box_margin=settings.box_margin,
        )

    def segment(
        self,
        images: Sequence[MedicalImage],
        *,
        score_threshold: float | None = None,
        max_lesions: int | None = None,
        refine_iterations: int | None = None,
    ) -> list[SegmentationResult]:
        """Detect lesions, then segment each box; results in input order."""
        if self.detector is None:
            raise RuntimeError("this pipeline was built without a detector; use segment_boxes")
        threshold = self.score_threshold if score_threshold is None else score_threshold
        limit = self.max_lesions if max_lesions is None else max_lesions
        pixels = [im.pixels for im in images]
        t0 = time.perf_counter()
        raw = self.detector.detect(pixels, score_threshold=threshold, max_detections=limit)
        t1 = time.perf_counter()
        dets = [
            filter_detections(
                d,
                (im.height, im.width),
                score_threshold=threshold,
                max_lesions=limit,
                box_margin=self.box_margin,
            )
            for d, im in zip(raw, images, strict=True)
        ]
        results = self._segment(images, [d.boxes for d in dets], refine_iterations)
        detect_ms = (t1 - t0) * 1000
        return [
            build_result(im, d.boxes, d.labels, d.scores, pred, {"detect": detect_ms, **timings})
            for im, d, (pred, timings) in zip(images, dets, results, strict=True)
        ]

    def segment_boxes(
        self,
        images: Sequence[MedicalImage],
        boxes_per_image: Sequence[object],
        *,
        refine_iterations: int | None = None,
    ) -> list[SegmentationResult]:
        """One lesion per caller-supplied box, in the order given (boxes are validated)."""
        if len(images) != len(boxes_per_image):
            raise ValueError(f"{len(images)} images but {len(boxes_per_image)} box lists")
        boxes = [
            validate_boxes(b, (im.height, im.width))
            for im, b in zip(images, boxes_per_image, strict=True)
        ]
        results = self._segment(images, boxes, refine_iterations)
        return [
            build_result(im, b, [PROMPT_LABEL] * len(b), np.ones(len(b), np.float32), pred, t)
            for im, b, (pred, t) in zip(images, boxes, results, strict=True)
        ]

    def _segment(
        self,
        images: Sequence[MedicalImage],
        boxes: Sequence[np.ndarray],
        refine_iterations: int | None,
    ) -> list[tuple[MaskPrediction, dict[str, float]]]:
        # Images without boxes skip the encoder altogether.
        todo = [i for i, b in enumerate(boxes) if len(b)]
        t0 = time.perf_counter()
        embeddings = self.segmenter.embed([images[i].pixels for i in todo])
        t1 = time.perf_counter()
        predictions = self.segmenter.predict(
            embeddings, [boxes[i] for i in todo], refine_iterations=refine_iterations
        )
        t2 = time.perf_counter()
        timings = {"embed": (t1 - t0) * 1000, "decode": (t2 - t1) * 1000}
        by_index = dict(zip(todo, predictions, strict=True))
        empty = self.segmenter.predict_empty
        return [
            (by_index[i] if i in by_index else empty((im.height, im.width)), timings)
            for i, im in enumerate(images)
        ]
