"""The SAM-head detector: lesion boxes from the SAM image embedding the service computes anyway.

A small CenterNet-style head (:mod:`lesionseg.models.sam_head_net`, a few hundred k parameters)
over the frozen LiteMedSAM encoder's (256, 64, 64) embedding predicts, per grid cell, a centre
heatmap per class and the box's size and sub-cell offset. One encoder pass then gives both the
boxes and the embedding SAM's mask decoder needs. For volumes the head is 2.5-D: it sees the
embeddings of slices k-1, k and k+1 (the slice itself stands in for a missing neighbour, and
for a single image), so the encoder keeps its single-slice input.

This module is numpy only (the service runs the head through ONNX Runtime or OpenVINO without
torch): the config, the head's input, and the decoding of its raw output into
:class:`~lesionseg.types.Detections` in original pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lesionseg.errors import ModelLoadError
from lesionseg.models.yolo import nms
from lesionseg.transforms import clip_boxes
from lesionseg.types import Detections, ImageEmbedding

HEAD_FORMAT = "lesionseg-sam-head/1"
ARCHITECTURE = "sam-head"


@dataclass(frozen=True)
class HeadConfig:
    """What the head was built and trained for (stored in its checkpoint and in model.json).

    Attributes:
        classes: class names, index = class id.
        context: neighbouring slices seen on each side (0: the slice alone; 1: k-1, k, k+1).
        embedding_channels: C of the SAM embedding (LiteMedSAM: 256).
        width: channels of the head's layers.
        stride: pixels of SAM's square input frame per embedding cell (LiteMedSAM: 256 / 64).
    """

    classes: tuple[str, ...]
    context: int = 1
    embedding_channels: int = 256
    width: int = 64
    stride: float = 4.0

    @property
    def slices(self) -> int:
        """Embeddings per input: 1 + 2 * context."""
        return 1 + 2 * self.context

    @property
    def outputs(self) -> int:
        """Channels of the raw output: K class heatmaps, then log width, log height (cells),
        then x and y offsets of the centre within its cell."""
        return len(self.classes) + 4

    def to_dict(self) -> dict:
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, raw: dict, where: Path | str = "head") -> HeadConfig:
        try:
            return cls(
                classes=tuple(str(c) for c in raw["classes"]),
                context=int(raw["context"]),
                embedding_channels=int(raw["embedding_channels"]),
                width=int(raw["width"]),
                stride=float(raw["stride"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: not a valid sam-head config ({exc!r})") from exc


class HeadRunner(Protocol):
    """Executes the head: ``run(batch (B, slices * C, h, w) float32) -> (B, K + 4, h, w)``
    float32 raw output (heatmap logits, log sizes, offsets). ``precision``: as reported."""

    precision: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...


def head_input(
    center: ImageEmbedding,
    neighbours: Sequence[ImageEmbedding | None] = (),
    context: int = 1,
) -> np.ndarray:
    """(slices * C, h, w) float32: the embeddings of slices k - context .. k + context.

    Args:
        center: slice k's embedding.
        neighbours: ``2 * context`` embeddings (k-1, k+1 for context 1) or fewer / None for
            missing ones: the slice itself stands in (a volume's first and last slice, a single
            image). Neighbours of another shape are refused.
    """
    given = list(neighbours)[: 2 * context]
    given += [None] * (2 * context - len(given))
    for n in given:
        if n is not None and n.features.shape != center.features.shape:
            raise ValueError(
                f"a neighbouring slice's embedding {n.features.shape} differs from the slice's "
                f"{center.features.shape}"
            )
    stack = [(n if n is not None else center).features for n in given]
    # k - context .. k - 1, k, k + 1 .. k + context: the training order
    return np.concatenate([*stack[:context], center.features, *stack[context:]], axis=0).astype(
        np.float32
    )


def decode_head(
    raw: np.ndarray,
    embedding: ImageEmbedding,
    *,
    stride: float,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw head output -> boxes (original pixels, XYXY), scores, class ids.

    A detection is a heatmap peak (a cell no lower than its 8 neighbours) whose sigmoid score is
    > ``score_threshold``; its box is centred at the cell's centre plus the predicted offset
    and sized by the predicted log width and height, in the SAM frame (the image resized to
    its longest side, padded at the bottom and right), then scaled to the original image.
    Class-agnostic NMS at ``iou_threshold`` removes the duplicates of neighbouring peaks.

    Args:
        raw: (K + 4, h, w) float32 (see :class:`HeadConfig.outputs`).
        embedding: the slice's embedding (its geometry maps the SAM frame to the image).

    Returns:
        boxes (N, 4) float32, scores (N,) float32 descending, class ids (N,) int64.
    """
    k = raw.shape[0] - 4
    heat = 1.0 / (1.0 + np.exp(-raw[:k].astype(np.float64)))  # (K, h, w)
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    h, w = heat.shape[1:]
    neighbourhood = np.max(
        [padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0
    )
    peaks = (heat >= neighbourhood) & (heat > score_threshold)
    cls, rows, cols = np.nonzero(peaks)
    scores = heat[cls, rows, cols].astype(np.float32)
    order = np.argsort(-scores, kind="stable")[: max(4 * max_detections, 1)]
    cls, rows, cols, scores = cls[order], rows[order], cols[order], scores[order]
    log_w, log_h, off_x, off_y = (raw[k + i, rows, cols].astype(np.float32) for i in range(4))
    cx = (cols + 0.5 + off_x) * stride
    cy = (rows + 0.5 + off_y) * stride
    half_w = np.exp(np.clip(log_w, -4.0, 6.0)) * stride / 2
    half_h = np.exp(np.clip(log_h, -4.0, 6.0)) * stride / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    scale = np.array(embedding.original_hw, np.float32) / np.array(embedding.resized_hw)
    boxes = (boxes.reshape(-1, 4) * np.tile(scale[::-1], 2)).astype(np.float32)
    boxes = clip_boxes(boxes, embedding.original_hw)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, cls = boxes[valid], scores[valid], cls[valid]
    keep = nms(boxes, scores, iou_threshold)[:max_detections]
    return boxes[keep], scores[keep], cls[keep].astype(np.int64)


class SamHeadDetector:
    """Lesion boxes from SAM embeddings through a head runner (torch, ONNX Runtime, OpenVINO).

    Args:
        runner: executes the head (:class:`HeadRunner`).
        config: the head's :class:`HeadConfig`.
        weights: the file the runner runs (reported by the service and the CLI).
        score_threshold, nms_iou_threshold, max_detections, classes: as
            :class:`lesionseg.models.detector.Detector`.
    """

    def __init__(
        self,
        runner: HeadRunner,
        config: HeadConfig,
        weights: Path,
        *,
        score_threshold: float = 0.25,
        nms_iou_threshold: float = 0.5,
        max_detections: int = 50,
        classes: Sequence[int] | None = None,
    ) -> None:
        self.runner, self.config, self.weights = runner, config, Path(weights)
        self.names = dict(enumerate(config.classes))
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections
        self.classes = list(classes) if classes is not None else None

    @property
    def context(self) -> int:
        return self.config.context

    def detect(
        self,
        embeddings: Sequence[ImageEmbedding],
        neighbours: Sequence[Sequence[ImageEmbedding | None]] | None = None,
        *,
        score_threshold: float | None = None,
    ) -> list[Detections]:
        """Per embedding its detections (original pixels, scores descending); one head call.

        Args:
            embeddings: the slices' embeddings.
            neighbours: per slice its ``2 * context`` neighbours' embeddings (k-1, k+1), None
                where missing; None: every slice alone (single images).
        """
        if not embeddings:
            return []
        context = self.config.context
        around = neighbours if neighbours is not None else [()] * len(embeddings)
        batch = np.stack(
            [head_input(e, n, context) for e, n in zip(embeddings, around, strict=True)]
        )
        raw = self.runner.run(np.ascontiguousarray(batch))
        threshold = self.score_threshold if score_threshold is None else score_threshold
        out = []
        for r, e in zip(raw, embeddings, strict=True):
            boxes, scores, ids = decode_head(
                np.asarray(r),
                e,
                stride=self.config.stride,
                score_threshold=threshold,
                iou_threshold=self.nms_iou_threshold,
                max_detections=self.max_detections,
            )
            if self.classes is not None:
                keep = np.isin(ids, self.classes)
                boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
            labels = tuple(self.names[int(c)] for c in ids)
            out.append(Detections(boxes, scores, ids, labels))
        return out
