"""ONNX -> TensorRT engines with the ``tensorrt`` Python API (after NVIDIA-AI-IOT/nanosam).

fp16 with the layers that overflow in half precision (normalisations, softmax, their
reductions and powers) pinned to fp32; one optimisation profile per dynamic input, whose
min/opt/max come from the service's batch settings; a plain ``.engine`` plus a JSON sidecar
(source checksum, profiles, precision, TensorRT version, GPU) that the runtime checks.
Needs an NVIDIA GPU and ``pip install tensorrt``: without them it stops with that message.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lesionseg.checksums import file_sha256
from lesionseg.models.backends.tensorrt_runner import current_platform, import_tensorrt
from lesionseg.settings import Settings

# Layer-name fragments that stay in fp32 under an fp16 build: LayerNorm is exported as
# ReduceMean/Sub/Pow/Sqrt/Div, softmax as Softmax or Exp/ReduceSum.
FP32_LAYER_HINTS = (
    "LayerNorm",
    "layer_norm",
    "norm",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "Softmax",
    "softmax",
    "Exp",
    "ReduceSum",
    "Erf",
)

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def sam_profiles(
    settings: Settings, image_size: int, embedding_shape: tuple[int, int, int], mask_size: int
) -> dict[str, Profile]:
    """min/opt/max shapes of each dynamic input, from the service's batching settings."""
    b, n = settings.max_batch_size, settings.max_lesions
    s, (c, h, w), m = image_size, embedding_shape, mask_size
    opt_b, opt_n = max(1, b // 2), min(8, n)
    return {
        "encoder": {"images": ((1, 3, s, s), (opt_b, 3, s, s), (b, 3, s, s))},
        "decoder": {
            "embedding": ((1, c, h, w),) * 3,
            "boxes": ((1, 4), (opt_n, 4), (n, 4)),
            "mask_input": ((1, 1, m, m), (opt_n, 1, m, m), (n, 1, m, m)),
            "has_mask": ((1,),) * 3,
        },
    }


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    *,
    fp16: bool = True,
    workspace_gib: float = 4.0,
) -> dict:
    """Build and write an engine and its sidecar; return the sidecar."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    pinned = 0
    if fp16:
        if not builder.platform_has_fast_fp16:
            raise RuntimeError("this GPU has no fast fp16; build with fp16=False")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if any(hint in layer.name for hint in FP32_LAYER_HINTS):
                layer.precision = trt.float32
                for k in range(layer.num_outputs):
                    layer.set_output_type(k, trt.float32)
                pinned += 1
    optimisation = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        optimisation.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(optimisation)
    started = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    sidecar = {
        "source": Path(onnx_path).name,
        "source_sha256": file_sha256(onnx_path),
        "precision": "fp16 (fp32 normalisation/softmax layers)" if fp16 else "fp32",
        "fp32_pinned_layers": pinned,
        "profiles": {k: {"min": v[0], "opt": v[1], "max": v[2]} for k, v in profile.items()},
        "build_seconds": round(time.time() - started, 1),
        **current_platform(),
    }
    engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(sidecar, indent=2))
    return sidecar


def build_sam_engines(export_dir: Path, settings: Settings) -> dict:
    """Build sam_encoder.engine and sam_decoder.engine from the ONNX files in ``export_dir``."""
    record = json.loads((Path(export_dir) / "export.json").read_text())
    sam = record["sam"]
    profiles = sam_profiles(
        settings, sam["image_size"], tuple(sam["embedding_shape"]), sam["mask_size"]
    )
    return {
        part: build_engine(
            Path(export_dir) / f"sam_{part}.onnx",
            Path(export_dir) / f"sam_{part}.engine",
            profiles[part],
        )
        for part in ("encoder", "decoder")
    }


def build_detector_engine(export_dir: Path, settings: Settings) -> dict:
    """detector.engine with a dynamic batch up to max_batch_size (ultralytics' TensorRT export)."""
    import shutil

    from lesionseg.models.detector import import_yolo

    import_tensorrt()
    source = Path(export_dir) / "detector.pt"
    engine = import_yolo()(str(source)).export(
        format="engine",
        half=True,
        dynamic=True,
        batch=settings.max_batch_size,
        imgsz=settings.detector_image_size,
        device=0,
        simplify=False,
    )
    target = Path(export_dir) / "detector.engine"
    if Path(engine) != target:
        shutil.move(engine, target)
    sidecar = {
        "source": source.name,
        "source_sha256": file_sha256(source),
        "precision": "fp16",
        "profiles": {"images": {"max": [settings.max_batch_size]}},
        **current_platform(),
    }
    target.with_name(target.name + ".json").write_text(json.dumps(sidecar, indent=2))
    return sidecar
