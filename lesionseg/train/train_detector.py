"""The detector recipe of ``lesionseg train``: frames -> YOLO dataset -> ultralytics training.

Boxes are the tight boxes of the lesion instances (one per instance, its class id). Training
starts from the shipped detector by default (its weights transfer; a new class count gets a new
head) or from a random init (``yolov8{n,s,m}.yaml``), with augmentation that suits medical
slices: flips both ways, scale, small rotations, brightness (``hsv_v``), mosaic; no colour jitter
(``hsv_h = hsv_s = 0``). A time budget is honoured by ultralytics' own ``time`` argument (which
re-plans the epochs to fill it; ``epochs`` stays the cap). Ctrl-C ends the epoch at the next
batch the way the time limit does, so ultralytics validates and saves a whole checkpoint.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lesionseg.datasets import Frame
from lesionseg.measure.evaluation import DetectionCounts, match_detections
from lesionseg.models.detector import Detector, import_yolo
from lesionseg.train.common import Stopper
from lesionseg.transforms import mask_to_box

AUGMENTATION = {
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.3,
    "fliplr": 0.5,
    "flipud": 0.5,
    "degrees": 10.0,
    "scale": 0.5,
    "translate": 0.1,
    "mosaic": 1.0,
    "close_mosaic": 10,
}


@dataclass(frozen=True)
class YoloData:
    """A YOLO dataset on disk and what went into it."""

    yaml: Path
    frames: dict[str, int]  # per side: frames written
    lesions: dict[str, int]  # per side: boxes written
    negatives: dict[str, int]  # per side: frames without a lesion written


def frame_boxes(frame: Frame) -> np.ndarray:
    """(K, 4) float32 XYXY tight boxes of the frame's instances (pixel edges)."""
    return np.array([mask_to_box(m) for m in frame.masks], np.float32).reshape(-1, 4)


def write_yolo_dataset(
    sides: dict[str, Iterable[Frame]],
    classes: Sequence[str],
    root: Path,
    *,
    negative_ratio: float = 1.0,
    seed: int = 0,
) -> YoloData:
    """Write each side's frames as PNG + YOLO label files; return the data yaml (absolute paths).

    Frames without a lesion are kept as negatives, at most ``negative_ratio`` x the side's
    positive frames (a seeded draw), so that a volume's empty slices do not swamp training.
    """
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {"frames": {}, "lesions": {}, "negatives": {}}
    for side, frames in sides.items():
        images, labels = root / "images" / side, root / "labels" / side
        if images.exists():
            shutil.rmtree(images)
        if labels.exists():
            shutil.rmtree(labels)
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        positives, negatives, boxes = 0, [], 0
        for n, frame in enumerate(frames):
            if len(frame.masks) == 0:
                negatives.append(frame)
                continue
            positives += 1
            boxes += len(frame.masks)
            _write_frame(frame, n, images, labels)
        keep = round(negative_ratio * positives) if positives else len(negatives)
        chosen = rng.permutation(len(negatives))[:keep]
        for k in sorted(chosen):
            _write_frame(negatives[k], f"neg{k}", images, labels)
        counts["frames"][side] = positives + len(chosen)
        counts["lesions"][side] = boxes
        counts["negatives"][side] = len(chosen)
    names = "".join(f"  {i}: {json.dumps(name)}\n" for i, name in enumerate(classes))
    yaml = root / "data.yaml"
    yaml.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}"
    )
    return YoloData(yaml, counts["frames"], counts["lesions"], counts["negatives"])


def _write_frame(frame: Frame, n: object, images: Path, labels: Path) -> None:
    stem = f"{n}_" + "".join(c if c.isalnum() else "_" for c in frame.name)[-80:]
    Image.fromarray(frame.image).save(images / f"{stem}.png")
    h, w = frame.image.shape[:2]
    lines = [
        f"{int(c)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
        f"{(y1 - y0) / h:.6f}"
        for (x0, y0, x1, y1), c in zip(frame_boxes(frame), frame.labels, strict=True)
    ]
    (labels / f"{stem}.txt").write_text("\n".join(lines))


def train_yolo(
    data: YoloData,
    workdir: Path,
    *,
    start: str,
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int,
    time_hours: float | None = None,
) -> tuple[Path | None, bool]:
    """Train from ``start`` (a .pt to fine-tune, or an architecture yaml for random init).

    Returns:
        (best checkpoint or None when no epoch finished, interrupted by Ctrl-C). A second
        Ctrl-C raises KeyboardInterrupt at once.
    """
    YOLO = import_yolo()  # noqa: N806 (ultralytics' class)
    model = YOLO(start)
    options = dict(
        data=str(data.yaml),
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
        patience=0,
        **AUGMENTATION,
    )
    if time_hours is not None:
        options["time"] = time_hours
    stopper = Stopper()

    def stop_on_ctrl_c(trainer) -> None:
        # A KeyboardInterrupt raised anywhere in ultralytics could tear a checkpoint being saved.
        trainer.stop |= stopper.interrupted

    def cap_epochs(trainer) -> None:
        # Time mode re-plans trainer.epochs to fill the time (linear LR decay follows it).
        trainer.epochs = trainer.args.epochs = min(trainer.epochs, epochs)
        trainer.stop |= trainer.epoch + 1 >= epochs

    model.add_callback("on_train_batch_end", stop_on_ctrl_c)
    model.add_callback("on_fit_epoch_end", cap_epochs)
    with stopper:
        model.train(**options)
    if stopper.interrupted:
        print("detector training interrupted: keeping the best checkpoint so far")
    weights = Path(workdir).resolve() / "train" / "weights"
    for name in ("best.pt", "last.pt"):
        if (weights / name).is_file():
            return weights / name, stopper.interrupted
    return None, stopper.interrupted


def copy_checkpoint(source: Path, target: Path) -> None:
    """Copy an ultralytics checkpoint without its optimiser state (a third of the size)."""
    from ultralytics.utils.torch_utils import strip_optimizer

    shutil.copyfile(source, target)
    strip_optimizer(str(target))


def copy_training_log(workdir: Path, target: Path) -> int:
    """ultralytics' per-epoch results.csv -> ``<target>.csv`` and ``<target>.json``; returns
    the number of epochs logged."""
    results = Path(workdir).resolve() / "train" / "results.csv"
    if not results.is_file():
        return 0
    with results.open(newline="") as handle:
        rows = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results, f"{target}.csv")
    Path(f"{target}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return len(rows)


def detect_frames(detector: Detector, frames: Sequence[Frame], *, score_threshold: float) -> list:
    """Detections of ``detector`` on every frame (batches of 8), at ``score_threshold``."""
    out = []
    for start in range(0, len(frames), 8):
        batch = [f.image for f in frames[start : start + 8]]
        out.extend(detector.detect(batch, score_threshold=score_threshold))
    return out


def detection_counts(
    detections: Sequence, frames: Sequence[Frame], *, iou: float, min_area: int, threshold: float
) -> DetectionCounts:
    """Recall/precision of detections (kept at ``threshold``) matched at box IoU ``iou``."""
    counts = DetectionCounts()
    for det, frame in zip(detections, frames, strict=True):
        keep = det.scores >= threshold
        areas = frame.masks.sum(axis=(1, 2))  # (K,), also for K = 0
        counts += match_detections(
            det.boxes[keep], frame_boxes(frame), areas, iou_threshold=iou, min_area=min_area
        )
    return counts
