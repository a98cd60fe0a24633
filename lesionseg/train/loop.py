"""The per-sample epoch loop the SAM recipes share (decoder-only and LoRA).

A recipe says what one step's loss is and how to validate; the loop owns the rest: a seeded
order of the training samples per epoch, one optimiser step per sample, a validation per
epoch, the rows of the training log, early stop and keeping the best epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from lesionseg.train.common import EpochLog, Stopper, end_epoch, optimise


def run_epochs(
    module: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    sample_loss: Callable[[int], torch.Tensor],
    validate: Callable[[], dict[str, float]] | None,
    *,
    samples: int,
    epochs: int,
    rng: np.random.Generator,
    max_steps: int | None = None,
    stopper: Stopper | None = None,
    log: EpochLog | None = None,
    name: str = "training",
) -> list[dict]:
    """Train ``module`` in place for ``epochs``; return one row per epoch (loss, val metrics).

    Args:
        module: what is trained; its trainable tensors are what ``stopper`` keeps and restores.
        optimiser: over ``module``'s trainable parameters.
        sample_loss: index of a training sample -> its scalar loss (with grad).
        validate: the validation metrics of the current state (``val_lesion_dice`` picks the
            best epoch); None: no validation, the last epoch is kept.
        samples: number of training samples; each epoch visits a permutation of them drawn
            from ``rng``, the first ``max_steps`` of it when set.
        stopper: ends training early (time budget, Ctrl-C) after the current step; the best
            epoch so far is restored at the end either way.
        name: the progress bar's label (``"<name> epoch 2/5"``).
    """
    stopper = stopper or Stopper()
    rows: list[dict] = []
    with stopper:
        for epoch in range(1, epochs + 1):
            started, losses = time.time(), []
            order = rng.permutation(samples)[:max_steps]
            for i in tqdm(order, desc=f"{name} epoch {epoch}/{epochs}", leave=False):
                if stopper.stop:
                    break
                losses.append(optimise(optimiser, sample_loss(int(i))))
            if not losses:
                break
            metrics = validate() if validate is not None else {}
            end_epoch(rows, log, epoch, losses, started, **metrics)
            stopper.offer(module, metrics.get("val_lesion_dice"))
            if stopper.stop:
                break
    stopper.restore(module)
    return rows
