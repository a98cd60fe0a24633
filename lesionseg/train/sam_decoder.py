"""SAM decoder-only fine-tuning: image and prompt encoders frozen, Dice + BCE, Adam.

After the SAM-on-EM-mitochondria recipe: the image embeddings are computed once and cached
(``.cache/train/``), so an epoch costs only decoder passes. Every box side is shifted by up
to ``max_shift`` of the longest image side during training (box perturbation).
``lesionseg train DATASET --sam decoder`` runs it (:mod:`lesionseg.train.train`); the result is
saved
as a delta of the fp16 mask-decoder weights on the sha256-verified base (``sam.pt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lesionseg.models.sam import SamModules
from lesionseg.train.common import (
    EpochLog,
    Sample,
    Stopper,
    seed_everything,
    trainable_parameters,
)
from lesionseg.train.loop import run_epochs
from lesionseg.train.sam_train import cached_embeddings, evaluate_gt_boxes, sample_loss

DEFAULT_MAX_SHIFT = 0.05  # fraction of the longest image side


def mask_decoder(modules: SamModules) -> nn.Module:
    """The mask decoder inside the project's decoder wrapper (the part this recipe trains)."""
    if modules.spec.family == "litemedsam":
        return modules.decoder.mask_decoder
    return modules.decoder.model.mask_decoder


def train_decoder(
    modules: SamModules,
    train: Sequence[Sample],
    val: Sequence[Sample],
    *,
    epochs: int,
    lr: float = 2e-4,
    max_shift: float = DEFAULT_MAX_SHIFT,
    max_boxes: int = 4,
    seed: int = 0,
    cache: Path,
    log: EpochLog | None = None,
    max_steps: int | None = None,
    stopper: Stopper | None = None,
) -> list[dict]:
    """Train the mask decoder in place; return one row per epoch (loss, val metrics).

    With validation samples, the decoder of the epoch with the best validation lesion Dice is
    kept (restored at the end); ``stopper`` ends training early (time budget, Ctrl-C), keeping
    the best epoch so far.
    """
    rng = seed_everything(seed)
    for p in [*modules.encoder.parameters(), *modules.decoder.parameters()]:
        p.requires_grad_(False)
    decoder = mask_decoder(modules)
    for p in decoder.parameters():
        p.requires_grad_(True)
    trained, total = trainable_parameters(nn.ModuleList([modules.encoder, modules.decoder]))
    print(f"trainable parameters: {trained:,} of {total:,} ({100 * trained / total:.2f} %)")
    train_emb = cached_embeddings(modules, [s.image for s in train], cache)
    val_emb = cached_embeddings(modules, [s.image for s in val], cache) if val else None
    optimiser = torch.optim.Adam(decoder.parameters(), lr=lr)

    def loss(i: int) -> torch.Tensor:
        return sample_loss(modules, train_emb[i : i + 1], train[i], rng, max_shift, max_boxes)

    def validate() -> dict[str, float]:
        return evaluate_gt_boxes(modules, val, val_emb)

    return run_epochs(
        decoder,
        optimiser,
        loss,
        validate if val_emb is not None else None,
        samples=len(train),
        epochs=epochs,
        rng=rng,
        max_steps=max_steps,
        stopper=stopper,
        log=log,
        name="SAM decoder",
    )
