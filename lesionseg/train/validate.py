"""The validation step of ``lesionseg train``: choose the models, tune them, write the table.

Candidates: the new detectors (a YOLO, a SAM head) and — when its classes are the dataset's —
the shipped YOLO (a fine-tune that came out worse than where it started is not shipped);
zero-shot SAM and the fine-tune (a SAM head pairs only with the SAMs that keep the encoder it
learned on). Every (detector, SAM) pair gets its score threshold and box margin tuned on the
validation frames (:func:`lesionseg.train.evaluate.tune`); the best pair by the objective makes the
bundle. The table (``evaluation.{csv,md,png}``) shows ground-truth boxes with each SAM, the
shipped detector as it was served, each tuned pair, and per class the selected pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lesionseg.datasets import Frame
from lesionseg.models.detector import UltralyticsDetector
from lesionseg.models.sam import SamModules, load_sam
from lesionseg.train import evaluate
from lesionseg.train.train_detector import detect_frames
from lesionseg.types import Detections


@dataclass(frozen=True)
class DetectorCandidate:
    """name: "yolo", "sam-head" or "shipped"; weights: a YOLO's .pt; image_size: its inference
    px; served_at: (threshold, margin) it is served with today (shipped), None for a new one;
    detections: per validation frame, made elsewhere at ``evaluate.FLOOR`` (a SAM head's),
    instead of running ``weights``; sams: the SAMs it may pair with (None: any)."""

    name: str
    weights: Path | None
    image_size: int
    served_at: tuple[float, float] | None = None
    detections: list[Detections] | None = field(default=None, compare=False, repr=False)
    sams: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Choice:
    """The selected pair and its tuned values, with the table's rows."""

    detector: str
    sam: str
    score_threshold: float
    box_margin: float
    best: dict
    rows: list[dict]


def validate(
    frames: Sequence[Frame],
    detectors: Sequence[DetectorCandidate],
    sams: dict[str, SamModules | None],
    classes: Sequence[str],
    *,
    out: Path,
    cache: Path,
    min_area: int,
    objective: str,
) -> Choice:
    """Tune every (detector, SAM) pair on ``frames`` and pick the best by ``objective``.

    Args:
        sams: name -> modules (None: zero-shot LiteMedSAM).
        out: the bundle folder: ``evaluation.*`` and ``logs/tuning-grid.csv`` are written.
    """
    sam_eval = {
        name: evaluate.SamEvaluator(m or load_sam("litemedsam", None), frames, cache)
        for name, m in sams.items()
    }
    detections = {d.name: _detections(d, frames) for d in detectors}
    rows = [
        _row(
            f"GT boxes, SAM {name}", "-", name, "ground-truth box", evaluate.gt_box_row(s, min_area)
        )
        for name, s in sam_eval.items()
    ]
    for d in detectors:
        if d.served_at is not None:
            threshold, margin = d.served_at
            metrics = evaluate.automatic_row(
                sam_eval["zero-shot"],
                detections[d.name],
                threshold=threshold,
                margin=margin,
                min_area=min_area,
            )
            rows.append(
                _row(
                    f"automatic, {d.name} detector as served",
                    d.name,
                    "zero-shot",
                    "detector boxes",
                    metrics,
                )
            )
    tuned, grid = {}, []
    for d in detectors:
        for name, s in sam_eval.items():
            if d.sams is not None and name not in d.sams:
                continue
            best, cells = evaluate.tune(
                s, detections[d.name], min_area=min_area, objective=objective
            )
            tuned[(d.name, name)] = best
            grid += [{"detector": d.name, "sam": name, **c} for c in cells]
            rows.append(
                _row(
                    f"automatic, {d.name} detector, SAM {name} (tuned)",
                    d.name,
                    name,
                    "detector boxes",
                    best,
                )
            )
    (det, sam) = max(tuned, key=lambda k: _value(tuned[k][objective]))
    best = tuned[(det, sam)]
    if len(classes) > 1:
        for c, cname in enumerate(classes):
            metrics = evaluate.automatic_row(
                sam_eval[sam],
                detections[det],
                threshold=best["score_threshold"],
                margin=best["box_margin"],
                min_area=min_area,
                class_id=c,
            )
            rows.append(
                _row(f"selected, class {cname}", det, sam, "detector boxes", metrics)
                | {"class": cname}
            )
    evaluate.Table(grid).write_csv(out / "logs" / "tuning-grid.csv")
    caption = (
        f"{len(frames)} validation frames ({sum(len(f.masks) > 0 for f in frames)} with "
        f"lesions). Lesion Dice over lesions >= {min_area} px; FP-penalised: false positives "
        f"count as 0; detection at box IoU >= {evaluate.DETECTION_IOU}, lesions >= "
        f"{evaluate.DETECTION_MIN_AREA} px. Threshold and margin tuned on these frames for "
        f"{objective}; selected: {det} detector, SAM {sam}."
    )
    evaluate.Table(rows).write(out / "evaluation", caption)
    return Choice(det, sam, best["score_threshold"], best["box_margin"], best, rows)


def _detections(d: DetectorCandidate, frames: Sequence[Frame]) -> list[Detections]:
    if d.detections is not None:
        return d.detections
    detector = UltralyticsDetector(
        d.weights, image_size=d.image_size, score_threshold=evaluate.FLOOR
    )
    return detect_frames(detector, frames, score_threshold=evaluate.FLOOR)


def _row(label: str, detector: str, sam: str, prompt: str, metrics: dict) -> dict:
    return {"row": label, "detector": detector, "sam": sam, "prompt": prompt, **metrics}


def _value(x: float | str) -> float:
    return -1.0 if x == "" else float(x)
