"""The YOLO phase of ``lesionseg train``: train the YOLOv8 detector on the written dataset,
from the served bundle's YOLO (a fine-tune) or from a random init."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from lesionseg.errors import LesionSegError
from lesionseg.models.bundle_settings import bundle_in_force
from lesionseg.settings import Settings
from lesionseg.train.train_detector import (
    AUGMENTATION,
    copy_checkpoint,
    copy_training_log,
    train_yolo,
)


def keep_shipped_detector(settings: Settings, work: Path) -> dict:
    """The served detector and its tuning, copied to ``work``: the served bundle may be the one
    being rebuilt, so keep what it was before writing over it."""
    bundle = bundle_in_force(settings)
    shipped = {
        "weights": work / "shipped-detector.pt",
        "score_threshold": settings.score_threshold,
        "box_margin": settings.box_margin,
        "image_size": settings.detector_image_size,
        "classes": bundle.classes if bundle else None,
    }
    shutil.copyfile(settings.detector_weights, shipped["weights"])
    return shipped


def yolo_phase(
    args: argparse.Namespace, shipped: dict | None, data, work: Path, out: Path, end: float | None
) -> dict:
    """Train YOLO from ``shipped`` (the kept shipped detector; None: a random init)."""
    fine_tune = shipped is not None
    start = str(shipped["weights"]) if fine_tune else f"yolov8{args.model}.yaml"
    if not fine_tune and not args.from_scratch:
        print(
            f"--model {args.model}: no YOLOv8{args.model} detector is served to start from, so "
            "this one starts from a random init (as --from-scratch)"
        )
    # At least a few seconds (ultralytics takes 0 h as no limit); it stops mid-epoch if need be.
    hours = None if end is None else max(end - time.time(), 10) / 3600
    best, interrupted = train_yolo(
        data,
        work,
        start=start,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        seed=args.seed,
        time_hours=hours,
    )
    epochs = copy_training_log(work, out / "logs" / "detector.training-log")
    if best is None:
        if not fine_tune:
            raise LesionSegError(
                "the detector finished no epoch; nothing to write: raise --time-budget"
            )
        print("the detector finished no epoch: the bundle keeps the shipped detector")
        shutil.copyfile(shipped["weights"], out / "yolo.pt")
    else:
        copy_checkpoint(best, out / "yolo.pt")
    return {
        "weights": "yolo.pt",
        "architecture": f"yolov8{args.model}",
        "image_size": args.imgsz,
        "start": "shipped detector" if fine_tune else "random init",
        "epochs_run": epochs,
        "epochs_asked": args.epochs,
        "interrupted": interrupted,
        "frames": data.frames,
        "lesions": data.lesions,
        "negatives": data.negatives,
        "augmentation": AUGMENTATION,
        "checkpoint": best.name if best else None,
    }
