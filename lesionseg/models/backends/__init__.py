"""Runtimes that execute the models behind small interfaces.

A runner takes and returns numpy arrays so that the :class:`~lesionseg.models.segmenter.Segmenter`
and the :class:`~lesionseg.models.detector.Detector` do not care whether torch, ONNX Runtime,
OpenVINO or TensorRT does the work. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from lesionseg.types import SamSpec


class SamRunner(Protocol):
    """Executes one SAM checkpoint.

    ``encode(images (B, 3, S, S) float32) -> B x (C, h, w) float32``: a (B, C, h, w) array or
    a sequence of B per-image arrays (torch on CUDA copies each image to the host on its own).

    ``decode(embedding (1, C, h, w), boxes (N, 4), mask_input (N, 1, 4h, 4w), has_mask: bool)
    -> (logits (N, M, 4h, 4w) float32, iou (N, M) float32)``, boxes XYXY in the model frame.

    ``precision``: the compute precision it runs ("fp32", "bf16", ...), reported by the service.
    """

    spec: SamSpec
    precision: str

    def encode(self, images: np.ndarray) -> np.ndarray | Sequence[np.ndarray]: ...

    def decode(
        self, embedding: np.ndarray, boxes: np.ndarray, mask_input: np.ndarray, has_mask: bool
    ) -> tuple[np.ndarray, np.ndarray]: ...


class DetectorRunner(Protocol):
    """Executes one YOLOv8-style detector exported without NMS (ultralytics ``export``).

    ``run(batch (B, 3, S, S) float32 RGB in 0..1) -> (B, 4 + K, A) float32``: the raw head
    output, per anchor a box (centre x, centre y, width, height) in the S x S letterboxed
    frame followed by the K class scores (sigmoid, 0..1). Decoding and NMS are the
    :class:`~lesionseg.models.detector.Detector`'s (numpy).

    Attributes:
        names: class id -> class name, K entries.
        image_size: S, side of the square input in px.
        precision: the compute precision it runs ("fp32", "fp16", ...).
    """

    names: dict[int, str]
    image_size: int
    precision: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...
