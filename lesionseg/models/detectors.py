"""The detector of the settings in force, whichever kind the bundle has: a YOLO
(:class:`~lesionseg.models.detector.Detector`, on the image) or a SAM head
(:class:`~lesionseg.models.sam_head.SamHeadDetector`, on the SAM embedding)."""

from __future__ import annotations

from lesionseg.errors import ModelLoadError
from lesionseg.models.bundle_settings import exports_dir
from lesionseg.models.detector import Detector
from lesionseg.models.sam_head import SamHeadDetector
from lesionseg.settings import Settings

HEAD_ONNX = "detector-head.onnx"  # a sam-head bundle's export of its head


def load_detector(settings: Settings) -> Detector | SamHeadDetector:
    """The detector of ``settings`` (``detector_kind``) on its backend."""
    if settings.detector_kind == "yolo":
        return Detector.from_settings(settings)
    return load_sam_head(settings)


def load_sam_head(settings: Settings) -> SamHeadDetector:
    """The SAM head of ``settings``: the checkpoint in torch, or its ONNX export
    (``HEAD_ONNX`` in the export directory) in ONNX Runtime or OpenVINO.

    Raises:
        ModelLoadError: no weights, a missing or foreign export, or the tensorrt backend (no
            runner for the head).
    """
    options = dict(
        score_threshold=settings.score_threshold,
        nms_iou_threshold=settings.nms_iou_threshold,
        max_detections=settings.max_lesions,
        classes=settings.detector_classes,
    )
    if settings.detector_weights is None:
        raise ModelLoadError("no sam-head weights: set LESIONSEG_MODEL_DIR to a sam-head bundle")
    if settings.backend == "torch":
        from lesionseg.models.sam_head_net import TorchHeadRunner, load_head

        net = load_head(settings.detector_weights, settings.device)
        runner = TorchHeadRunner(net, settings.device)
        return SamHeadDetector(runner, net.config, settings.detector_weights, **options)
    if settings.backend == "tensorrt":
        # The head is ~1 GFLOP a slice next to the encoder's 75: not worth an engine of its own.
        raise ModelLoadError(
            "the sam-head detector has no TensorRT runner (`make engines` builds none for it): "
            "serve a sam-head bundle with LESIONSEG_BACKEND=onnxruntime (CUDA or CPU), openvino "
            "or torch"
        )
    weights = exports_dir(settings) / HEAD_ONNX
    if settings.backend == "openvino":
        from lesionseg.models.backends.openvino_head import OpenVinoHeadRunner

        # fp32 whatever LESIONSEG_PRECISION says, as the YOLO detector: measured on the
        # embeddings of LiTS slices 104-115 (the export's check, the test bundle's head), bf16
        # moved the raw output by up to 0.019 against onnxruntime (fp32: 3e-6) and reordered or
        # replaced boxes (matched boxes' IoU down to 0); fp32 costs ~43 ms a slice against bf16's
        # ~14 ms on 2 cores (AVX512_BF16/AMX), ~4 % of the encoder's time there.
        runner = OpenVinoHeadRunner(
            weights, device=settings.device, precision="fp32", threads=settings.cpu_threads
        )
    else:
        assert settings.backend == "onnxruntime", settings.backend
        from lesionseg.models.backends.onnx_head import OnnxHeadRunner

        runner = OnnxHeadRunner(weights, device=settings.device, threads=settings.cpu_threads)
    return SamHeadDetector(runner, runner.config, weights, **options)
