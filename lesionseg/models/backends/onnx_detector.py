"""ONNX Runtime runner for the YOLO detector that ``python -m export onnx`` writes
(ultralytics' ONNX export: input ``images``, one output, no NMS inside)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np

from lesionseg.errors import ModelLoadError
from lesionseg.models.backends.onnx_runner import RECORD_FILE, inference_session


def detector_names(metadata: dict[str, str], directory: Path) -> dict[int, str]:
    """Class id -> name: the ``names`` ultralytics writes into the export's metadata
    (``"{0: 'tumour'}"``), else ``detector.classes`` of the export record in ``directory``."""
    if "names" in metadata:
        return {int(k): str(v) for k, v in ast.literal_eval(metadata["names"]).items()}
    record = Path(directory) / RECORD_FILE
    classes = None
    if record.is_file():
        classes = json.loads(record.read_text()).get("detector", {}).get("classes")
    if not classes:
        raise ModelLoadError(
            f"no class names for the detector in {directory} (neither ONNX metadata nor "
            f"{RECORD_FILE}): re-export it with `make export`"
        )
    return dict(enumerate(classes))


def detector_metadata(
    metadata: dict[str, str], path: Path, image_size: int | None
) -> tuple[dict[int, str], int]:
    """Class names and input side S of the exported detector at ``path`` from its ONNX
    metadata (``image_size``, when given, instead of the recorded ``imgsz``); an end-to-end
    export (NMS inside) is refused."""
    if metadata.get("end2end") == "True":
        raise ModelLoadError(
            f"{path} was exported end-to-end (NMS inside); the detector decodes the raw "
            "head output: re-export it with `make export`"
        )
    size = image_size or max(ast.literal_eval(metadata.get("imgsz", "[0]")))
    if not size:
        raise ModelLoadError(f"{path} records no imgsz: pass the detector image size")
    return detector_names(metadata, path.parent), int(size)


class OnnxDetectorRunner:
    """Runs ``detector.onnx``: a :class:`~lesionseg.models.backends.DetectorRunner`.

    Args:
        path: the .onnx file.
        device: "cpu" or "cuda" (needs onnxruntime-gpu; never falls back silently).
        image_size: S (default: the ``imgsz`` the export was made for).
        threads: intra-op threads (LESIONSEG_CPU_THREADS; None: one per physical core).
    """

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        image_size: int | None = None,
        threads: int | None = None,
    ):
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"no exported detector at {path}: run `make export`")
        self.session = inference_session(path, device, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.names, self.image_size = detector_metadata(metadata, path, image_size)
        self.precision = "fp32"
        self.input = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 RGB 0..1 -> (B, 4 + K, A) float32."""
        out = self.session.run(None, {self.input: batch.astype(np.float32, copy=False)})[0]
        assert out.shape[1] == 4 + len(self.names), (out.shape, self.names)
        return out
