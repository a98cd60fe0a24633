"""Runtimes that execute the SAM encoder/decoder behind one small interface.

A runner takes and returns numpy arrays so that the :class:`~lesionseg.segmenter.Segmenter`
does not care whether torch, ONNX Runtime or TensorRT does the work.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..sam_models import SamSpec


class SamRunner(Protocol):
    """Executes one SAM checkpoint.

    ``encode(images (B, 3, S, S) float32) -> (B, C, h, w) float32``

    ``decode(embedding (1, C, h, w), boxes (N, 4), mask_input (N, 1, 4h, 4w), has_mask: bool)
    -> (logits (N, M, 4h, 4w) float32, iou (N, M) float32)``, boxes XYXY in the model frame.
    """

    spec: SamSpec

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def decode(
        self, embedding: np.ndarray, boxes: np.ndarray, mask_input: np.ndarray, has_mask: bool
    ) -> tuple[np.ndarray, np.ndarray]: ...
