"""OpenVINO runner (CPU) for the SAM-head detector's export (``detector-head.onnx``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionseg.models.backends.onnx_head import check_head_input, check_head_output, head_config
from lesionseg.models.backends.openvino_runner import (
    _capabilities,
    _Compiled,
    _core,
    _read,
    check_cpu,
    resolve_precision,
)


class OpenVinoHeadRunner:
    """Runs ``detector-head.onnx`` with OpenVINO on the CPU: a
    :class:`~lesionseg.models.sam_head.HeadRunner`.

    Args:
        path: the .onnx file ``python -m export onnx`` wrote.
        device: must be "cpu".
        precision: as :class:`~lesionseg.models.backends.openvino_runner.OpenVinoSamRunner`'s;
            fp32 by default (the service's choice, see
            :func:`lesionseg.models.detectors.load_sam_head`).
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's choice).

    Attributes:
        config: the head's :class:`~lesionseg.models.sam_head.HeadConfig`, from the file's
            metadata.
    """

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
    ):
        check_cpu(device)
        self.path = Path(path)
        core = _core()
        model = _read(core, self.path)
        # The ONNX metadata_props, as OpenVINO keeps them.
        metadata = model.get_rt_info(["framework"]).value if model.has_rt_info("framework") else {}
        self.config = head_config(metadata, self.path)
        self.input = model.inputs[0].get_any_name()
        self.precision = resolve_precision(precision, _capabilities(core))
        self.model = _Compiled(core, model, self.precision, threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, slices * C, h, w) float32 -> (B, K + 4, h, w) float32."""
        batch = check_head_input(batch, self.config, self.path)
        return check_head_output(self.model({self.input: batch})[0], batch, self.config)
