"""``lesionseg train DATASET --out DIR``: train the detector and SAM on your own labelled images.

Reads the dataset (:mod:`lesionseg.datasets`: nnU-Net/MSD, PNG folders, BUSI, DICOM series with
SEG or RTSTRUCT, COCO), splits it by case, trains the YOLO detector (from the shipped one by
default), fine-tunes SAM (LoRA, decoder-only or not at all) with box perturbation, tunes the
detector's score threshold and box margin on the validation cases, writes the evaluation table
and a model bundle that ``LESIONSEG_MODEL_DIR=DIR make serve`` serves:

    DIR/model.json  DIR/detector.pt  DIR/sam.pt (when the fine-tune helps)
    DIR/evaluation.{csv,md,png}  DIR/logs/

``--time-budget MINUTES`` stops training in time (detector ~60 %, SAM ~25 % of it) and still
writes a valid bundle from the best checkpoints so far; so does Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from lesionseg.datasets import open_dataset
from lesionseg.errors import DatasetError, LesionSegError
from lesionseg.models.bundle import FORMAT, RECORD_FILE
from lesionseg.models.bundle_settings import bundle_in_force, effective_settings
from lesionseg.models.sam import load_sam
from lesionseg.provenance import git_state, hardware, versions
from lesionseg.settings import Settings
from lesionseg.train import validate
from lesionseg.train.arguments import parse_args
from lesionseg.train.common import EpochLog, Stopper, frame_samples
from lesionseg.train.extra import require_training_extra
from lesionseg.train.split import AXES, split_cases
from lesionseg.train.train_detector import (
    AUGMENTATION,
    copy_checkpoint,
    copy_training_log,
    train_yolo,
    write_yolo_dataset,
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # ultralytics' per-epoch progress bars (the service keeps it quiet; read at its import).
    os.environ.setdefault("YOLO_VERBOSE", "true")
    try:
        require_training_extra(args.sam)  # before any work: not at the end of a long run
        run(args, argv if argv is not None else sys.argv[1:])
    except LesionSegError as exc:
        print(f"lesionseg train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loops
        print("lesionseg train: interrupted; no bundle written", file=sys.stderr)
        return 130
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> Path:
    started = time.time()
    source = git_state()  # the code this run starts from, whatever changes while it runs
    deadline = started + args.time_budget * 60 if args.time_budget else None
    torch.set_num_threads(args.threads)
    settings = effective_settings(Settings())
    labels = args.labels.split(",") if args.labels else None
    dataset = open_dataset(args.dataset, format=args.format, labels=labels, window=args.window)
    print(
        f"{dataset.root}: {dataset.format}, {len(dataset.cases)} case(s), classes "
        f"{list(dataset.classes)}"
    )
    val_cases = args.val_cases.split(",") if args.val_cases else None
    split = split_cases(
        dataset,
        val_fraction=args.val_fraction,
        val_cases=val_cases,
        seed=args.seed,
        slab_gap=args.slab_gap,
    )
    print(f"split by {split.method}: {len(split.train)} train, {len(split.val)} validation")
    val = _val_frames(split, args.max_val_frames, args.seed)
    if not val:  # _val_frames keeps negatives only as many as positives
        raise DatasetError(
            f"the validation side ({', '.join(p.name for p in split.val[:5])}) holds no lesion:"
            " the threshold cannot be tuned nor accuracy measured; pick validation cases with"
            " lesions (--val-cases, --seed or --val-fraction)"
        )
    out, work = args.out, args.workdir or settings.cache_dir / "train" / args.out.name
    work.mkdir(parents=True, exist_ok=True)
    fine_tune = args.model == "n" and not args.from_scratch
    # From scratch, the shipped detector is neither the start nor a candidate: not read at all.
    shipped = _keep_shipped_detector(settings, work) if fine_tune else None
    # Written into a staging folder and swapped in at the end: an aborted run leaves the old
    # bundle in --out as it was.
    stage = out.parent / f".{out.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "logs").mkdir(parents=True)
    samples: list = []

    def train_frames():
        for part in split.train:
            for frame in part.frames(AXES[args.axes]):
                if args.sam != "none":  # SAM's training samples, gathered on the same pass
                    samples.extend(frame_samples([frame]))
                yield frame

    data = write_yolo_dataset(
        {"train": train_frames(), "val": iter(val)},
        dataset.classes,
        work / "yolo",
        negative_ratio=args.negative_ratio,
        seed=args.seed,
    )
    print(f"detector data: {data.frames} frames, {data.lesions} lesions -> {data.yaml}")
    if not data.lesions["train"]:
        raise DatasetError(
            f"the training side ({', '.join(p.name for p in split.train[:5])}, ...) holds no "
            f"lesion of the classes {list(dataset.classes)}: check --labels and the masks"
        )

    detector_record = _train_detector(args, shipped, data, work, stage, deadline, started)
    stopped = detector_record["interrupted"]  # Ctrl-C ends training, not just the detector's
    sam_record, tuned_modules = _train_sam(args, samples, val, stage, deadline, started, stopped)
    choice = _choose(args, shipped, dataset.classes, val, stage, tuned_modules)
    if choice.detector == "shipped":
        (stage / "detector.pt").rename(stage / "logs" / "detector.not-selected.pt")
        shutil.copyfile(shipped["weights"], stage / "detector.pt")
        detector_record["image_size"] = shipped["image_size"]
    if choice.sam == "zero-shot" and (stage / "sam.pt").exists():
        (stage / "sam.pt").rename(stage / "logs" / "sam.not-selected.pt")
    record = {
        "format": FORMAT,
        "name": args.name or out.resolve().name,
        "classes": list(dataset.classes),
        "detector": {
            **detector_record,
            "selected": choice.detector,
            "score_threshold": choice.score_threshold,
            "box_margin": choice.box_margin,
            "nms_iou_threshold": 0.5,
        },
        "sam": {
            "family": "litemedsam",
            "weights": "sam.pt" if (stage / "sam.pt").exists() else None,
            **sam_record,
            "selected": choice.sam,
        },
        "window": args.window,
        "modality": dataset.modality,
        "dataset": {
            "path": str(dataset.root),
            "format": dataset.format,
            "fingerprint": dataset.fingerprint(),
            "cases": len(dataset.cases),
            "labels": labels,
            "axes": args.axes,
        },
        "split": split.record() | {"val_frames_scored": len(val)},
        "metrics": {
            "selected": choice.best | {"detector": choice.detector, "sam": choice.sam},
            "objective": args.tune_objective,
            "table": choice.rows,
        },
        "training": {
            "command": "lesionseg train " + " ".join(argv),
            "seconds": round(time.time() - started, 1),
            "time_budget_min": args.time_budget,
            "seed": args.seed,
            "interrupted": stopped or bool(sam_record.get("interrupted")),
        },
        "versions": versions("torch", "ultralytics", "peft"),
        "hardware": hardware(),
        **source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (stage / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    _publish(stage, out)
    print((out / "evaluation.md").read_text())
    print(f"bundle -> {out}: {json.dumps(record['metrics']['selected'])}")
    print(f"serve it: LESIONSEG_MODEL_DIR={out} make serve")
    return out


def _keep_shipped_detector(settings: Settings, work: Path) -> dict:
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


def _publish(stage: Path, out: Path) -> None:
    """Replace ``out`` with the finished ``stage`` (two renames on one file system)."""
    previous = out.parent / f".{out.name}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.rename(previous)
    stage.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def _val_frames(split, limit: int, seed: int) -> list:
    """Validation frames, axial: every frame with a lesion first, then as many negatives,
    at most ``limit`` in all (a seeded draw when over)."""
    frames = [f for part in split.val for f in part.frames((0,))]
    positives = [f for f in frames if len(f.masks)]
    negatives = [f for f in frames if not len(f.masks)]
    rng = np.random.default_rng(seed)
    if len(positives) > limit:
        positives = [positives[i] for i in sorted(rng.permutation(len(positives))[:limit])]
    room = min(len(negatives), len(positives), limit - len(positives))
    negatives = [negatives[i] for i in sorted(rng.permutation(len(negatives))[:room])]
    return positives + negatives


def _phase_deadline(deadline, started, share: float) -> float | None:
    """When a phase must end: ``share`` of the budget from the run's start."""
    return None if deadline is None else started + (deadline - started) * share


def _train_detector(args, shipped: dict | None, data, work, out, deadline, started) -> dict:
    """Train YOLO from ``shipped`` (the kept shipped detector; None: a random init)."""
    fine_tune = shipped is not None
    start = str(shipped["weights"]) if fine_tune else f"yolov8{args.model}.yaml"
    if not fine_tune and not args.from_scratch:
        print(
            f"--model {args.model}: only a YOLOv8n detector ships, so this one starts from "
            "a random init (as --from-scratch)"
        )
    end = _phase_deadline(deadline, started, 0.6)
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
        shutil.copyfile(shipped["weights"], out / "detector.pt")
    else:
        copy_checkpoint(best, out / "detector.pt")
    return {
        "weights": "detector.pt",
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


def _train_sam(args, samples, val, out, deadline, started, interrupted: bool):
    """Fine-tune SAM per ``--sam``; return (record, tuned modules or None)."""
    from lesionseg.train.sam_decoder import train_decoder
    from lesionseg.train.sam_lora import LORA_TARGETS, merge, train_lora
    from lesionseg.train.sam_train import save_litemedsam_delta

    if args.sam != "none" and interrupted:
        return {"recipe": f"{args.sam} (skipped: Ctrl-C during detector training)"}, None
    if args.sam == "none" or not samples:
        return {"recipe": "none" if args.sam == "none" else "none (no training lesion)"}, None
    stopper = Stopper(_phase_deadline(deadline, started, 0.85))
    if stopper.stop:  # the budget is spent: do not load SAM nor embed the training frames
        return {"recipe": f"{args.sam} (stopped before its first epoch)"}, None
    val_samples = frame_samples(val)[:24]  # per-epoch checks; the table scores them all
    modules = load_sam("litemedsam", None)
    steps = args.sam_steps or None
    log = EpochLog(out / "logs" / "sam")
    t0 = time.time()
    lora = None
    common = dict(epochs=args.sam_epochs, max_shift=args.max_shift, seed=args.seed, log=log)
    if args.sam == "decoder":
        cache = Settings().cache_dir / "train"
        rows = train_decoder(
            modules,
            samples,
            val_samples,
            lr=args.sam_lr or 2e-4,
            cache=cache,
            max_steps=steps,
            stopper=stopper,
            **common,
        )
    else:
        peft_model, rows = train_lora(
            modules,
            samples,
            val_samples,
            lr=args.sam_lr or 5e-4,
            steps_per_epoch=steps,
            stopper=stopper,
            **common,
        )
        lora = merge(modules, peft_model)
    if not rows:
        return {"recipe": f"{args.sam} (stopped before its first epoch)"}, None
    name = f"{args.name or args.out.name}-{args.sam}"
    sha = save_litemedsam_delta(modules, out / "sam.pt", name=name, lora=lora)
    return {
        "recipe": args.sam,
        "sha256": sha,
        "epochs_run": len(rows),
        "train_samples": len(samples),
        "seconds": round(time.time() - t0, 1),
        "interrupted": stopper.interrupted,
        "max_shift": args.max_shift,
        **({"lora": {"rank": 8, "targets": list(LORA_TARGETS)}} if lora else {}),
        "checkpoint_selection": "epoch of best validation lesion Dice (GT boxes)",
    }, modules


def _choose(
    args, shipped: dict | None, classes, val, stage: Path, tuned_modules
) -> validate.Choice:
    """Tune and pick the detector (new; shipped when kept and its classes are the dataset's)
    and SAM."""
    detectors = [validate.DetectorCandidate("new", stage / "detector.pt", args.imgsz)]
    if shipped and shipped["classes"] is not None and tuple(shipped["classes"]) == tuple(classes):
        served = (shipped["score_threshold"], shipped["box_margin"])
        detectors.append(
            validate.DetectorCandidate("shipped", shipped["weights"], shipped["image_size"], served)
        )
    sams = {"zero-shot": None}
    if tuned_modules is not None:
        sams[f"{args.sam} fine-tune"] = tuned_modules
    choice = validate.validate(
        val,
        detectors,
        sams,
        classes,
        out=stage,
        cache=Settings().cache_dir / "train",
        min_area=args.min_lesion_px,
        objective=args.tune_objective,
    )
    sam = "zero-shot" if choice.sam == "zero-shot" else args.sam
    return validate.Choice(
        choice.detector, sam, choice.score_threshold, choice.box_margin, choice.best, choice.rows
    )
