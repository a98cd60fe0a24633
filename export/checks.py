"""Parity of exported models against PyTorch on real LiTS validation slices."""

from __future__ import annotations

import numpy as np

from lesionseg.data import LitsCase
from lesionseg.detector import Detector
from lesionseg.evaluation import dice
from lesionseg.segmenter import Segmenter
from lesionseg.transforms import box_iou


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


def detector_agreement(reference: Detector, candidate: Detector, case: LitsCase) -> dict:
    """Per validation slice: same box count, and the IoU of matched boxes (same order)."""
    images = [s.image for s in case.slices("val")]
    same_count, ious = 0, []
    for r, c in zip(reference.detect(images), candidate.detect(images), strict=True):
        if len(r) == len(c):
            same_count += 1
            if len(r):
                ious.extend(np.diag(box_iou(r.boxes, c.boxes)).tolist())
    return {
        "images": len(images),
        "images_with_same_count": same_count,
        "min_box_iou": float(min(ious)) if ious else None,
        "mean_box_iou": float(np.mean(ious)) if ious else None,
    }
