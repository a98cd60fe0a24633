"""Parity of exported models against PyTorch on real LiTS validation slices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionseg.datasets.lits import LitsCase
from lesionseg.measure.evaluation import dice
from lesionseg.models.detector import Detector
from lesionseg.models.sam_head import SamHeadDetector, head_input
from lesionseg.models.segmenter import Segmenter
from lesionseg.transforms import box_iou
from lesionseg.types import Detections, ImageEmbedding


def mask_agreement(reference: Segmenter, candidate: Segmenter, case: LitsCase, step: int = 3):
    """Mean Dice between the two segmenters' masks, and of each against ground truth.

    Uses ground-truth boxes of lesions >= 10 px on every ``step``-th validation slice.
    """
    slices = list(case.slices("val", step=step))
    images = [s.image for s in slices]
    boxes = [s.boxes[s.areas >= 10] for s in slices]
    ref = reference.predict(reference.embed(images), boxes)
    cand = candidate.predict(candidate.embed(images), boxes)
    agree, ref_gt, cand_gt = [], [], []
    for sl, r, c in zip(slices, ref, cand, strict=True):
        ids = np.flatnonzero(sl.areas >= 10) + 1
        for k, lesion_id in enumerate(ids):
            truth = sl.instances == lesion_id
            agree.append(dice(r.masks[k], c.masks[k]))
            ref_gt.append(dice(r.masks[k], truth))
            cand_gt.append(dice(c.masks[k], truth))
    return {
        "lesions": len(agree),
        "mask_dice_vs_torch": float(np.mean(agree)),
        "min_mask_dice_vs_torch": float(np.min(agree)),
        "lesion_dice_torch": float(np.mean(ref_gt)),
        "lesion_dice_exported": float(np.mean(cand_gt)),
    }


def detector_agreement(
    reference: Detector, candidate: Detector, case: LitsCase, score_threshold: float | None = None
) -> dict:
    """Per validation slice: same box count and classes, and the IoU and score difference of
    matched boxes (same order), at ``score_threshold`` (default: the reference's own)."""
    if score_threshold is None:
        score_threshold = reference.score_threshold
    images = [s.image for s in case.slices("val")]
    ref = reference.detect(images, score_threshold=score_threshold)
    cand = candidate.detect(images, score_threshold=score_threshold)
    return {"score_threshold": score_threshold, **compare_detections(ref, cand)}


def head_agreement(
    reference: SamHeadDetector,
    candidate: SamHeadDetector,
    embeddings: Sequence[ImageEmbedding],
    neighbours: Sequence[Sequence[ImageEmbedding | None]],
    score_threshold: float,
) -> dict:
    """The two heads on the same embeddings (each with its neighbours): the largest absolute
    difference of their raw outputs (logits, log sizes, offsets), and per slice the same
    comparison of the decoded boxes as :func:`detector_agreement`'s, at ``score_threshold``."""
    context = reference.config.context
    batch = np.stack(
        [head_input(e, n, context) for e, n in zip(embeddings, neighbours, strict=True)]
    )
    raw_ref = reference.runner.run(batch).astype(np.float64)  # (B, K + 4, h, w)
    raw_cand = candidate.runner.run(batch).astype(np.float64)
    ref = reference.detect(embeddings, neighbours, score_threshold=score_threshold)
    cand = candidate.detect(embeddings, neighbours, score_threshold=score_threshold)
    return {
        "score_threshold": score_threshold,
        "raw_max_abs_err": float(np.max(np.abs(raw_ref - raw_cand))),
        **compare_detections(ref, cand),
    }


def compare_detections(ref: Sequence[Detections], cand: Sequence[Detections]) -> dict:
    """Per image: same box count and classes, and the IoU and score difference of matched
    boxes (same order, both sorted by score)."""
    same_count, same_classes, ious, score_diffs = 0, 0, [], []
    for r, c in zip(ref, cand, strict=True):
        if len(r) == len(c):
            same_count += 1
            same_classes += bool(np.array_equal(r.class_ids, c.class_ids) and r.labels == c.labels)
            if len(r):
                ious.extend(np.diag(box_iou(r.boxes, c.boxes)).tolist())
                score_diffs.extend(np.abs(r.scores - c.scores).tolist())
    return {
        "images": len(ref),
        "boxes": sum(len(d) for d in ref),
        "images_with_same_count": same_count,
        "images_with_same_classes": same_classes,
        "min_box_iou": float(min(ious)) if ious else None,
        "mean_box_iou": float(np.mean(ious)) if ious else None,
        "max_score_diff": float(max(score_diffs)) if score_diffs else None,
    }
