"""PyTorch runner for the SAM modules (CPU or CUDA; fp32, fp16 or bf16)."""

from __future__ import annotations

import numpy as np
import torch

from lesionseg.errors import ModelLoadError
from lesionseg.models.sam import SamModules

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchSamRunner:
    """Runs :class:`~lesionseg.models.sam.SamModules` with torch.

    Args:
        modules: encoder and decoder modules.
        device: "cpu" or "cuda".
        precision: "fp32", "fp16" or "bf16"; half precisions need CUDA.
    """

    def __init__(self, modules: SamModules, device: str = "cpu", precision: str = "fp32"):
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("LESIONSEG_DEVICE=cuda but torch sees no CUDA device")
        if precision != "fp32" and device != "cuda":
            raise ModelLoadError(f"precision {precision} needs LESIONSEG_DEVICE=cuda")
        self.spec = modules.spec
        self.precision = precision
        self.device = torch.device(device)
        self.dtype = _DTYPES[precision]
        self.encoder = modules.encoder.to(self.device, self.dtype).eval()
        self.decoder = modules.decoder.to(self.device, self.dtype).eval()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self.dtype)

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> list[np.ndarray]:
        """(B, 3, S, S) -> B (C, h, w) float32 arrays, copied to the host one image at a time:
        one (B, C, h, w) host array is fresh memory above glibc's 32 MiB mmap threshold from
        B = 8 (4 MiB per LiteMedSAM embedding), page-faulted at every call. On an H200 that
        copy took 22-28 ms at batch 8 against 2 ms at batch 7, more than the encoder itself
        (benchmarks/results/gpu_probe.md)."""
        out = self.encoder(self._tensor(images)).float()  # (B, C, h, w)
        return [image.cpu().numpy() for image in out]

    @torch.inference_mode()
    def decode(
        self, embedding: np.ndarray, boxes: np.ndarray, mask_input: np.ndarray, has_mask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        flag = torch.tensor([float(has_mask)], device=self.device, dtype=self.dtype)
        logits, iou = self.decoder(
            self._tensor(embedding), self._tensor(boxes), self._tensor(mask_input), flag
        )
        return logits.float().cpu().numpy(), iou.float().cpu().numpy()
