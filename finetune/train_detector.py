"""Train the default lesion detector: YOLOv8n from scratch on the LiTS training slab.

Boxes come from the tumour masks (8-connected components per axial slice). The result is
evaluated with the project's own code (``lesionseg.evaluation``) on the validation slab and
written as ``<out>.pt`` beside ``<out>.json``, the record of how it was made, and
``<out>.training-log.{csv,json}``, the per-epoch losses and validation metrics. Seeded
(``--seed``, deterministic); ultralytics prints a progress bar per epoch.

    python -m finetune.train_detector --epochs 120 --out models/detector/lesion-yolov8n
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

from lesionseg.data import SPLITS, LitsCase
from lesionseg.detector import Detector, import_yolo
from lesionseg.evaluation import DetectionCounts, match_detections
from lesionseg.provenance import git_commit, hardware, versions
from lesionseg.settings import Settings

CLASS_NAMES = ["lesion"]


def write_yolo_dataset(case: LitsCase, root: Path, min_area: int = 1) -> Path:
    """Write train/val slices as PNG + YOLO label files; return the data yaml (absolute paths)."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for sl in case.slices(split):
            stem = f"lits117_z{sl.index:03d}"
            Image.fromarray(sl.image).save(root / "images" / split / f"{stem}.png")
            h, w = sl.instances.shape
            lines = []
            for (x0, y0, x1, y1), area in zip(sl.boxes, sl.areas, strict=True):
                if area < min_area:
                    continue
                cx, cy, bw, bh = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h
                lines.append(f"0 {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines))
    yaml = root / "data.yaml"
    yaml.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: lesion\n"
    )
    return yaml


def evaluate_detector(
    detector: Detector, case: LitsCase, split: str = "val", *, iou: float = 0.3, min_area: int = 50
) -> DetectionCounts:
    """Recall/precision of ``detector`` on a split, matched at box IoU ``iou``."""
    counts = DetectionCounts()
    slices = list(case.slices(split))
    for start in range(0, len(slices), 8):
        batch = slices[start : start + 8]
        for sl, det in zip(batch, detector.detect([s.image for s in batch]), strict=True):
            counts += match_detections(
                det.boxes, sl.boxes, sl.areas, iou_threshold=iou, min_area=min_area
            )
    return counts


def train_yolo(
    data_yaml: Path,
    workdir: Path,
    *,
    epochs: int,
    imgsz: int = 256,
    batch: int = 16,
    seed: int = 0,
):
    """Train YOLOv8n from random init (ultralytics shows its per-epoch progress bar).

    Returns the ultralytics model; its per-epoch losses and validation metrics are in
    ``<workdir>/train/results.csv`` (see :func:`write_training_log`).
    """
    YOLO = import_yolo()  # noqa: N806 (ultralytics' class)
    model = YOLO("yolov8n.yaml")  # architecture only: random init, nothing downloaded
    model.train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        deterministic=True,
        device="cpu",
        workers=0,
        amp=False,
        plots=False,
        project=str(Path(workdir).resolve()),
        name="train",
        exist_ok=True,
        verbose=False,
        flipud=0.5,
        degrees=10.0,
        close_mosaic=10,
        patience=0,
    )
    return model


def write_training_log(results_csv: Path, out: Path) -> None:
    """Copy ultralytics' per-epoch results.csv to ``<out>.training-log.csv`` and ``.json``."""
    with Path(results_csv).open(newline="") as handle:
        rows = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    shutil.copyfile(results_csv, Path(f"{out}.training-log.csv"))
    Path(f"{out}.training-log.json").write_text(json.dumps(rows, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold of the record")
    parser.add_argument("--workdir", type=Path, default=Path("runs/detector"))
    parser.add_argument("--out", type=Path, default=Path("models/detector/lesion-yolov8n"))
    args = parser.parse_args(argv)

    settings = Settings()
    case = LitsCase(settings.cache_dir)
    data_yaml = write_yolo_dataset(case, args.workdir / "dataset")
    started = time.time()
    model = train_yolo(
        data_yaml,
        args.workdir,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        seed=args.seed,
    )
    best = Path(model.trainer.best)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, args.out.with_suffix(".pt"))
    write_training_log(best.parent.parent / "results.csv", args.out)

    detector = Detector(
        args.out.with_suffix(".pt"), image_size=args.imgsz, score_threshold=args.conf
    )
    ours = evaluate_detector(detector, case, "val")
    metrics = model.val(
        data=str(data_yaml),
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=0,
        plots=False,
        verbose=False,
    )
    record = {
        "model": "yolov8n (ultralytics yolov8n.yaml, random init)",
        "weights": args.out.with_suffix(".pt").name,
        "data": "LiTS case 117 (liver-ct-segmentation-package==1.6.0), axial slices, CT L40/W400",
        "split": {k: [v.start, v.stop - 1] for k, v in SPLITS.items() if k != "all"},
        "classes": CLASS_NAMES,
        "epochs": args.epochs,
        "image_size": args.imgsz,
        "batch": args.batch,
        "seed": args.seed,
        "augmentation": "ultralytics defaults + flipud=0.5, degrees=10, close_mosaic=10",
        "validation": {
            "ultralytics": {
                "precision": float(metrics.box.mp),
                "recall": float(metrics.box.mr),
                "mAP50": float(metrics.box.map50),
                "mAP50_95": float(metrics.box.map),
            },
            "lesionseg": {
                "score_threshold": args.conf,
                "match_iou": 0.3,
                "min_lesion_px": 50,
                "recall": ours.recall,
                "precision": ours.precision,
                "lesions": ours.ground_truth,
                "detected": ours.true_positives,
            },
        },
        "train_seconds": round(time.time() - started, 1),
        "hardware": hardware(),
        "versions": versions("ultralytics", "torch"),
        "git_commit": git_commit(),
        "command": "python -m finetune.train_detector " + " ".join(argv or sys.argv[1:]),
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["validation"], indent=2))


if __name__ == "__main__":
    main()
