"""The SAM-head phase of ``lesionseg train``: select, embed, train, and detect on validation.

The head learns on the base LiteMedSAM encoder's embeddings, frozen: the bundle then serves
that encoder, so a sam-head bundle pairs only with a SAM that keeps it (zero-shot or a
decoder-only fine-tune), never with a LoRA fine-tune of the encoder.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from lesionseg.datasets import Frame
from lesionseg.models.backends.torch_runner import TorchSamRunner
from lesionseg.models.sam import load_sam
from lesionseg.models.sam_head import ARCHITECTURE, HeadConfig
from lesionseg.models.sam_head_net import save_head
from lesionseg.models.segmenter import Segmenter
from lesionseg.train import head_data
from lesionseg.train.common import EpochLog, Stopper
from lesionseg.train.encoder import openvino_encoder
from lesionseg.train.evaluate import FLOOR
from lesionseg.train.split import Split, require_lesions
from lesionseg.train.train_head import ValSlices, embed_training, train_head
from lesionseg.types import Detections

CONTEXT = 1  # 2.5-D: slices k-1, k, k+1
SAMS = ("zero-shot", "decoder fine-tune")  # the SAMs that keep the encoder it learned on


def head_phase(
    args: argparse.Namespace,
    split: Split,
    axes: Sequence[int],
    val: Sequence[Frame],
    val_neighbours: Sequence[Sequence[Frame]],
    classes: Sequence[str],
    out: Path,
    cache: Path,
    deadline: float | None,
) -> tuple[dict, list[Detections] | None]:
    """Train the head until ``deadline``; write ``out/sam-head.pt``; return its record and its
    detections on ``val`` at the tuning floor (None when it finished no epoch)."""
    started = time.time()
    config = HeadConfig(classes=tuple(classes), context=CONTEXT)
    runs = list(head_data.runs_of(split.train, axes))
    selection = head_data.select(
        runs, negative_ratio=args.negative_ratio, context=CONTEXT, seed=args.seed
    )
    require_lesions(split, classes, selection.positives)  # before any encoder pass
    modules = load_sam("litemedsam", None)
    # The embedding gets up to half of the phase; the first view always completes.
    embed_end = None if deadline is None else started + (deadline - started) * 0.5
    with Stopper(embed_end) as stopper:
        data = embed_training(
            openvino_encoder(modules, cache, threads=args.threads),
            modules.spec.image_size,
            runs,
            selection,
            config,
            views=args.head_views,
            seed=args.seed,
            stopper=stopper,
        )
    segmenter = Segmenter(TorchSamRunner(modules))
    val_slices = ValSlices(modules, val, val_neighbours, cache, segmenter)
    with Stopper(deadline) as stopper:
        net, epochs = train_head(
            data,
            config,
            val_slices,
            epochs=args.head_epochs,
            batch=args.batch,
            lr=args.head_lr,
            seed=args.seed,
            stopper=stopper,
            log=EpochLog(out / "logs" / "sam-head"),
        )
        interrupted = stopper.interrupted
    record = {
        "weights": "sam-head.pt",
        "architecture": ARCHITECTURE,
        "image_size": modules.spec.image_size,
        "context": CONTEXT,
        "start": "random init, on the frozen LiteMedSAM encoder",
        "epochs_run": epochs,
        "epochs_asked": args.head_epochs,
        "interrupted": interrupted,
        "views": len(data.views),
        "augmentation": [asdict(v) for v in data.views],
        "slices": {
            "train": len(selection.items),
            "with_lesion": selection.positives,
            "embedded": int(data.features.shape[0]),
        },
        "seconds": round(time.time() - started, 1),
        "checkpoint_selection": "epoch of best validation detection F1 (box IoU >= 0.3)",
        "pairs_with": list(SAMS),
    }
    if not epochs:
        return record | {"weights": None}, None
    save_head(net, out / "sam-head.pt")
    return record, val_slices.detect(net, config, FLOOR)
