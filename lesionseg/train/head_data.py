"""Training data of the SAM-head detector: runs of neighbouring slices, views, targets.

A *run* is what a head sees as neighbours: a volume's slices along one axis (cropped to its
part of the split), in order, or one 2-D image alone. Training slices are every slice with a
lesion and up to ``negative_ratio`` times as many without (hard negatives: the head must learn
to stay silent), plus their neighbours as 2.5-D context.

Each run is seen in several *views*: view 0 as it is, the others augmented consistently across
the run's slices (the 2.5-D context must stay aligned): horizontal and vertical flips, a zoom in
or out of up to 25 %, and intensity jitter in window space (gamma, contrast, brightness on the
windowed 8-bit image: another scanner, another window). The encoder sees every view's slices,
so the embeddings are the real ones of the augmented images, not a transform of them.

Targets are CenterNet's, on the embedding grid (SAM frame / ``stride``): per class a Gaussian
heatmap peaking at 1 at each lesion's centre cell, and at that cell the log width and height
(in cells) and the centre's offset within the cell.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lesionseg.datasets import Frame
from lesionseg.transforms import mask_to_box, resized_hw

MIN_LESION_PX = 4  # instances smaller than this after augmentation are not targets


def runs_of(parts: Iterable, axes: Sequence[int]) -> Iterator[list[Frame]]:
    """Per part of a split (:class:`lesionseg.train.split.Part`): its volume's slices along each
    of ``axes`` in order (one run per axis), or each 2-D frame as a run of one."""
    for part in parts:
        volume = part.case.volume()
        if volume is None:
            yield from ([f] for f in part.case.frames())
            continue
        for axis in axes:
            yield list(volume.frames(axis, part.z_range, prefix=part.case.name))


@dataclass(frozen=True)
class Selection:
    """Which slices of which runs train the head.

    Attributes:
        items: (run, index) of each training slice, positives first.
        positives: how many of ``items`` hold a lesion.
        needed: per run the sorted slice indices to embed (items and their neighbours).
    """

    items: tuple[tuple[int, int], ...]
    positives: int
    needed: tuple[tuple[int, ...], ...]


def select(
    runs: Sequence[Sequence[Frame]], *, negative_ratio: float, context: int, seed: int
) -> Selection:
    """Every slice with a lesion, and at most ``negative_ratio`` x as many without (a seeded
    draw over all runs), with their ``context`` neighbours on each side."""
    rng = np.random.default_rng(seed)
    pos = [(r, i) for r, run in enumerate(runs) for i, f in enumerate(run) if len(f.masks)]
    neg = [(r, i) for r, run in enumerate(runs) for i, f in enumerate(run) if not len(f.masks)]
    room = min(len(neg), round(negative_ratio * len(pos)))
    neg = [neg[k] for k in sorted(rng.permutation(len(neg))[:room])]
    needed: list[set[int]] = [set() for _ in runs]
    for r, i in pos + neg:
        needed[r] |= {j for j in neighbours(i, len(runs[r]), context)} | {i}
    return Selection(tuple(pos + neg), len(pos), tuple(tuple(sorted(n)) for n in needed))


def neighbours(index: int, length: int, context: int) -> list[int]:
    """Indices of slices ``index - context .. index - 1, index + 1 .. index + context`` of a
    run, clamped to its ends (the slice itself, or the last one, stands in), as served."""
    before = [max(index - d, 0) for d in range(context, 0, -1)]
    after = [min(index + d, length - 1) for d in range(1, context + 1)]
    return before + after


@dataclass(frozen=True)
class View:
    """One augmentation, applied alike to every slice of a run (view 0: the identity)."""

    flip_x: bool = False
    flip_y: bool = False
    zoom: float = 1.0
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> View:
        return cls(
            flip_x=bool(rng.random() < 0.5),
            flip_y=bool(rng.random() < 0.5),
            zoom=float(np.exp(rng.uniform(np.log(0.75), np.log(1.25)))),
            gamma=float(np.exp(rng.uniform(np.log(0.7), np.log(1.4)))),
            contrast=float(rng.uniform(0.8, 1.2)),
            brightness=float(rng.uniform(-20, 20)),
        )

    def apply(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, masks (K', H, W) bool, labels (K',)) of the view; the size
        stays (H, W); instances under ``MIN_LESION_PX`` after the zoom are dropped."""
        image, masks = frame.image, frame.masks
        if self.flip_x:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        if self.flip_y:
            image, masks = image[::-1], masks[:, ::-1]
        if self.zoom != 1.0:
            image = _zoom(image, self.zoom, Image.BILINEAR)
            masks = np.array(
                [_zoom(m.astype(np.uint8), self.zoom, Image.NEAREST) > 0 for m in masks]
            )
            masks = masks.reshape(-1, *image.shape[:2])
        if (self.gamma, self.contrast, self.brightness) != (1.0, 1.0, 0.0):
            x = (image.astype(np.float32) / 255) ** self.gamma * 255
            x = (x - 128) * self.contrast + 128 + self.brightness
            image = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        keep = masks.sum(axis=(1, 2)) >= MIN_LESION_PX if len(masks) else np.zeros(0, bool)
        return np.ascontiguousarray(image), masks[keep], frame.labels[keep]


def _zoom(image: np.ndarray, factor: float, resample: int) -> np.ndarray:
    """Scale about the centre by ``factor`` keeping the (H, W) size: cropped when > 1, padded
    with 0 when < 1."""
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    scaled = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), resample))
    out = np.zeros_like(image)
    sy, sx = max((nh - h) // 2, 0), max((nw - w) // 2, 0)  # crop offsets in the scaled image
    dy, dx = max((h - nh) // 2, 0), max((w - nw) // 2, 0)  # paste offsets in the output
    ch, cw = min(h, nh), min(w, nw)
    out[dy : dy + ch, dx : dx + cw] = scaled[sy : sy + ch, sx : sx + cw]
    return out


def targets(
    masks: np.ndarray,
    labels: np.ndarray,
    hw: tuple[int, int],
    *,
    classes: int,
    image_size: int,
    stride: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet targets of one slice on the (g, g) grid, g = image_size / stride.

    Args:
        masks: (K, H, W) bool lesion instances; labels: (K,) class ids; hw: (H, W).

    Returns:
        heat (classes, g, g) float32 in [0, 1]; regression (4, g, g) float32 (log w, log h in
        cells, x and y offsets of the centre in its cell); centres (g, g) bool, the cells
        that carry a regression target.
    """
    g = round(image_size / stride)
    heat = np.zeros((classes, g, g), np.float32)
    regression = np.zeros((4, g, g), np.float32)
    centres = np.zeros((g, g), bool)
    rh, rw = resized_hw(hw, image_size)
    scale = np.array([rw / hw[1], rh / hw[0]] * 2, np.float32) / stride  # pixels -> cells
    ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
    for mask, label in zip(masks, labels, strict=True):
        x0, y0, x1, y1 = (mask_to_box(mask) * scale).tolist()
        w, h = max(x1 - x0, 0.25), max(y1 - y0, 0.25)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        col, row = min(int(cx), g - 1), min(int(cy), g - 1)
        sigma = max(0.6, (w + h) / 12)
        blob = np.exp(-((xs - col) ** 2 + (ys - row) ** 2) / (2 * sigma**2))
        heat[label] = np.maximum(heat[label], blob)
        heat[label, row, col] = 1.0
        regression[:, row, col] = (np.log(w), np.log(h), cx - col - 0.5, cy - row - 0.5)
        centres[row, col] = True
    return heat, regression, centres
