"""ONNX Runtime runner for exported SAM encoder/decoder files (see ``export/``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lesionseg.errors import ModelLoadError
from lesionseg.types import SamSpec

RECORD_FILE = "export.json"


def read_export_record(directory: Path) -> dict:
    """The record ``python -m export onnx`` writes beside the files."""
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"no exported models in {directory} ({RECORD_FILE} missing): run `make export`"
        )
    return json.loads(path.read_text())


def export_is_current(directory: Path, key: str) -> bool:
    """True when ``directory`` holds a finished export (its record, written last, names the
    export ``key`` of the models in force: :meth:`lesionseg.settings.Settings.export_key`)."""
    path = Path(directory) / RECORD_FILE
    return path.is_file() and json.loads(path.read_text()).get("key") == key


def spec_from_record(record: dict) -> SamSpec:
    sam = record["sam"]
    return SamSpec(
        sam["family"],
        sam["name"],
        sam["image_size"],
        sam["normalisation"],
        sam["sha256"],
        sam["mask_size"],
    )


def check_fp32(precision: str) -> None:
    """The exported files are fp32: refuse a request for another precision."""
    if precision not in ("auto", "fp32"):
        raise ModelLoadError(
            f"LESIONSEG_PRECISION={precision}: the onnxruntime backend runs the fp32 export; "
            "set LESIONSEG_PRECISION=auto or fp32, or LESIONSEG_BACKEND=openvino (bf16 on CPU) "
            "or torch (fp16/bf16 on CUDA)"
        )


def check_multimask(record: dict, directory: Path, multimask: bool) -> None:
    """Refuse an export whose decoder was made with another multimask setting."""
    if bool(record["sam"]["multimask"]) != multimask:
        raise ModelLoadError(
            f"the SAM decoder in {directory} was exported with multimask_output="
            f"{record['sam']['multimask']}; re-export (`make export`) with "
            f"LESIONSEG_MULTIMASK_OUTPUT={str(multimask).lower()}"
        )


def inference_session(path: Path, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session of ``path`` on "cpu" or "cuda" (needs onnxruntime-gpu; never
    falls back to another device silently), with ``threads`` intra-op threads (None: one per
    physical core) that sleep when idle."""
    import onnxruntime as ort

    provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
    if provider not in ort.get_available_providers():
        raise ModelLoadError(
            f"onnxruntime has no {provider} here (available: {ort.get_available_providers()});"
            " install onnxruntime-gpu for LESIONSEG_DEVICE=cuda"
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph runs sequentially; parallelism is intra-op
    # Idle pool threads otherwise spin-wait, burning the cores that the service's other
    # sessions (encoder, detector and decoder, in two processes) need at the same time.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=[provider])


class OnnxSamRunner:
    """Runs ``sam_encoder.onnx`` / ``sam_decoder.onnx`` (fp32) with ONNX Runtime.

    Args:
        directory: where ``python -m export onnx`` wrote the files and ``export.json``.
        device: "cpu" or "cuda" (needs onnxruntime-gpu; never falls back silently).
        multimask: the multimask setting the caller expects; must match the export.
        encoder_file: alternative encoder (e.g. the int8 one).
        threads: intra-op threads of each session (LESIONSEG_CPU_THREADS; None: one per
            physical core).
        with_encoder: False loads the decoder only (a process that gets its embeddings from
            elsewhere, e.g. the service's API from the model runner); ``encode`` then raises.
    """

    def __init__(
        self,
        directory: Path,
        *,
        device: str = "cpu",
        multimask: bool = False,
        encoder_file: str = "sam_encoder.onnx",
        threads: int | None = None,
        with_encoder: bool = True,
    ):
        directory = Path(directory)
        record = read_export_record(directory)
        check_multimask(record, directory, multimask)
        self.spec = spec_from_record(record)
        # The export's: fp32, or the encoder's dynamic int8 quantisation (sam_encoder.int8.onnx).
        self.precision = "int8" if ".int8." in encoder_file else "fp32"
        self.encoder = (
            inference_session(directory / encoder_file, device, threads) if with_encoder else None
        )
        self.decoder = inference_session(directory / "sam_decoder.onnx", device, threads)

    def encode(self, images: np.ndarray) -> np.ndarray:
        if self.encoder is None:
            raise ModelLoadError("this SAM runner was loaded without its encoder (decoder only)")
        return self.encoder.run(None, {"images": images.astype(np.float32, copy=False)})[0]

    def decode(
        self, embedding: np.ndarray, boxes: np.ndarray, mask_input: np.ndarray, has_mask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self.decoder.run(
            None,
            {
                "embedding": embedding.astype(np.float32, copy=False),
                "boxes": boxes.astype(np.float32, copy=False),
                "mask_input": mask_input.astype(np.float32, copy=False),
                "has_mask": np.array([float(has_mask)], np.float32),
            },
        )
        return logits, iou
