"""The command line of ``lesionseg train`` (its arguments and their defaults)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesionseg.datasets import FORMATS
from lesionseg.measure.evaluation import EVAL_MIN_AREA
from lesionseg.train import evaluate
from lesionseg.train.split import AXES

DESCRIPTION = "Train the detector and SAM on your own labelled images and write a model bundle."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lesionseg train", description=DESCRIPTION)
    p.add_argument("dataset", type=Path, help="dataset folder (layout detected; see --format)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name shown by the service (default: the --out name)")
    p.add_argument("--format", choices=FORMATS, help="override the detected layout")
    p.add_argument(
        "--labels",
        help="comma-separated class names that count as lesions, e.g. tumour (default: every "
        "label but background; the others count as background)",
    )
    p.add_argument(
        "--window",
        help="DICOM/NIfTI window: a preset (abdomen, liver, lung, bone, "
        "brain, mediastinum) or 'center,width'; recorded in the bundle",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of cases (default 0.2)")
    p.add_argument("--val-cases", help="comma-separated case names for validation")
    p.add_argument(
        "--slab-gap",
        type=int,
        default=10,
        help="slices between the slabs of a one-volume dataset (default 10)",
    )
    p.add_argument(
        "--axes",
        choices=sorted(AXES),
        default="axial",
        help="training slices of volumes: axial only, or along all three axes",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--detector",
        choices=["auto", "yolo", "sam-head"],
        default="auto",
        help="yolo: a YOLOv8 on the image; sam-head: a head on SAM's embedding, 2.5-D for "
        "volumes; auto (default): train both and keep the better on validation",
    )
    p.add_argument("--head-epochs", type=int, default=60, help="sam-head epochs (default 60)")
    p.add_argument(
        "--head-views",
        type=int,
        default=3,
        help="sam-head: views of the training slices, the first as is, the others augmented "
        "(flips, zoom, intensity); each costs one encoder pass per slice (default 3)",
    )
    p.add_argument("--head-lr", type=float, default=2e-3)
    p.add_argument("--model", choices=["n", "s", "m"], default="n", help="YOLOv8 size")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="random init instead of the shipped detector (always for s and m)",
    )
    p.add_argument("--epochs", type=int, default=100, help="detector epochs (default 100)")
    p.add_argument("--imgsz", type=int, default=256, help="detector input size (default 256)")
    p.add_argument("--batch", type=int, default=16, help="detector batch (both kinds)")
    p.add_argument(
        "--negative-ratio",
        type=float,
        default=1.0,
        help="frames without lesion per frame with one, at most (default 1)",
    )
    p.add_argument(
        "--sam",
        choices=["lora", "decoder", "none"],
        help="SAM fine-tune (default: lora; decoder with --detector sam-head)",
    )
    p.add_argument("--sam-epochs", type=int, default=3)
    p.add_argument("--sam-steps", type=int, default=0, help="steps per SAM epoch (0: all)")
    p.add_argument("--sam-lr", type=float, help="default 5e-4 (lora), 2e-4 (decoder)")
    p.add_argument("--max-shift", type=float, default=0.05, help="SAM box perturbation")
    p.add_argument("--time-budget", type=float, help="minutes for the whole run")
    p.add_argument(
        "--max-val-frames",
        type=int,
        default=200,
        help="validation frames scored (all with lesions first; default 200)",
    )
    p.add_argument("--min-lesion-px", type=int, default=EVAL_MIN_AREA)
    p.add_argument("--tune-objective", choices=evaluate.OBJECTIVES, default="fp_penalised_dice")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--workdir", type=Path, help="scratch (default .cache/train/<out name>)")
    args = p.parse_args(argv)
    if args.sam is None:
        args.sam = "decoder" if args.detector == "sam-head" else "lora"
    if args.detector == "sam-head" and args.sam == "lora":
        p.error(
            "--detector sam-head finds lesions on SAM's frozen encoder, which a LoRA fine-tune "
            "changes: use --sam decoder (the default with sam-head) or --sam none"
        )
    return args
