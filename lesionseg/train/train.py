"""``lesionseg train DATASET --out DIR``: train the detector and SAM on your own labelled images.

Reads the dataset (:mod:`lesionseg.datasets`: nnU-Net/MSD, PNG folders, BUSI, DICOM series with
SEG or RTSTRUCT, COCO), splits it by case, trains the detector(s) of ``--detector`` — a SAM
head on the frozen encoder's embedding (:mod:`lesionseg.train.head_phase`) and/or a YOLO (from
the served one by default, :mod:`lesionseg.train.yolo_phase`) — fine-tunes SAM (LoRA,
decoder-only or not at all) with box perturbation, tunes each detector's score threshold and
box margin on the validation cases, keeps the best (detector, SAM) pair, writes the evaluation
table and a model bundle that ``LESIONSEG_MODEL_DIR=DIR make serve`` serves:

    DIR/model.json  DIR/detector.pt  DIR/sam.pt (when the fine-tune helps)
    DIR/evaluation.{csv,md,png}  DIR/logs/ (the detector not selected, training logs)

``--time-budget MINUTES`` stops training in time (detectors ~60 %: the head the first 25 % when
both train, SAM ~25 % of it) and still writes a valid bundle from the best checkpoints so far;
so does Ctrl-C.
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
from lesionseg.models.bundle_settings import effective_settings
from lesionseg.models.sam import load_sam
from lesionseg.provenance import git_state, hardware, versions
from lesionseg.settings import Settings
from lesionseg.train import validate
from lesionseg.train.arguments import parse_args
from lesionseg.train.common import EpochLog, Stopper, frame_samples
from lesionseg.train.extra import require_training_extra
from lesionseg.train.head_data import neighbours, runs_of
from lesionseg.train.head_phase import CONTEXT, SAMS, head_phase
from lesionseg.train.split import AXES, require_lesions, split_cases
from lesionseg.train.train_detector import write_yolo_dataset
from lesionseg.train.yolo_phase import keep_shipped_detector, yolo_phase


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
    val, val_neighbours = _val_frames(split, args.max_val_frames, args.seed)
    if not val:  # _val_frames keeps negatives only as many as positives
        raise DatasetError(
            f"the validation side ({', '.join(p.name for p in split.val[:5])}) holds no lesion:"
            " the threshold cannot be tuned nor accuracy measured; pick validation cases with"
            " lesions (--val-cases, --seed or --val-fraction)"
        )
    out, work = args.out, args.workdir or settings.cache_dir / "train" / args.out.name
    work.mkdir(parents=True, exist_ok=True)
    kinds = ("sam-head", "yolo") if args.detector == "auto" else (args.detector,)
    # A YOLO starts from the served bundle's YOLO (none when that bundle's detector is a head).
    fine_tune = "yolo" in kinds and args.model == "n" and not args.from_scratch
    fine_tune = fine_tune and settings.detector_kind == "yolo"
    # From scratch, the shipped detector is neither the start nor a candidate: not read at all.
    shipped = keep_shipped_detector(settings, work) if fine_tune else None
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

    records: dict[str, dict] = {}
    head_detections = None
    if "sam-head" in kinds:
        share = 0.25 if "yolo" in kinds else 0.6
        records["sam-head"], head_detections = head_phase(
            args,
            split,
            AXES[args.axes],
            val,
            val_neighbours,
            dataset.classes,
            stage,
            Settings().cache_dir / "train",
            _phase_deadline(deadline, started, share),
        )
    if "yolo" in kinds and records.get("sam-head", {}).get("interrupted"):
        print("Ctrl-C during the sam-head's training: the YOLO is not trained")
    elif "yolo" in kinds:
        data = write_yolo_dataset(
            {"train": train_frames(), "val": iter(val)},
            dataset.classes,
            work / "yolo",
            negative_ratio=args.negative_ratio,
            seed=args.seed,
        )
        print(f"detector data: {data.frames} frames, {data.lesions} lesions -> {data.yaml}")
        require_lesions(split, dataset.classes, data.lesions["train"])
        records["yolo"] = yolo_phase(
            args, shipped, data, work, stage, _phase_deadline(deadline, started, 0.6)
        )
    elif args.sam != "none":
        for _ in train_frames():
            pass
    stopped = any(r["interrupted"] for r in records.values())  # Ctrl-C ends the whole run
    sam_record, tuned_modules = _train_sam(args, samples, val, stage, deadline, started, stopped)
    choice = _choose(args, shipped, dataset.classes, val, stage, tuned_modules, head_detections)
    detector_record = _place_detector(choice.detector, records, shipped, stage)
    if choice.sam == "zero-shot" and (stage / "sam.pt").exists():
        (stage / "sam.pt").rename(stage / "logs" / "sam.not-selected.pt")
    record = {
        "format": FORMAT,
        "name": args.name or out.resolve().name,
        "classes": list(dataset.classes),
        "detector": {
            **detector_record,
            "selected": choice.detector,
            "kinds_trained": list(records),
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
        "detectors": records,
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
    _evaluate_held_out(args, out)
    print((out / "evaluation.md").read_text())
    print(f"bundle -> {out}: {json.dumps(record['metrics']['selected'])}")
    print(f"serve it: LESIONSEG_MODEL_DIR={out} make serve")
    return out


def _evaluate_held_out(args: argparse.Namespace, out: Path) -> None:
    """``lesionseg evaluate`` of the new bundle on its validation side (every frame, not the
    tuning's sample, up to ``--max-val-frames``) into ``out/held-out/``. Its threshold and
    detector were chosen on these cases: a new patient may score lower."""
    from lesionseg.train import evaluate_command

    argv = [str(args.dataset), "--model", str(out), "--out", str(out / "held-out")]
    argv += ["--max-frames", str(args.max_val_frames), "--seed", str(args.seed)]
    for option, value in (("--labels", args.labels), ("--format", args.format)):
        argv += [option, value] if value else []
    argv += ["--window", args.window] if args.window else []
    evaluate_command.run(evaluate_command.parse_args(argv), argv)


def _publish(stage: Path, out: Path) -> None:
    """Replace ``out`` with the finished ``stage`` (two renames on one file system)."""
    previous = out.parent / f".{out.name}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.rename(previous)
    stage.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def _val_frames(split, limit: int, seed: int) -> tuple[list, list]:
    """Validation frames, axial: every frame with a lesion first, then as many negatives,
    at most ``limit`` in all (a seeded draw when over); and per frame its neighbours in its
    volume (k-1, k+1; itself at the ends and for 2-D images), a sam-head's 2.5-D context."""
    runs = list(runs_of(split.val, (0,)))
    where = [(r, i) for r, run in enumerate(runs) for i in range(len(run))]
    positives = [w for w in where if len(runs[w[0]][w[1]].masks)]
    negatives = [w for w in where if not len(runs[w[0]][w[1]].masks)]
    rng = np.random.default_rng(seed)
    if len(positives) > limit:
        positives = [positives[i] for i in sorted(rng.permutation(len(positives))[:limit])]
    room = min(len(negatives), len(positives), limit - len(positives))
    negatives = [negatives[i] for i in sorted(rng.permutation(len(negatives))[:room])]
    chosen = positives + negatives
    frames = [runs[r][i] for r, i in chosen]
    around = [[runs[r][j] for j in neighbours(i, len(runs[r]), CONTEXT)] for r, i in chosen]
    return frames, around


def _place_detector(name: str, records: dict, shipped: dict | None, stage: Path) -> dict:
    """Make the selected detector the bundle's ``detector.pt`` (the shipped one copied in);
    the others go to ``logs/`` as ``<kind>.not-selected.pt``. Its record, as served."""
    kind = "yolo" if name == "shipped" else name
    for other, record in records.items():
        if other != name and record.get("weights"):
            target = f"logs/{other}.not-selected.pt"
            (stage / record["weights"]).rename(stage / target)
            record["weights"] = target
    selected = dict(records[kind])
    if name == "shipped":
        shutil.copyfile(shipped["weights"], stage / "detector.pt")
        selected["image_size"] = shipped["image_size"]
    else:
        (stage / selected["weights"]).rename(stage / "detector.pt")
        records[kind]["weights"] = "detector.pt"
    return selected | {"weights": "detector.pt"}


def _phase_deadline(deadline, started, share: float) -> float | None:
    """When a phase must end: ``share`` of the budget from the run's start."""
    return None if deadline is None else started + (deadline - started) * share


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
    args, shipped: dict | None, classes, val, stage: Path, tuned_modules, head_detections
) -> validate.Choice:
    """Tune and pick the detector (the new ones; shipped when kept and its classes are the
    dataset's) and SAM."""
    detectors = []
    if (stage / "yolo.pt").exists():
        detectors.append(validate.DetectorCandidate("yolo", stage / "yolo.pt", args.imgsz))
    if head_detections is not None:
        detectors.append(
            validate.DetectorCandidate("sam-head", None, 0, detections=head_detections, sams=SAMS)
        )
    if not detectors:
        raise LesionSegError("no detector finished an epoch; nothing to write: raise --time-budget")
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
