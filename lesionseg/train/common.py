"""Shared pieces of the SAM recipes: samples, box perturbation, loss, seed, logs.

A *sample* is one dataset frame (:class:`lesionseg.datasets.Frame`) with its lesion instances:
every instance of at least ``min_area`` px gives one (box, mask) prompt/target pair. Boxes are
XYXY in original pixels.
"""

from __future__ import annotations

import csv
import json
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lesionseg.datasets import Frame
from lesionseg.transforms import clip_boxes, mask_to_box, resized_hw

TRAIN_MIN_AREA = 10  # px: outlines of a few pixels are label noise


@dataclass(frozen=True)
class Sample:
    """One slice and its lesions.

    Attributes:
        name: the frame's name in its dataset.
        image: (H, W, 3) uint8 RGB, as the service sees it.
        boxes: (K, 4) float32 XYXY in original pixels, lesions of >= min_area px.
        masks: (K, H, W) bool, one mask per box.
    """

    name: str
    image: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


def frame_samples(frames: Iterable[Frame], *, min_area: int = TRAIN_MIN_AREA) -> list[Sample]:
    """Frames that hold at least one lesion of ``min_area`` px, as samples."""
    out = []
    for frame in frames:
        keep = [m for m in frame.masks if int(m.sum()) >= min_area]
        if keep:
            boxes = np.stack([mask_to_box(m) for m in keep]).astype(np.float32)
            out.append(Sample(frame.name, frame.image, boxes, np.stack(keep)))
    return out


def perturb_boxes(
    boxes: np.ndarray, image_hw: tuple[int, int], max_shift: float, rng: np.random.Generator
) -> np.ndarray:
    """Shift every side of every box independently by U(-m, m) px, m = max_shift * max(H, W).

    The result is clipped to the image and kept at least 1 px wide and high. ``max_shift``
    is a fraction of the longest image side (0.05 = 5 %), so the amount scales with the image.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if max_shift <= 0 or boxes.size == 0:
        return boxes.copy()
    m = max_shift * max(image_hw)
    out = clip_boxes(boxes + rng.uniform(-m, m, boxes.shape).astype(np.float32), image_hw)
    h, w = image_hw
    out[:, 2] = np.maximum(out[:, 2], np.minimum(out[:, 0] + 1, w))
    out[:, 0] = np.minimum(out[:, 0], out[:, 2] - 1)
    out[:, 3] = np.maximum(out[:, 3], np.minimum(out[:, 1] + 1, h))
    out[:, 1] = np.minimum(out[:, 1], out[:, 3] - 1)
    return out


def masks_to_model_frame(masks: np.ndarray, size: int) -> np.ndarray:
    """(K, H, W) bool -> (K, size, size) float32 targets: resize longest side, pad bottom/right.

    The same geometry :func:`lesionseg.transforms.preprocess` applies to the image.
    """
    h, w = resized_hw(masks.shape[1:], size)
    out = np.zeros((masks.shape[0], size, size), np.float32)
    for k, mask in enumerate(masks):
        resized = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        out[k, :h, :w] = resized > 0.5
    return out


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + binary cross-entropy, averaged over masks.

    Args:
        logits: (N, H, W) raw mask logits.
        target: (N, H, W) float {0, 1}.
    """
    prob = torch.sigmoid(logits)
    inter = (prob * target).flatten(1).sum(1)
    denom = prob.flatten(1).sum(1) + target.flatten(1).sum(1)
    soft_dice = 1 - (2 * inter + 1) / (denom + 1)
    return soft_dice.mean() + F.binary_cross_entropy_with_logits(logits, target)


class Stopper:
    """Ends a training loop early and keeps its best state so far.

    ``deadline`` (a ``time.time()`` value) or a Ctrl-C (SIGINT, caught while the ``with``
    block runs) set :attr:`stop`; the loop checks it each step and finishes cleanly.
    :meth:`offer` keeps a copy of the module's trainable tensors whenever the validation
    score improves (or, without a score, the latest); :meth:`restore` puts the best back.
    """

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline
        self.interrupted = False
        self.best: tuple[float, dict[str, torch.Tensor]] | None = None
        self._previous = None

    @property
    def stop(self) -> bool:
        return self.interrupted or (self.deadline is not None and time.time() >= self.deadline)

    def __enter__(self) -> Stopper:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, *_) -> None:
        if self.interrupted:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        print("\nCtrl-C: finishing this step and keeping the best state so far", flush=True)
        self.interrupted = True

    def offer(self, module: torch.nn.Module, score: float | None) -> None:
        """Keep ``module``'s trainable tensors if ``score`` is the best so far (or None)."""
        value = float("-inf") if score is None else float(score)
        if self.best is None or score is None or value > self.best[0]:
            state = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
            self.best = (value, state)

    def restore(self, module: torch.nn.Module) -> None:
        """Put the best trainable tensors back into ``module`` (no-op when none was offered)."""
        if self.best is None:
            return
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, tensor in self.best[1].items():
                params[name].copy_(tensor)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy generator for the recipe's own draws."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def trainable_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


class EpochLog:
    """Per-epoch losses and validation metrics, rewritten as CSV and JSON after every epoch.

    ``<stem>.training-log.csv`` and ``<stem>.training-log.json`` beside the checkpoint.
    """

    def __init__(self, stem: Path):
        self.csv = Path(f"{stem}.training-log.csv")
        self.json = Path(f"{stem}.training-log.json")
        self.rows: list[dict] = []

    def add(self, **row: float | int) -> None:
        self.rows.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
        self.csv.parent.mkdir(parents=True, exist_ok=True)
        with self.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        self.json.write_text(json.dumps(self.rows, indent=1) + "\n")


def optimise(optimiser: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One gradient step on ``loss``; its value as a float."""
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def end_epoch(
    rows: list[dict],
    log: EpochLog | None,
    epoch: int,
    losses: Sequence[float],
    started: float,
    **metrics: float,
) -> dict:
    """Append (and log, and print) the epoch's row: mean loss, seconds, validation metrics."""
    row = {"epoch": epoch, "train_loss": mean(losses), "seconds": time.time() - started, **metrics}
    print(row)
    rows.append(row)
    if log is not None:
        log.add(**row)
    return row


def mean(values: Sequence[float]) -> float:
    """Mean of a non-empty sequence as a float (nan when empty)."""
    return float(np.mean(values)) if len(values) else float("nan")


def write_record(path: Path, record: dict, source: dict) -> None:
    """The JSON record beside a checkpoint: how it was made and how it measured; ``source`` is
    :func:`lesionseg.provenance.git_state` taken when the run started."""
    from lesionseg.provenance import hardware, versions

    full = {
        **record,
        "hardware": hardware(),
        "versions": versions("torch", "peft", "monai", "transformers"),
        **source,
    }
    Path(path).write_text(json.dumps(full, indent=2) + "\n")
