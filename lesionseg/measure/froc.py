"""FROC of the automatic endpoint: lesion sensitivity against false masks per slice, over the
detector's score threshold (numpy only).

A detector run at a low score floor gives every instance with its score; each higher threshold
keeps a subset of them (the engine's filter keeps the best boxes, SAM decodes each box on its
own), so one model pass scores every threshold. Per slice, each predicted instance is given to
the ground-truth lesion it overlaps most (:func:`~lesionseg.measure.evaluation.instance_owners`,
the rule of the automatic lesion Dice):

- a counted lesion (>= ``min_area`` px) is *hit* at threshold t when an instance of score >= t
  is given to it (so its lesion Dice is above 0);
- a *false mask* is an instance of >= ``min_area`` px that overlaps no lesion (the false
  positive of :class:`~lesionseg.measure.evaluation.LesionScores`); an instance given to a lesion
  under ``min_area`` px is neither.

Sensitivity at R false masks per slice: the highest sensitivity of a threshold whose false masks
per slice are <= R (the step curve, not interpolated). Below the floor nothing is known: when
even the floor gives fewer than R false masks per slice, the value is the floor's
(:attr:`Froc.end` says where the curve ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lesionseg.measure.evaluation import instance_owners

FROC_RATES = (0.5, 1.0, 2.0, 4.0)  # false masks per slice


@dataclass(frozen=True)
class Curve:
    """Operating points, threshold descending (the first point: nothing kept).

    Attributes:
        thresholds: (N,) float64, the score threshold of each point (+inf first).
        false_per_slice: (N,) float64, non-decreasing.
        sensitivity: (N,) float64 in [0, 1], non-decreasing; all 0 when there is no lesion.
    """

    thresholds: np.ndarray
    false_per_slice: np.ndarray
    sensitivity: np.ndarray


@dataclass
class Froc:
    """Threshold-free record of the instances on a set of slices, accumulated per slice.

    ``hit_scores``: per counted lesion the best score of an instance given to it, -inf when
    none is. ``false_scores``: the score of each false mask. ``frames``: slices scored.
    """

    hit_scores: list[float] = field(default_factory=list)
    false_scores: list[float] = field(default_factory=list)
    frames: int = 0

    def add(
        self, pred_masks: np.ndarray, scores: np.ndarray, gt_masks: np.ndarray, *, min_area: int
    ) -> None:
        """Record one slice.

        Args:
            pred_masks: (P, H, W) bool predicted instances, every one above the floor.
            scores: (P,) their detector scores.
            gt_masks: (K, H, W) bool ground-truth lesions.
            min_area: px; smaller lesions are not counted and smaller instances are never false.
        """
        pred_masks = np.asarray(pred_masks, bool).reshape(-1, *gt_masks.shape[1:])
        scores = np.asarray(scores, np.float64).reshape(-1)
        assert len(scores) == len(pred_masks), (scores.shape, pred_masks.shape)
        owners = instance_owners(pred_masks, gt_masks)  # (P,)
        for k, gt in enumerate(gt_masks):
            if int(gt.sum()) >= min_area:
                given = scores[owners == k]
                self.hit_scores.append(float(given.max()) if given.size else -np.inf)
        areas = pred_masks.sum(axis=(1, 2))  # (P,), also for P = 0
        self.false_scores += scores[(owners < 0) & (areas >= min_area)].tolist()
        self.frames += 1

    def __add__(self, other: Froc) -> Froc:
        return Froc(
            self.hit_scores + other.hit_scores,
            self.false_scores + other.false_scores,
            self.frames + other.frames,
        )

    @property
    def lesions(self) -> int:
        return len(self.hit_scores)

    def sensitivity(self, threshold: float) -> float | None:
        """Share of counted lesions hit at ``threshold``; None without lesions."""
        if not self.hit_scores:
            return None
        return float(np.mean(np.asarray(self.hit_scores) >= threshold))

    def false_masks(self, threshold: float) -> int:
        """False masks of score >= ``threshold``."""
        return int(np.sum(np.asarray(self.false_scores) >= threshold))

    def false_per_slice(self, threshold: float) -> float | None:
        """False masks per slice at ``threshold``; None without slices."""
        return self.false_masks(threshold) / self.frames if self.frames else None

    def curve(self) -> Curve:
        """Every operating point: one per distinct score, from +inf down to the lowest."""
        hits = np.sort(np.asarray(self.hit_scores, np.float64))
        false = np.sort(np.asarray(self.false_scores, np.float64))
        found = np.concatenate([hits[np.isfinite(hits)], false])
        thresholds = np.concatenate([[np.inf], np.unique(found)[::-1]])
        above = len(hits) - np.searchsorted(hits, thresholds, side="left")  # hits >= t
        false_above = len(false) - np.searchsorted(false, thresholds, side="left")
        return Curve(
            thresholds,
            false_above / max(self.frames, 1),
            above / len(hits) if len(hits) else np.zeros(len(thresholds)),
        )

    def sensitivity_at(self, rate: float) -> float | None:
        """The highest sensitivity at <= ``rate`` false masks per slice; None without lesions
        or slices."""
        if not self.hit_scores or not self.frames:
            return None
        curve = self.curve()
        return float(curve.sensitivity[curve.false_per_slice <= rate].max())

    @property
    def end(self) -> tuple[float, float] | None:
        """(false masks per slice, sensitivity) at the lowest score seen: the curve's end;
        None without lesions or slices."""
        if not self.hit_scores or not self.frames:
            return None
        curve = self.curve()
        return float(curve.false_per_slice[-1]), float(curve.sensitivity[-1])
