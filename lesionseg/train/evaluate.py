"""Validation of a training run: tune the detector's threshold and box margin, then the table.

Measures (``lesionseg.measure.evaluation``), over the validation frames:
- lesion Dice: one Dice per ground-truth lesion of >= ``min_area`` px. Box-prompted rows: the
  mask of the lesion's own box. Automatic rows: every predicted instance is given to the lesion
  it overlaps most, a lesion's mask is the union of its instances (0 when none) — the accuracy
  table's definition (``benchmarks/accuracy.py``). False positives do not lower it.
- FP-penalised lesion Dice: the same mean, over lesions *and* predicted instances of the
  counted size that overlap no lesion (each scoring 0). The threshold and margin are tuned on
  it by default, since the plain lesion Dice only grows as the threshold falls.
- detection recall / precision: detector boxes matched to lesion boxes at IoU >= 0.3, lesions
  >= 50 px (the shipped detector's record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionseg.datasets import Frame
from lesionseg.measure.evaluation import (
    DETECTION_IOU,
    DETECTION_MIN_AREA,
    LesionScores,
)
from lesionseg.models.backends.torch_runner import TorchSamRunner
from lesionseg.models.sam import SamModules
from lesionseg.models.segmenter import Segmenter
from lesionseg.train.plots import paired_bars
from lesionseg.train.sam_train import cached_embeddings
from lesionseg.train.train_detector import detection_counts, frame_boxes
from lesionseg.transforms import expand_boxes
from lesionseg.types import Detections

THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)
MARGINS = (0.0, 0.05, 0.1, 0.2)  # measured on LiTS: shrinking (-0.05) never helped
OBJECTIVES = ("fp_penalised_dice", "lesion_dice")
FLOOR = THRESHOLDS[0]  # detections kept for tuning: below every threshold tried


class SamEvaluator:
    """One SAM (torch, as trained) over the validation frames; embeddings cached on disk."""

    def __init__(self, modules: SamModules, frames: Sequence[Frame], cache: Path):
        self.segmenter = Segmenter(TorchSamRunner(modules))
        feats = cached_embeddings(modules, [f.image for f in frames], cache).numpy()
        self.embeddings = [
            self.segmenter.wrap(e, f.image.shape[:2]) for e, f in zip(feats, frames, strict=True)
        ]
        self.frames = frames

    def masks(self, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per frame, (N, H, W) bool masks of its (N, 4) boxes (one decoder call per frame)."""
        out = []
        for emb, b, frame in zip(self.embeddings, boxes, self.frames, strict=True):
            if len(b):
                out.append(self.segmenter.predict([emb], [b])[0].masks)
            else:
                out.append(np.zeros((0, *frame.image.shape[:2]), bool))
        return out


def gt_box_row(sam: SamEvaluator, min_area: int) -> dict:
    """Lesion Dice with each lesion's exact box as the prompt."""
    scores = LesionScores()
    for frame, masks in zip(
        sam.frames, sam.masks([frame_boxes(f) for f in sam.frames]), strict=True
    ):
        scores.add(masks, frame.masks, prompted=True, min_area=min_area)
    return _metrics(scores)


def automatic_row(
    sam: SamEvaluator,
    detections: Sequence[Detections],
    *,
    threshold: float,
    margin: float,
    min_area: int,
    masks: list[np.ndarray] | None = None,
    class_id: int | None = None,
) -> dict:
    """Detector boxes kept at ``threshold``, grown by ``margin``, prompting ``sam``.

    ``masks``: the masks of every detection (as :func:`detection_masks`), to skip the decoder.
    ``class_id``: score one class only (its lesions and its predictions).
    """
    frames = sam.frames
    if masks is None:
        masks = detection_masks(sam, detections, margin)
    scores = LesionScores()
    kept_dets = []
    for frame, det, m in zip(frames, detections, masks, strict=True):
        keep = det.scores >= threshold
        gt = frame.masks
        if class_id is not None:
            keep &= det.class_ids == class_id
            gt = gt[frame.labels == class_id]
        scores.add(m[keep], gt, prompted=False, min_area=min_area)
        kept_dets.append(_subset(det, keep))
    gt_frames = frames if class_id is None else [_class_frame(f, class_id) for f in frames]
    counts = detection_counts(
        kept_dets, gt_frames, iou=DETECTION_IOU, min_area=DETECTION_MIN_AREA, threshold=0.0
    )
    row = _metrics(scores)
    row |= {"det_recall": _round(counts.recall), "det_precision": _round(counts.precision)}
    return row | {"score_threshold": threshold, "box_margin": margin}


def detection_masks(
    sam: SamEvaluator, detections: Sequence[Detections], margin: float
) -> list[np.ndarray]:
    """Per frame, the SAM masks of all its detections, boxes grown by ``margin``."""
    return sam.masks(
        [
            expand_boxes(d.boxes, margin, f.image.shape[:2])
            for d, f in zip(detections, sam.frames, strict=True)
        ]
    )


def tune(
    sam: SamEvaluator,
    detections: Sequence[Detections],
    *,
    min_area: int,
    objective: str = "fp_penalised_dice",
    thresholds: Sequence[float] = THRESHOLDS,
    margins: Sequence[float] = MARGINS,
) -> tuple[dict, list[dict]]:
    """Grid search of (threshold, margin) on the validation frames for ``objective``.

    Returns:
        (the best row, every row of the grid).
    """
    assert objective in OBJECTIVES, objective
    grid = []
    for margin in margins:
        masks = detection_masks(sam, detections, margin)
        for threshold in thresholds:
            row = automatic_row(
                sam, detections, threshold=threshold, margin=margin, min_area=min_area, masks=masks
            )
            grid.append(row)
    best = max(grid, key=lambda r: r[objective] if r[objective] != "" else -1.0)
    return best, grid


def _metrics(scores: LesionScores) -> dict:
    return {
        "lesions": len(scores.dices),
        "lesion_dice": _round(scores.lesion_dice),
        "fp_penalised_dice": _round(scores.fp_penalised_dice),
        "false_positives": scores.false_positives,
    }


def _round(x: float | None) -> float | str:
    return "" if x is None else round(float(x), 4)


def _subset(det: Detections, keep: np.ndarray) -> Detections:
    idx = np.flatnonzero(keep)
    return Detections(
        det.boxes[idx], det.scores[idx], det.class_ids[idx], tuple(det.labels[i] for i in idx)
    )


def _class_frame(frame: Frame, class_id: int) -> Frame:
    keep = frame.labels == class_id
    return Frame(frame.name, frame.image, frame.masks[keep], frame.labels[keep], frame.spacing)


@dataclass(frozen=True)
class Table:
    """The evaluation table of a run, one dict per row."""

    rows: list[dict]

    def write_csv(self, path: Path) -> None:
        import csv

        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with Path(path).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def write(self, stem: Path, caption: str) -> None:
        """``<stem>.csv``, ``<stem>.md`` and ``<stem>.png``."""
        self.write_csv(Path(f"{stem}.csv"))
        cols = ["row", "detector", "sam", "prompt", "class", "lesions", "lesion_dice"]
        cols += ["fp_penalised_dice", "det_recall", "det_precision", "score_threshold"]
        cols += ["box_margin"]
        lines = [
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
            *("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in self.rows),
            "",
            caption,
        ]
        Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
        self._plot(Path(f"{stem}.png"))

    def _plot(self, path: Path) -> None:
        rows = [r for r in self.rows if r.get("lesion_dice") != ""]
        paired_bars(
            path,
            [f"{r['row']}" for r in rows],
            ("lesion Dice", [r["lesion_dice"] for r in rows]),
            ("FP-penalised lesion Dice", [r["fp_penalised_dice"] or 0 for r in rows]),
            title="validation cases",
            dpi=110,
        )
