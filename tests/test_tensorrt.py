"""TensorRT: engine build and run where `tensorrt` imports with a GPU; loud failures elsewhere."""

import importlib.util

import numpy as np
import pytest

from lesionseg.errors import ModelLoadError
from lesionseg.models.backends.tensorrt_runner import INSTALL_HINT, engine_header, engine_mismatch
from lesionseg.models.detector import Detector
from lesionseg.models.segmenter import Segmenter
from lesionseg.settings import Settings


def _gpu_with_tensorrt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install tensorrt on an NVIDIA GPU machine)"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU"


SKIP_REASON = _gpu_with_tensorrt()


def test_sidecar_mismatch_is_explained():
    built = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
    assert engine_mismatch(built, dict(built)) is None
    message = engine_mismatch(built, {**built, "gpu_name": "NVIDIA L4"})
    assert "NVIDIA H100" in message and "NVIDIA L4" in message and "make engines" in message
    assert "tensorrt_version" in engine_mismatch(built, {**built, "tensorrt_version": "10.4.0"})


def test_ultralytics_engine_header_is_read_and_skipped(tmp_path):
    # ultralytics writes a 4-byte length and its metadata (names, imgsz) before the engine.
    import json

    meta = json.dumps({"names": {"0": "tumour"}, "imgsz": [256, 256]}).encode()
    engine = b"\x00\x01ftrt-engine-bytes" * 10
    with_header = tmp_path / "detector.engine"
    with_header.write_bytes(len(meta).to_bytes(4, "little") + meta + engine)
    offset, found = engine_header(with_header)
    assert with_header.read_bytes()[offset:] == engine and found["names"] == {"0": "tumour"}
    plain = tmp_path / "plain.engine"
    plain.write_bytes(engine)
    assert engine_header(plain) == (0, {})


@pytest.mark.skipif(SKIP_REASON is None, reason="TensorRT is available here")
@pytest.mark.parametrize("stage", [Segmenter, Detector])
def test_asking_for_tensorrt_without_it_fails_with_install_hint(tmp_path, stage):
    with pytest.raises(ModelLoadError) as info:
        stage.from_settings(Settings(backend="tensorrt", export_dir=tmp_path))
    assert str(info.value) in (
        INSTALL_HINT,
        "LESIONSEG_BACKEND=tensorrt needs a CUDA GPU; torch sees none",
    )


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
def test_engines_match_onnx_runtime(exported, lits):
    from lesionseg.export.tensorrt import build_sam_engines

    directory, _ = exported
    settings = Settings(backend="tensorrt", export_dir=directory, device="cuda")
    sidecars = build_sam_engines(directory, settings)
    assert sidecars["encoder"]["profiles"]["images"]["max"][0] == settings.max_batch_size
    trt = Segmenter.from_settings(settings)
    onnx = Segmenter.from_settings(Settings(backend="onnxruntime", export_dir=directory))
    sl = lits.slice(120)
    a = trt.predict(trt.embed([sl.image]), [sl.boxes])[0]
    b = onnx.predict(onnx.embed([sl.image]), [sl.boxes])[0]
    inter = np.logical_and(a.masks, b.masks).sum()
    assert 2 * inter / (a.masks.sum() + b.masks.sum()) >= 0.97  # fp16 engine vs fp32
