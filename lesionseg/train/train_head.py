"""``lesionseg train --detector sam-head``: train the head of :mod:`lesionseg.models.sam_head`
on the frozen LiteMedSAM encoder's embeddings.

The encoder embeds every training slice (and its neighbours) once per view
(:mod:`lesionseg.train.head_data`: view 0 as it is, then augmented views while the phase's time
lasts); the embeddings stay in memory in float16 (2 MiB a slice). The head then trains on them
(AdamW, CenterNet's focal loss on the heatmap, L1 on sizes and offsets), each batch a quarter
slices without lesion where the data has them. After each epoch the head detects on the
validation slices (their neighbours included) and :class:`~lesionseg.train.common.Stopper`
keeps the epoch with the best detection F1 (box IoU >= 0.3, best of a few thresholds): false
boxes count as much as missed lesions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lesionseg.datasets import Frame
from lesionseg.measure.evaluation import DETECTION_IOU, DETECTION_MIN_AREA
from lesionseg.models.sam import SamModules
from lesionseg.models.sam_head import HeadConfig, SamHeadDetector
from lesionseg.models.sam_head_net import SamHeadNet, TorchHeadRunner
from lesionseg.models.segmenter import Segmenter
from lesionseg.train import head_data
from lesionseg.train.common import EpochLog, Stopper, optimise
from lesionseg.train.encoder import Encoder
from lesionseg.train.sam_train import cached_embeddings
from lesionseg.train.train_detector import detection_counts
from lesionseg.types import Detections, ImageEmbedding

VAL_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class Embedded:
    """The training slices' embeddings and targets.

    Attributes:
        features: (N, C, g, g) float16, one row per embedded (run, slice, view).
        rows: (run, slice, view) -> row of ``features``.
        samples: per training sample (view, run, slice, has lesion), with its targets in
            ``heat`` (K, g, g), ``regression`` (4, g, g) and ``centres`` (g, g).
        views: the views embedded (view 0 first).
        lengths: slices per run.
    """

    features: torch.Tensor
    rows: dict[tuple[int, int, int], int]
    samples: list[tuple[int, int, int, bool]]
    heat: list[np.ndarray]
    regression: list[np.ndarray]
    centres: list[np.ndarray]
    views: list[head_data.View]
    lengths: list[int]


def embed_training(
    encode: Encoder,
    image_size: int,
    runs: Sequence[Sequence[Frame]],
    selection: head_data.Selection,
    config: HeadConfig,
    *,
    views: int,
    seed: int,
    stopper: Stopper,
) -> Embedded:
    """Embed the selected slices (and neighbours) of ``runs`` in up to ``views`` views; a view
    is only used whole (all runs), and the views stop when ``stopper`` says so (view 0 always
    completes)."""
    rng = np.random.default_rng(seed)
    chunks: list[torch.Tensor] = []
    rows: dict[tuple[int, int, int], int] = {}
    out = Embedded(torch.empty(0), rows, [], [], [], [], [], [len(run) for run in runs])
    count = 0
    for v in range(views):
        if v and stopper.stop:
            break
        view = head_data.View() if v == 0 else head_data.View.draw(rng)
        keys, images = [], []
        wanted = set(selection.items)
        for r, run in enumerate(runs):
            for i in selection.needed[r]:
                image, masks, labels = view.apply(run[i])
                keys.append((r, i, v))
                images.append(image)
                if (r, i) in wanted:
                    heat, reg, centres = head_data.targets(
                        masks,
                        labels,
                        image.shape[:2],
                        classes=len(config.classes),
                        image_size=image_size,
                        stride=config.stride,
                    )
                    out.samples.append((v, r, i, bool(len(masks))))
                    out.heat.append(heat)
                    out.regression.append(reg)
                    out.centres.append(centres)
        started = time.time()
        chunks.append(torch.from_numpy(encode(images)).to(torch.float16))
        rows.update({k: count + n for n, k in enumerate(keys)})
        count += len(keys)
        out.views.append(view)
        print(f"sam-head: view {v} embedded, {len(keys)} slices in {time.time() - started:.0f} s")
    out.features = torch.cat(chunks)
    return out


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4) over (B, K, g, g), per object."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = -((1 - p) ** 2) * torch.log(p) * positive
    neg = -((1 - target) ** 4) * p**2 * torch.log(1 - p) * (1 - positive)
    return (pos.sum() + neg.sum()) / positive.sum().clamp(min=1)


def train_head(
    data: Embedded,
    config: HeadConfig,
    val: ValSlices,
    *,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    stopper: Stopper,
    log: EpochLog,
    shift: int = 4,
    dropout: float = 0.1,
) -> tuple[SamHeadNet, int]:
    """Train the head; return the best epoch's network (by validation F1) and epochs run.

    Each batch is shifted by up to ``shift`` whole cells (inputs and targets alike; the
    encoder's features move with the image, give or take its windows) and loses a ``dropout``
    share of its embedding channels: cheap augmentation on top of the embedded views.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = SamHeadNet(config)
    k = len(config.classes)
    positives = [n for n, s in enumerate(data.samples) if s[3]]
    negatives = [n for n, s in enumerate(data.samples) if not s[3]]
    steps = max(1, len(data.samples) // batch)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=epochs * steps, pct_start=0.1
    )
    run = 0
    for epoch in range(epochs):
        if stopper.stop:
            break
        net.train()
        losses = []
        for _ in range(steps):
            if stopper.stop:
                break
            picks = _draw(rng, positives, negatives, batch)
            x = torch.stack([_input(data, n, config.context) for n in picks])
            heat = torch.from_numpy(np.stack([data.heat[n] for n in picks]))
            reg = torch.from_numpy(np.stack([data.regression[n] for n in picks]))
            centres = torch.from_numpy(np.stack([data.centres[n] for n in picks]))[:, None]
            if shift:  # the same whole-cell shift of inputs and targets
                dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, 2))
                x, heat, reg, centres = (_shifted(t, dy, dx) for t in (x, heat, reg, centres))
            if dropout:  # whole embedding channels dropped: no single channel carries it
                x = F.dropout2d(x, dropout, training=True)
            out = net(x)
            box = (F.l1_loss(out[:, k:], reg, reduction="none") * centres).sum()
            loss = focal_loss(out[:, :k], heat) + box / centres.sum().clamp(min=1)
            losses.append(optimise(optimiser, loss))
            schedule.step()
        net.eval()
        score, threshold = val.f1(net)
        run = epoch + 1
        log.add(epoch=run, loss=float(np.mean(losses or [np.nan])), val_f1=score, val_at=threshold)
        stopper.offer(net, score)
    stopper.restore(net)
    return net.eval(), run


def _shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, g, g) moved by (dy, dx) cells, zeros (no lesion, no target) where it came from."""
    out = torch.zeros_like(t)
    g_h, g_w = t.shape[-2:]
    src_y, dst_y = slice(max(-dy, 0), g_h - max(dy, 0)), slice(max(dy, 0), g_h - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), g_w - max(dx, 0)), slice(max(dx, 0), g_w - max(-dx, 0))
    out[..., dst_y, dst_x] = t[..., src_y, src_x]
    return out


def _draw(rng: np.random.Generator, positives: list, negatives: list, batch: int) -> list[int]:
    """A batch: a quarter slices without lesion (when there are any), the rest with one."""
    n_neg = min(len(negatives), batch // 4) if positives else batch
    n_pos = batch - n_neg
    picks = list(rng.choice(positives, n_pos)) if positives else []
    return picks + (list(rng.choice(negatives, n_neg)) if n_neg else [])


def _input(data: Embedded, n: int, context: int) -> torch.Tensor:
    """(S * C, g, g) float32 input of sample ``n``: slices k - context .. k + context."""
    v, r, i, _ = data.samples[n]
    around = head_data.neighbours(i, data.lengths[r], context)
    order = [*around[:context], i, *around[context:]]
    return torch.cat([data.features[data.rows[(r, j, v)]] for j in order]).float()


class ValSlices:
    """The validation slices with their neighbours' embeddings (encoder of ``modules``,
    cached on disk), for the per-epoch F1 and for the tuning's detections.

    Args:
        frames: the validation frames; neighbours: per frame its neighbour frames (k-1, k+1;
            the frame itself at a run's end).
    """

    def __init__(
        self,
        modules: SamModules,
        frames: Sequence[Frame],
        neighbours: Sequence[Sequence[Frame]],
        cache: Path,
        segmenter: Segmenter,
    ) -> None:
        self.frames = list(frames)
        every = {id(f): f for f in [*frames, *(n for ns in neighbours for n in ns)]}
        order = list(every)
        feats = cached_embeddings(modules, [every[i].image for i in order], cache).numpy()
        wrapped: dict[int, ImageEmbedding] = {
            i: segmenter.wrap(f, every[i].image.shape[:2])
            for i, f in zip(order, feats, strict=True)
        }
        self.embeddings = [wrapped[id(f)] for f in frames]
        self.neighbours = [[wrapped[id(n)] for n in ns] for ns in neighbours]

    def detect(self, net: SamHeadNet, config: HeadConfig, floor: float) -> list[Detections]:
        """The head's detections on every validation slice, at ``floor``."""
        detector = SamHeadDetector(
            TorchHeadRunner(net), config, Path("detector.pt"), score_threshold=floor
        )
        out = []
        for s in range(0, len(self.frames), 16):
            out += detector.detect(self.embeddings[s : s + 16], self.neighbours[s : s + 16])
        return out

    def f1(self, net: SamHeadNet) -> tuple[float, float]:
        """Best detection F1 over ``VAL_THRESHOLDS`` and its threshold."""
        found = self.detect(net, net.config, min(VAL_THRESHOLDS))
        best = (0.0, VAL_THRESHOLDS[0])
        for t in VAL_THRESHOLDS:
            counts = detection_counts(
                found, self.frames, iou=DETECTION_IOU, min_area=DETECTION_MIN_AREA, threshold=t
            )
            r, p = counts.recall or 0.0, counts.precision or 0.0
            f1 = 2 * r * p / (r + p) if r + p else 0.0
            best = max(best, (f1, t))
        return best
