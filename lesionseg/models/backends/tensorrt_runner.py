"""TensorRT runner for SAM engines built by ``lesionseg/export/tensorrt.py``.

Engines are tied to one GPU model and one TensorRT version. Each ``.engine`` has a JSON
sidecar (``<name>.engine.json``) that records both; :func:`check_engine` refuses an engine built
elsewhere with a message that says to rebuild it. Nothing falls back to another runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lesionseg.errors import ModelLoadError
from lesionseg.models.backends.onnx_runner import read_export_record, spec_from_record

INSTALL_HINT = (
    "TensorRT is not installed: `pip install tensorrt` (needs an NVIDIA GPU, its driver and "
    "CUDA 12/13), then `make engines`; or set LESIONSEG_BACKEND=onnxruntime or torch"
)


def import_tensorrt():
    """Import ``tensorrt`` and check there is a CUDA GPU, or raise :class:`ModelLoadError`."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ModelLoadError(INSTALL_HINT) from exc
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError("LESIONSEG_BACKEND=tensorrt needs a CUDA GPU; torch sees none")
    return tensorrt


def current_platform() -> dict:
    """The GPU and TensorRT version an engine built now would be tied to."""
    trt = import_tensorrt()
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {
        "gpu_name": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
        "tensorrt_version": trt.__version__,
    }


def engine_mismatch(sidecar: dict, platform: dict) -> str | None:
    """Why an engine's sidecar does not fit this platform, or None when it does."""
    for key in ("tensorrt_version", "gpu_name", "compute_capability"):
        if sidecar.get(key) != platform.get(key):
            return (
                f"engine built for {key}={sidecar.get(key)!r} but this machine has "
                f"{platform.get(key)!r}: rebuild it here with `make engines`"
            )
    return None


def check_engine(path: Path) -> dict:
    """Read an engine's sidecar and check it against this machine; return the sidecar."""
    path = Path(path)
    sidecar_path = path.with_name(path.name + ".json")
    if not path.is_file() or not sidecar_path.is_file():
        raise ModelLoadError(
            f"TensorRT engine {path} or its sidecar is missing: run `make engines`"
        )
    sidecar = json.loads(sidecar_path.read_text())
    problem = engine_mismatch(sidecar, current_platform())
    if problem:
        raise ModelLoadError(f"{path.name}: {problem}")
    return sidecar


def engine_header(path: Path) -> tuple[int, dict]:
    """The JSON header ultralytics writes before a serialised engine (4-byte little-endian
    length, then the metadata: names, imgsz, ...) and the offset of the engine bytes; (0, {})
    without one."""
    with Path(path).open("rb") as f:
        n = int.from_bytes(f.read(4), byteorder="little")
        if 0 < n <= Path(path).stat().st_size - 4:
            try:
                return 4 + n, json.loads(f.read(n))
            except (UnicodeDecodeError, ValueError):  # engine bytes, not a header
                pass
    return 0, {}


class _Engine:
    """One deserialised engine; inputs and outputs bound by tensor name, torch CUDA buffers.
    ``offset``: where the engine starts in the file (after an ultralytics header)."""

    def __init__(self, path: Path, offset: int = 0):
        trt = import_tensorrt()
        import torch

        self.sidecar = check_engine(path)
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes()[offset:])
        if self.engine is None:
            raise ModelLoadError(f"TensorRT could not deserialise {path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.torch = torch
        self.stream = torch.cuda.Stream()

    def __call__(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        keep = []
        for name in self.inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(arrays[name], np.float32)).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return {name: out.cpu().numpy() for name, out in outputs.items()}


class TensorRTSamRunner:
    """Runs ``sam_encoder.engine`` / ``sam_decoder.engine`` (fp16 where the build allowed)."""

    def __init__(self, directory: Path, *, multimask: bool = False):
        directory = Path(directory)
        import_tensorrt()
        record = read_export_record(directory)
        if bool(record["sam"]["multimask"]) != multimask:
            raise ModelLoadError(
                "the SAM decoder engine was built with multimask_output="
                f"{record['sam']['multimask']}; rebuild with `make export engines`"
            )
        self.spec = spec_from_record(record)
        self.encoder = _Engine(directory / "sam_encoder.engine")
        self.decoder = _Engine(directory / "sam_decoder.engine")
        self.precision = self.encoder.sidecar["precision"]  # as `make engines` built it
        self.max_batch = int(self.encoder.sidecar["profiles"]["images"]["max"][0])

    def encode(self, images: np.ndarray) -> np.ndarray:
        chunks = [
            self.encoder(images=images[i : i + self.max_batch])["embeddings"]
            for i in range(0, len(images), self.max_batch)
        ]
        return np.concatenate(chunks)

    def decode(
        self, embedding: np.ndarray, boxes: np.ndarray, mask_input: np.ndarray, has_mask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        out = self.decoder(
            embedding=embedding,
            boxes=boxes,
            mask_input=mask_input,
            has_mask=np.array([float(has_mask)], np.float32),
        )
        return out["logits"], out["iou"]


class TensorRTDetectorRunner:
    """Runs ``detector.engine`` (ultralytics' TensorRT export of the detector, no NMS inside):
    a :class:`~lesionseg.models.backends.DetectorRunner`; batches above the engine's profile are
    split."""

    def __init__(self, path: Path):
        path = Path(path)
        import_tensorrt()
        offset, metadata = engine_header(path)
        if "names" not in metadata or "imgsz" not in metadata:
            raise ModelLoadError(f"{path} has no ultralytics metadata: rebuild with `make engines`")
        self.names = {int(k): str(v) for k, v in metadata["names"].items()}
        self.image_size = int(max(metadata["imgsz"]))
        self.engine = _Engine(path, offset)
        self.precision = self.engine.sidecar["precision"]  # as `make engines` built it
        (self.output,) = self.engine.outputs
        self.max_batch = int(self.engine.sidecar["profiles"]["images"]["max"][0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        chunks = [
            self.engine(images=batch[i : i + self.max_batch])[self.output]
            for i in range(0, len(batch), self.max_batch)
        ]
        return np.concatenate(chunks)
