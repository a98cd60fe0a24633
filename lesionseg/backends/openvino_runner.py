"""OpenVINO runners (CPU) for the exported SAM encoder/decoder and the YOLO detector.

The ONNX files ``python -m export onnx`` writes are compiled by OpenVINO as they are. The
compute precision is chosen once, at start: ``auto`` is bf16 where OpenVINO reports the CPU
can run it (AVX512_BF16 or AMX: "BF16" in ``OPTIMIZATION_CAPABILITIES``), else fp32. A
precision that was asked for and that the CPU lacks is an error, never a quiet fallback; the
precision the compiled model reports is the one the runner exposes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from .onnx_runner import check_multimask, read_export_record, spec_from_record

# Our precision names -> OpenVINO's capability name and element type name.
_CAPABILITY = {"fp32": "FP32", "fp16": "FP16", "bf16": "BF16"}
_ELEMENT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}  # attributes of openvino.Type
_INSTALL_HINT = (
    "OpenVINO is not installed: `pip install openvino` (see requirements.lock), or set "
    "LESIONSEG_BACKEND=onnxruntime"
)


def resolve_precision(requested: str, capabilities: list[str]) -> str:
    """The precision to compile with: ``requested``, or for "auto" bf16 when the CPU has it.

    Args:
        requested: "auto", "fp32", "fp16" or "bf16" (:attr:`Settings.precision`).
        capabilities: the CPU's ``OPTIMIZATION_CAPABILITIES`` as OpenVINO reports them.

    Raises:
        ModelLoadError: an explicit precision the CPU cannot run.
    """
    if requested == "auto":
        return "bf16" if "BF16" in capabilities else "fp32"
    if _CAPABILITY[requested] not in capabilities:
        raise ModelLoadError(
            f"LESIONSEG_PRECISION={requested} but OpenVINO reports no {_CAPABILITY[requested]} "
            f"on this CPU (capabilities: {capabilities}; bf16 needs AVX512_BF16 or AMX): set "
            "LESIONSEG_PRECISION=auto or fp32"
        )
    return requested


class _Compiled:
    """One compiled model with one infer request per calling thread (requests are not
    thread-safe; the service decodes on several threads)."""

    def __init__(self, core, path: Path, precision: str, threads: int | None):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        if not path.is_file():
            raise ModelLoadError(f"{path} is missing: run `make export`")
        element = getattr(ov.Type, _ELEMENT[precision])
        config = {
            hints.inference_precision: element,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
        }
        if threads:
            config[props.inference_num_threads] = threads
        self.model = core.compile_model(str(path), "CPU", config)
        got = self.model.get_property(hints.inference_precision)
        assert got == element, (path.name, got, precision)  # never silently another precision
        self._local = threading.local()

    def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.model.create_infer_request()
        results = request.infer(inputs)  # copies the outputs out of the request
        return [results[out] for out in self.model.outputs]


def check_cpu(device: str) -> None:
    if device != "cpu":
        raise ModelLoadError(
            f"LESIONSEG_BACKEND=openvino runs on the CPU, not LESIONSEG_DEVICE={device}: set "
            "LESIONSEG_DEVICE=cpu, or a GPU backend (torch, onnxruntime, tensorrt)"
        )


def _core():
    try:
        import openvino as ov
    except ImportError as exc:
        raise ModelLoadError(_INSTALL_HINT) from exc
    return ov.Core()


class OpenVinoSamRunner:
    """Runs ``sam_encoder.onnx`` / ``sam_decoder.onnx`` with OpenVINO on the CPU.

    Args:
        directory: where ``python -m export onnx`` wrote the files and ``export.json``.
        device: must be "cpu" (this backend runs on the CPU only).
        multimask: the multimask setting the caller expects; must match the export.
        precision: "auto", "fp32", "fp16" or "bf16" (:func:`resolve_precision`); encoder and
            decoder both run in it.
        threads: ``INFERENCE_NUM_THREADS`` of each model (None: OpenVINO's choice, all cores).
    """

    def __init__(
        self,
        directory: Path,
        *,
        device: str = "cpu",
        multimask: bool = False,
        precision: str = "auto",
        threads: int | None = None,
    ):
        check_cpu(device)
        directory = Path(directory)
        record = read_export_record(directory)
        check_multimask(record, directory, multimask)
        core = _core()
        self.spec = spec_from_record(record)
        self.precision = resolve_precision(
            precision, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        )
        self.encoder = _Compiled(core, directory / "sam_encoder.onnx", self.precision, threads)
        self.decoder = _Compiled(core, directory / "sam_decoder.onnx", self.precision, threads)

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.encoder({"images": images.astype(np.float32, copy=False)})[0]

    def decode(
        self, embedding: np.ndarray, boxes: np.ndarray, mask_input: np.ndarray, has_mask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self.decoder(
            {
                "embedding": embedding.astype(np.float32, copy=False),
                "boxes": boxes.astype(np.float32, copy=False),
                "mask_input": mask_input.astype(np.float32, copy=False),
                "has_mask": np.array([float(has_mask)], np.float32),
            }
        )
        return logits, iou
