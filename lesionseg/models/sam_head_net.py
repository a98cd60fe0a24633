"""The SAM-head detector's network in torch: training, the torch backend, and the ONNX export.

Input (B, S * C, h, w): the SAM embeddings of S = 1 + 2 * context slices, k-1 .. k+1. Each
slice's embedding is reduced by one shared 1 x 1 convolution (C -> width), the slices are
concatenated, three 3 x 3 convolutions (GroupNorm, ReLU) mix space and slices, and a 1 x 1
convolution gives the raw output of :func:`lesionseg.models.sam_head.decode_head`: K heatmap
logits, log width and height (cells), centre offsets (cells). ~0.2 M parameters at width 64
(~1 GFLOP per slice on a 64 x 64 grid, ~1.5 % of the LiteMedSAM encoder's 75 GFLOP).

Checkpoint (``detector.pt`` of a sam-head bundle): ``torch.save`` of a dict ``{"format":
HEAD_FORMAT, "config": HeadConfig.to_dict(), "state_dict": ...}``; plain types and tensors
only, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lesionseg.errors import ModelLoadError
from lesionseg.models.sam_head import HEAD_FORMAT, HeadConfig

PRIOR = 0.01  # initial heatmap probability (the heatmap bias), as RetinaNet / CenterNet


class SamHeadNet(nn.Module):
    """See the module docstring. ``forward(x (B, S * C, h, w)) -> (B, K + 4, h, w)``."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        c, w = config.embedding_channels, config.width
        self.reduce = nn.Conv2d(c, w, 1)
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(w * config.slices if i == 0 else w, w, 3, padding=1, bias=False),
                nn.GroupNorm(8, w),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(w, config.outputs, 1)
        k = len(config.classes)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[:k] = -math.log((1 - PRIOR) / PRIOR)
            self.out.weight[k:].mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s, c = self.config.slices, self.config.embedding_channels
        reduced = self.reduce(x.reshape(b * s, c, h, w))  # shared across slices
        return self.out(self.body(reduced.reshape(b, s * self.config.width, h, w)))


def save_head(net: SamHeadNet, path: Path) -> None:
    """Write ``net`` as a sam-head checkpoint (see the module docstring)."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch.save({"format": HEAD_FORMAT, "config": net.config.to_dict(), "state_dict": state}, path)


def load_head(path: Path, device: str = "cpu") -> SamHeadNet:
    """The network of a sam-head checkpoint, in eval mode on ``device``.

    Raises:
        ModelLoadError: missing file, not a sam-head checkpoint, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"sam-head weights not found at {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelLoadError(f"cannot read {path} as a sam-head checkpoint: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != HEAD_FORMAT:
        raise ModelLoadError(f"{path} is not a {HEAD_FORMAT} checkpoint")
    net = SamHeadNet(HeadConfig.from_dict(raw["config"], path))
    try:
        net.load_state_dict(raw["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"{path}: the weights do not fit its config: {exc}") from exc
    return net.eval().to(device)


class TorchHeadRunner:
    """:class:`~lesionseg.models.sam_head.HeadRunner` over the torch network (fp32)."""

    precision = "fp32"

    def __init__(self, net: SamHeadNet, device: str = "cpu") -> None:
        self.net, self.device = net.eval().to(device), device

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return out.float().cpu().numpy()
