"""Baseline: a 2-D U-Net (MONAI ``UNet``) trained on the same LiTS split as the SAM recipes.

Input: the CT slice (window L40/W400) as one channel in [0, 1] at its own 128 x 128 size;
output: tumour logits per pixel. All training slices are used (also those without tumour, so
the net learns to predict nothing), with random flips; Dice + BCE, Adam.

    python -m lesionseg.train.unet --epochs 40 --out models/unet/lits-unet2d

Writes ``<out>.pt`` ({"config", "state_dict"}), ``<out>.json`` and ``<out>.training-log.*``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lesionseg.datasets.lits import SPLITS, LitsCase, LitsSlice
from lesionseg.measure.evaluation import dice
from lesionseg.provenance import git_state
from lesionseg.settings import Settings
from lesionseg.train.common import (
    EpochLog,
    dice_bce_loss,
    end_epoch,
    mean,
    optimise,
    seed_everything,
    write_record,
)

CONFIG = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 2}


def build_unet(config: dict = CONFIG) -> nn.Module:
    """MONAI 2-D UNet, 1 input channel (CT), 1 output channel (tumour logit)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, **config)


def to_input(images: Sequence[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 slices -> (B, 1, H, W) float32 in [0, 1] (H, W divisible by 8)."""
    return torch.from_numpy(np.stack([im[:, :, 0] for im in images])[:, None] / 255.0).float()


@torch.no_grad()
def predict_unet(model: nn.Module, images: Sequence[np.ndarray], batch: int = 8) -> np.ndarray:
    """(B, H, W) bool tumour masks (logit > 0)."""
    model.eval()
    out = [model(to_input(images[i : i + batch]))[:, 0] > 0 for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def load_unet(path: Path) -> nn.Module:
    """A checkpoint written by :func:`main`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_unet(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def image_dice(model: nn.Module, slices: Sequence[LitsSlice]) -> float:
    """Mean Dice over the slices that contain tumour."""
    pred = predict_unet(model, [s.image for s in slices])
    return mean([dice(p, s.tumour_mask) for p, s in zip(pred, slices, strict=True) if s.areas.size])


def train_unet(
    model: nn.Module,
    train: Sequence[LitsSlice],
    val: Sequence[LitsSlice],
    *,
    epochs: int,
    lr: float = 1e-3,
    batch: int = 8,
    seed: int = 0,
    log: EpochLog | None = None,
    max_steps: int | None = None,
) -> list[dict]:
    """Train in place; one row per epoch (loss, validation image Dice)."""
    rng = seed_everything(seed)
    images = to_input([s.image for s in train])  # (N, 1, H, W)
    targets = torch.from_numpy(np.stack([s.tumour_mask for s in train])).float()  # (N, H, W)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    rows = []
    for epoch in range(1, epochs + 1):
        started, losses = time.time(), []
        model.train()
        starts = list(range(0, len(train), batch))[:max_steps]
        order = rng.permutation(len(train))
        for start in tqdm(starts, desc=f"epoch {epoch}/{epochs}", leave=False):
            idx = torch.from_numpy(order[start : start + batch])
            x, y = images[idx], targets[idx]
            if rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if rng.random() < 0.5:
                x, y = x.flip(-2), y.flip(-2)
            loss = dice_bce_loss(model(x)[:, 0], y)
            losses.append(optimise(optimiser, loss))
        metrics = {"val_image_dice": image_dice(model, val)} if val else {}
        end_epoch(rows, log, epoch, losses, started, **metrics)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("models/unet/lits-unet2d"))
    args = parser.parse_args(argv)
    source = git_state()  # the code this run starts from

    torch.set_num_threads(args.threads)
    case = LitsCase(Settings().cache_dir)
    train, val = list(case.slices("train")), list(case.slices("val"))
    seed_everything(args.seed)
    model = build_unet()
    started = time.time()
    rows = train_unet(
        model,
        train,
        val,
        epochs=args.epochs,
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        log=EpochLog(args.out),
    )
    path = args.out.with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": CONFIG, "state_dict": model.state_dict()}, path)
    from lesionseg.checksums import file_sha256

    record = {
        "recipe": "unet2d-baseline",
        "model": f"monai.networks.nets.UNet(spatial_dims=2, in=1, out=1, {CONFIG})",
        "loss": "soft Dice + BCE",
        "optimiser": {"name": "Adam", "lr": args.lr},
        "epochs": args.epochs,
        "batch": args.batch,
        "seed": args.seed,
        "augmentation": "random horizontal and vertical flips",
        "split": {k: [v.start, v.stop - 1] for k, v in SPLITS.items() if k != "all"},
        "train_slices": len(train),
        "checkpoint_selection": "last epoch (no selection on the validation slab)",
        "checkpoint": {"file": path.name, "sha256": file_sha256(path)},
        "validation": {"image_dice": image_dice(load_unet(path), val)},
        "train_seconds": round(time.time() - started, 1),
        "last_epoch": rows[-1],
        "command": "python -m lesionseg.train.unet " + " ".join(argv or sys.argv[1:]),
    }
    write_record(args.out.with_suffix(".json"), record, source)
    print(f"wrote {path}: {record['validation']}")


if __name__ == "__main__":
    main()
