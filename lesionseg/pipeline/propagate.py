"""One box per lesion on one frame, propagated through a volume (MedSAM2 / MONAI Label style).

The caller's box segments the lesion on its frame; that mask's tight box, grown by a margin,
prompts the next frame in space (:attr:`VolumeGeometry.order`, else frame order), and so on in
both directions until the lesion ends: the new mask is empty, SAM's predicted IoU is low, its
area jumps implausibly (more than ``max_growth`` x the previous one), it no longer overlaps
the previous mask (it jumped to something else), or its mean intensity (as the models see the
frame, 0-255) moves more than ``max_intensity_shift`` away from the seed mask's: SAM outlines
*something* in any box, and past a lesion's end that is the organ around it, which SAM's own
IoU estimate rates as highly as the lesion (measured on LiTS: ``benchmarks/propagation.py``).
A rejected mask is dropped; the lesion ends on the frame before.

The previous mask is not given to SAM as a mask prompt: with LiteMedSAM it lowered the mean 3-D
Dice on the LiTS training slab's 42 lesions from 0.56 to 0.50 (its low-resolution logits as
``mask_input``, box as well); the box alone carries the lesion from slice to slice.

:class:`Propagation` only plans and checks: it says which boxes each frame needs next
(:meth:`~Propagation.pending`) and takes the masks back (:meth:`~Propagation.update`), so the
caller decides how to embed and decode (a batched model server, or :func:`propagate` with a
local :class:`~lesionseg.models.segmenter.Segmenter`). Frames that several lesions reach in the same
step are decoded together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lesionseg.pipeline.results import PROMPT_LABEL, area_mm2
from lesionseg.settings import Settings
from lesionseg.transforms import clip_boxes, mask_to_box
from lesionseg.types import Lesion, MaskPrediction, MedicalImage, SegmentationResult

# The defaults live in Settings (LESIONSEG_PROPAGATION_*, described there).
_DEFAULTS = Settings.model_fields
MARGIN = _DEFAULTS["propagation_margin"].default  # x the mask box's size, at least MARGIN_PX
MARGIN_PX = _DEFAULTS["propagation_margin_px"].default
MIN_IOU = _DEFAULTS["propagation_min_iou"].default
MAX_GROWTH = _DEFAULTS["propagation_max_growth"].default
MIN_OVERLAP = _DEFAULTS["propagation_min_overlap"].default
MAX_INTENSITY_SHIFT = _DEFAULTS["propagation_max_intensity_shift"].default


@dataclass
class _Front:
    lesion: int  # index of the seed
    step: int  # +1 / -1 along the spatial order; 0 for the seed itself
    position: int  # index into the order of the frame prompted next
    box: np.ndarray  # (4,) float32 prompt on that frame
    previous: np.ndarray | None  # (H, W) bool mask on the frame before, None for a seed
    intensity: float | None = None  # mean grey level inside the seed mask


class Propagation:
    """The state of one propagation.

    Args:
        seeds: per lesion (frame, (4,) XYXY box in original pixels), validated by the caller.
        frames: every frame, in frame order (their pixels for the intensity check).
        order: (F,) frame indices in spatial order (default: frame order).
        margin, margin_px, min_iou, max_growth, min_overlap, max_intensity_shift: see the
            module constants.
    """

    def __init__(
        self,
        seeds: Sequence[tuple[int, np.ndarray]],
        frames: Sequence[MedicalImage],
        order: np.ndarray | None = None,
        *,
        margin: float = MARGIN,
        margin_px: float = MARGIN_PX,
        min_iou: float = MIN_IOU,
        max_growth: float = MAX_GROWTH,
        min_overlap: float = MIN_OVERLAP,
        max_intensity_shift: float = MAX_INTENSITY_SHIFT,
    ) -> None:
        self.frames = list(frames)
        self.order = np.arange(len(frames)) if order is None else np.asarray(order)
        self.position_of = {int(f): p for p, f in enumerate(self.order)}
        self.margin, self.margin_px = margin, margin_px
        self.min_iou, self.max_growth, self.min_overlap = min_iou, max_growth, min_overlap
        self.max_intensity_shift = max_intensity_shift
        # lesion -> frame -> (prompt box (4,), mask (H, W) bool, predicted IoU)
        self.found: list[dict[int, tuple[np.ndarray, np.ndarray, float]]] = [{} for _ in seeds]
        self.stopped: list[dict[int, str]] = [{} for _ in seeds]  # lesion -> step -> why
        self._fronts = [
            _Front(k, 0, self.position_of[int(f)], np.asarray(box, np.float32), None)
            for k, (f, box) in enumerate(seeds)
        ]

    @property
    def done(self) -> bool:
        return not self._fronts

    def pending(self) -> dict[int, np.ndarray]:
        """frame -> (N, 4) float32 boxes to decode on it now (in :meth:`update`'s order)."""
        out: dict[int, list[np.ndarray]] = {}
        for front in self._fronts:
            out.setdefault(int(self.order[front.position]), []).append(front.box)
        return {f: np.stack(boxes) for f, boxes in out.items()}

    def update(self, predictions: dict[int, MaskPrediction]) -> None:
        """The masks for every frame of :meth:`pending`, boxes in its order; advances."""
        taken = {f: 0 for f in predictions}
        fronts, self._fronts = self._fronts, []
        for front in fronts:
            frame = int(self.order[front.position])
            prediction, i = predictions[frame], taken[frame]
            taken[frame] += 1
            mask, iou = prediction.masks[i], float(prediction.iou_predictions[i])
            intensity = float(self.frames[frame].pixels[mask].mean()) if mask.any() else 0.0
            why = self._reject(front, mask, iou, intensity)
            if why is not None:
                self.stopped[front.lesion][front.step] = why
                continue
            self.found[front.lesion][frame] = (front.box, mask, iou)
            seed = intensity if front.intensity is None else front.intensity
            for step in (-1, 1) if front.step == 0 else (front.step,):
                position = front.position + step
                if 0 <= position < len(self.order):
                    image = self.frames[int(self.order[position])]
                    box = self._next_box(mask, (image.height, image.width))
                    self._fronts.append(_Front(front.lesion, step, position, box, mask, seed))
                else:
                    self.stopped[front.lesion][step] = "end of volume"

    def _reject(self, front: _Front, mask: np.ndarray, iou: float, intensity: float) -> str | None:
        area = int(mask.sum())
        if area == 0:
            return "empty mask"
        if front.previous is None:
            return None  # the caller's box: kept whatever SAM thinks of it
        if iou < self.min_iou:
            return f"predicted IoU {iou:.2f} < {self.min_iou}"
        before = int(front.previous.sum())
        if area > self.max_growth * max(before, 10):
            return f"area jumped from {before} to {area} px"
        if mask.shape != front.previous.shape:
            return None  # frames of different sizes: nothing to compare
        shared = int(np.count_nonzero(mask & front.previous))
        if shared < self.min_overlap * min(area, before):
            return "no longer overlaps the previous mask"
        if abs(intensity - front.intensity) > self.max_intensity_shift:
            return f"mean intensity {intensity:.0f}, the seed's {front.intensity:.0f}"
        return None

    def _next_box(self, mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        box = mask_to_box(mask)
        grow = np.maximum(self.margin * (box[2:] - box[:2]), self.margin_px)  # (x, y)
        return clip_boxes((box + np.concatenate([-grow, grow]))[None], hw)[0]

    def results(self) -> tuple[list[SegmentationResult], list[list[int]]]:
        """Per frame its lesions (label "lesion", score 1, the box that prompted each), and
        per frame the 1-based lesion (seed) id of each, for
        :func:`lesionseg.measure.lesions3d.measure_lesions`."""
        frames = self.frames
        per_frame: list[list[tuple[int, Lesion]]] = [[] for _ in frames]
        for k, found in enumerate(self.found):
            for frame, (box, mask, iou) in found.items():
                spacing = frames[frame].pixel_spacing_mm
                area = int(mask.sum())
                lesion = Lesion(
                    tuple(float(v) for v in box), PROMPT_LABEL, 1.0, iou, mask, area,
                    area_mm2(area, spacing),
                )  # fmt: skip
                per_frame[frame].append((k + 1, lesion))
        results = [
            SegmentationResult(
                image.width,
                image.height,
                tuple(lesion for _, lesion in found),
                image.pixel_spacing_mm,
                {},
                image.pixel_spacing_source,
            )
            for image, found in zip(frames, per_frame, strict=True)
        ]
        return results, [[k for k, _ in found] for found in per_frame]


def propagate(
    propagation: Propagation, decode: Callable[[dict[int, np.ndarray]], dict[int, MaskPrediction]]
) -> Propagation:
    """Run ``propagation`` to its end; ``decode(frame -> (N, 4) boxes)`` returns the masks of
    each frame (embedding each frame once is the caller's business)."""
    while not propagation.done:
        propagation.update(decode(propagation.pending()))
    return propagation
