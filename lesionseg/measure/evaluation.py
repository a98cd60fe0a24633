"""Accuracy measures shared by tests, training records and benchmarks (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lesionseg.transforms import box_iou

# The lesion-level protocol of every accuracy figure (training's table, benchmarks, the
# backends' guard): lesions >= EVAL_MIN_AREA px count in lesion Dice; a detection matches at
# box IoU >= DETECTION_IOU, lesions >= DETECTION_MIN_AREA px.
EVAL_MIN_AREA = 20
DETECTION_IOU, DETECTION_MIN_AREA = 0.3, 50


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


def instance_owners(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """The ground-truth lesion each predicted instance overlaps most.

    Args:
        pred_masks: (P, H, W) bool predicted instances.
        gt_masks: (K, H, W) bool ground-truth lesions.

    Returns:
        (P,) int64: per instance the index of its lesion, -1 when it overlaps none.
    """
    owners = np.full(len(pred_masks), -1, np.int64)
    if len(gt_masks) == 0:  # an image without lesions (reshape cannot infer -1 from size 0)
        return owners
    flat_gt = gt_masks.reshape(len(gt_masks), -1)
    for p, mask in enumerate(pred_masks):
        overlap = flat_gt[:, mask.ravel()].sum(axis=1)  # (K,)
        if overlap.max() > 0:
            owners[p] = int(overlap.argmax())
    return owners


def assign_instances(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """Give every predicted instance to the ground-truth lesion it overlaps most
    (:func:`instance_owners`).

    Returns:
        (K, H, W) bool: per lesion, the union of the instances given to it (instances that
        overlap no lesion are given to none).
    """
    per_lesion = np.zeros(gt_masks.shape, bool)
    for mask, owner in zip(pred_masks, instance_owners(pred_masks, gt_masks), strict=True):
        if owner >= 0:
            per_lesion[owner] |= mask
    return per_lesion


@dataclass
class LesionScores:
    """Lesion-level accuracy accumulated over images.

    ``dices`` holds one Dice per counted ground-truth lesion (>= the minimum area).
    ``false_positives`` counts predicted instances of the counted size that overlap no lesion.
    :attr:`fp_penalised_dice` averages over lesions and false positives alike (a false positive
    scores 0): unlike the plain lesion Dice it cannot be raised without limit by lowering the
    detector's threshold.
    """

    dices: list[float] = field(default_factory=list)
    false_positives: int = 0

    @property
    def lesion_dice(self) -> float | None:
        return float(np.mean(self.dices)) if self.dices else None

    @property
    def fp_penalised_dice(self) -> float | None:
        n = len(self.dices) + self.false_positives
        return float(np.sum(self.dices)) / n if n else None

    def add(
        self, pred_masks: np.ndarray, gt_masks: np.ndarray, *, prompted: bool, min_area: int
    ) -> None:
        """Score one image.

        Args:
            pred_masks: (P, H, W) bool. ``prompted``: ``pred_masks[k]`` answers ``gt_masks[k]``
                (box prompts); else free instances, given out by :func:`assign_instances`.
            gt_masks: (K, H, W) bool ground-truth lesions.
            min_area: px; smaller lesions and predictions are not counted.
        """
        pred_masks = np.asarray(pred_masks, bool).reshape(-1, *gt_masks.shape[1:])
        if prompted:
            assert len(pred_masks) == len(gt_masks), (len(pred_masks), len(gt_masks))
            per_lesion = pred_masks
        else:
            per_lesion = assign_instances(pred_masks, gt_masks)
            lesion_any = gt_masks.any(axis=0)
            self.false_positives += sum(
                int(m.sum()) >= min_area and not (m & lesion_any).any() for m in pred_masks
            )
        for k, gt in enumerate(gt_masks):
            if int(gt.sum()) >= min_area:
                self.dices.append(dice(per_lesion[k], gt))
