"""ONNX Runtime runner for the SAM-head detector that ``python -m export onnx`` writes for a
sam-head bundle (``detector-head.onnx``: input ``embeddings``, output ``raw``, dynamic batch;
:mod:`lesionseg.export.onnx_head`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lesionseg.errors import ModelLoadError
from lesionseg.models.backends.onnx_runner import inference_session
from lesionseg.models.sam_head import HeadConfig

CONFIG_KEY = "sam_head_config"  # the ONNX metadata entry holding HeadConfig.to_dict() as JSON


def head_config(metadata: dict[str, str], path: Path) -> HeadConfig:
    """The :class:`HeadConfig` the export at ``path`` wrote into its metadata."""
    if CONFIG_KEY not in metadata:
        raise ModelLoadError(
            f"{path} holds no sam-head config ({CONFIG_KEY} metadata): re-export it with "
            "`make export`"
        )
    return HeadConfig.from_dict(json.loads(metadata[CONFIG_KEY]), path)


def check_head_output(raw: np.ndarray, batch: np.ndarray, config: HeadConfig) -> np.ndarray:
    """``raw`` (B, K + 4, h, w) for ``batch`` (B, slices * C, h, w); an assertion otherwise."""
    b, _, h, w = batch.shape
    assert raw.shape == (b, config.outputs, h, w), (raw.shape, batch.shape, config)
    return raw


def check_head_input(batch: np.ndarray, config: HeadConfig, path: Path) -> np.ndarray:
    """``batch`` as float32 (B, slices * C, h, w); bad input (another SAM's embeddings, a head
    of another context) is refused with what was expected."""
    channels = config.slices * config.embedding_channels
    if batch.ndim != 4 or batch.shape[1] != channels:
        raise ValueError(
            f"{path.name} takes (B, {channels}, h, w) embeddings ({config.slices} slices of "
            f"{config.embedding_channels} channels), got {batch.shape}"
        )
    return batch.astype(np.float32, copy=False)


class OnnxHeadRunner:
    """Runs ``detector-head.onnx`` (fp32): a :class:`~lesionseg.models.sam_head.HeadRunner`.

    Args:
        path: the .onnx file.
        device: "cpu" or "cuda" (needs onnxruntime-gpu; never falls back silently).
        threads: intra-op threads (LESIONSEG_CPU_THREADS; None: one per physical core).

    Attributes:
        config: the head's :class:`HeadConfig`, from the file's metadata.
    """

    precision = "fp32"

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"no exported sam-head detector at {self.path}: run `make export`")
        self.session = inference_session(self.path, device, threads)
        self.config = head_config(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.input = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, slices * C, h, w) float32 -> (B, K + 4, h, w) float32."""
        batch = check_head_input(batch, self.config, self.path)
        return check_head_output(self.session.run(None, {self.input: batch})[0], batch, self.config)
