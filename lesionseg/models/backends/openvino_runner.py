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

from lesionseg.errors import ModelLoadError
from lesionseg.models.backends.onnx_detector import detector_metadata
from lesionseg.models.backends.onnx_runner import (
    check_multimask,
    read_export_record,
    spec_from_record,
)

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

    def __init__(self, core, model, precision: str, threads: int | None):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        element = getattr(ov.Type, _ELEMENT[precision])
        config = {
            hints.inference_precision: element,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
        }
        if threads:
            config[props.inference_num_threads] = threads
        self.model = core.compile_model(model, "CPU", config)
        got = self.model.get_property(hints.inference_precision)
        # Never silently another precision than the one asked for and reported.
        assert got == element, (model.get_friendly_name(), got, precision)
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


def _read(core, path: Path):
    """The ov.Model of an exported ONNX file."""
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: run `make export`")
    return core.read_model(str(path))


def _capabilities(core) -> list[str]:
    return core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


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
        with_encoder: False compiles the decoder only (a process that gets its embeddings from
            elsewhere, e.g. the service's API from the model runner); ``encode`` then raises.
    """

    def __init__(
        self,
        directory: Path,
        *,
        device: str = "cpu",
        multimask: bool = False,
        precision: str = "auto",
        threads: int | None = None,
        with_encoder: bool = True,
    ):
        check_cpu(device)
        directory = Path(directory)
        record = read_export_record(directory)
        check_multimask(record, directory, multimask)
        core = _core()
        self.spec = spec_from_record(record)
        self.precision = resolve_precision(precision, _capabilities(core))
        self.encoder, self.decoder = (
            _Compiled(core, _read(core, directory / f"sam_{name}.onnx"), self.precision, threads)
            if name == "decoder" or with_encoder
            else None
            for name in ("encoder", "decoder")
        )

    def encode(self, images: np.ndarray) -> np.ndarray:
        if self.encoder is None:
            raise ModelLoadError("this SAM runner was loaded without its encoder (decoder only)")
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


class OpenVinoDetectorRunner:
    """Runs ``detector.onnx`` with OpenVINO on the CPU: a
    :class:`~lesionseg.models.backends.DetectorRunner`.

    Args:
        path: the .onnx file ``python -m export onnx`` wrote.
        device: must be "cpu".
        precision: as :class:`OpenVinoSamRunner`'s; fp32 by default (the service's choice,
            see :meth:`lesionseg.models.detector.Detector.from_settings`).
        image_size: S (default: the ``imgsz`` the export was made for).
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's choice).
    """

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        image_size: int | None = None,
        threads: int | None = None,
    ):
        check_cpu(device)
        path = Path(path)
        core = _core()
        model = _read(core, path)
        # ultralytics' metadata_props, as OpenVINO keeps them.
        metadata = model.get_rt_info(["framework"]).value if model.has_rt_info("framework") else {}
        self.names, self.image_size = detector_metadata(metadata, path, image_size)
        self.input = model.inputs[0].get_any_name()
        self.precision = resolve_precision(precision, _capabilities(core))
        self.model = _Compiled(core, model, self.precision, threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 RGB 0..1 -> (B, 4 + K, A) float32."""
        out = self.model({self.input: batch.astype(np.float32, copy=False)})[0]
        assert out.shape[1] == 4 + len(self.names), (out.shape, self.names)
        return out
