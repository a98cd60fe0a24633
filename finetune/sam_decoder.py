"""SAM decoder-only fine-tuning: image and prompt encoders frozen, Dice + BCE, Adam.

After the SAM-on-EM-mitochondria recipe: the image embeddings are computed once and cached
(``.cache/finetune/``), so an epoch costs only decoder passes. Every box side is shifted by up
to ``--max-shift`` of the longest image side during training (box perturbation).

    python -m finetune.sam_decoder --epochs 2 --out models/sam/litemedsam-decoder

Writes ``<out>.pt`` (a delta of the fp16 mask-decoder weights on the sha256-verified base, which
``LESIONSEG_SAM_PATH`` loads), ``<out>.json`` (record) and ``<out>.training-log.{csv,json}``.
With ``--family hf --sam-path DIR`` it trains a Hugging Face SamModel and writes ``<out>/``
with ``save_pretrained`` (``LESIONSEG_SAM_FAMILY=hf LESIONSEG_SAM_PATH=<out>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lesionseg.data import SPLITS, LitsCase
from lesionseg.sam_models import SamModules, load_sam
from lesionseg.settings import Settings

from .common import (
    EpochLog,
    Sample,
    end_epoch,
    lesion_samples,
    optimise,
    seed_everything,
    trainable_parameters,
)
from .sam_train import cached_embeddings, evaluate_gt_boxes, sample_loss, save_sam

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
) -> list[dict]:
    """Train the mask decoder in place; return one row per epoch (loss, val metrics)."""
    rng = seed_everything(seed)
    for p in [*modules.encoder.parameters(), *modules.decoder.parameters()]:
        p.requires_grad_(False)
    decoder = mask_decoder(modules)
    for p in decoder.parameters():
        p.requires_grad_(True)
    trained, total = trainable_parameters(nn.ModuleList([modules.encoder, modules.decoder]))
    print(f"trainable parameters: {trained:,} of {total:,} ({100 * trained / total:.2f} %)")
    train_emb = cached_embeddings(modules, train, cache)
    val_emb = cached_embeddings(modules, val, cache) if val else None
    optimiser = torch.optim.Adam(decoder.parameters(), lr=lr)
    rows = []
    for epoch in range(1, epochs + 1):
        started, losses = time.time(), []
        order = rng.permutation(len(train))[:max_steps]
        for i in tqdm(order, desc=f"epoch {epoch}/{epochs}", leave=False):
            loss = sample_loss(modules, train_emb[i : i + 1], train[i], rng, max_shift, max_boxes)
            losses.append(optimise(optimiser, loss))
        metrics = evaluate_gt_boxes(modules, val, val_emb) if val_emb is not None else {}
        end_epoch(rows, log, epoch, losses, started, **metrics)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["litemedsam", "hf"], default="litemedsam")
    parser.add_argument("--sam-path", type=Path, default=None, help="base checkpoint")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-shift", type=float, default=DEFAULT_MAX_SHIFT)
    parser.add_argument("--max-boxes", type=int, default=3, help="lesions per step")
    parser.add_argument("--train-step", type=int, default=2, help="every n-th training slice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("models/sam/litemedsam-decoder"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    settings = Settings()
    case = LitsCase(settings.cache_dir)
    train = lesion_samples(case, "train", step=args.train_step)
    val = lesion_samples(case, "val")
    modules = load_sam(args.family, args.sam_path)
    base_sha = modules.spec.sha256
    log = EpochLog(args.out)
    started = time.time()
    rows = train_decoder(
        modules,
        train,
        val,
        epochs=args.epochs,
        lr=args.lr,
        max_shift=args.max_shift,
        max_boxes=args.max_boxes,
        seed=args.seed,
        cache=settings.cache_dir / "finetune",
        log=log,
    )
    record = {
        "recipe": "sam-decoder-only",
        "base": {"family": args.family, "sha256": base_sha},
        "trained": "mask decoder (image and prompt encoders frozen, embeddings cached)",
        "loss": "soft Dice + BCE on the single-mask logits at S x S",
        "optimiser": {"name": "Adam", "lr": args.lr},
        "epochs": args.epochs,
        "max_boxes_per_step": args.max_boxes,
        "seed": args.seed,
        "box_perturbation": f"each side U(-{args.max_shift}, {args.max_shift}) x longest side",
        "split": {k: [v.start, v.stop - 1] for k, v in SPLITS.items() if k != "all"},
        "train_slices": f"{len(train)} (every {args.train_step}-th slice of the training slab)",
        "train_lesions": sum(len(s.boxes) for s in train),
        "checkpoint_selection": "last epoch (no selection on the validation slab)",
        "train_seconds": round(time.time() - started, 1),
        "last_epoch": rows[-1],
        "command": "python -m finetune.sam_decoder " + " ".join(argv or sys.argv[1:]),
    }
    save_sam(modules, args.out, record, val, settings.cache_dir / "finetune")


if __name__ == "__main__":
    main()
