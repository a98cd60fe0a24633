"""Accuracy measures shared by tests, training records and benchmarks (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .transforms import box_iou


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks of the same shape; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@dataclass(frozen=True)
class DetectionCounts:
    """Greedy one-to-one matching of predicted to ground-truth boxes on a set of images.

    Attributes:
        true_positives: ground-truth lesions (of the counted size) matched by a prediction.
        ground_truth: ground-truth lesions of the counted size.
        predictions: predicted boxes not matched to a lesion below the counted size.
        matched_predictions: predictions matched to a counted lesion.
    """

    true_positives: int = 0
    ground_truth: int = 0
    predictions: int = 0
    matched_predictions: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            self.true_positives + other.true_positives,
            self.ground_truth + other.ground_truth,
            self.predictions + other.predictions,
            self.matched_predictions + other.matched_predictions,
        )

    @property
    def recall(self) -> float | None:
        """Matched / counted lesions; None when there is no lesion to find."""
        return self.true_positives / self.ground_truth if self.ground_truth else None

    @property
    def precision(self) -> float | None:
        """Matched / counted predictions; None when nothing was predicted."""
        return self.matched_predictions / self.predictions if self.predictions else None


def match_detections(
    pred_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_areas: np.ndarray,
    *,
    iou_threshold: float = 0.3,
    min_area: int = 50,
) -> DetectionCounts:
    """Count matches in one image.

    Predictions (in the given order, best first) are matched greedily to the unmatched
    ground-truth box of highest IoU >= ``iou_threshold``. Only lesions of ``min_area`` px or
    more count for recall; a prediction matched to a smaller lesion is neither a true nor a
    false positive (it is left out of precision), so small lesions cannot hurt either score.
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    counted = np.asarray(gt_areas) >= min_area
    iou = box_iou(pred_boxes, gt_boxes)  # (P, G)
    taken = np.zeros(len(gt_boxes), bool)
    tp = ignored = 0
    for p in range(iou.shape[0]):
        candidates = np.where(taken, -1.0, iou[p])
        g = int(candidates.argmax()) if candidates.size else -1
        if g < 0 or candidates[g] < iou_threshold:
            continue
        taken[g] = True
        if counted[g]:
            tp += 1
        else:
            ignored += 1
    return DetectionCounts(tp, int(counted.sum()), iou.shape[0] - ignored, tp)
