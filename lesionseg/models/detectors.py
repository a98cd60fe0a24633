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
    (``HEAD_ONNX`` in the export directory) in ONNX Runtime, OpenVINO or TensorRT."""
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
    weights = exports_dir(settings) / HEAD_ONNX
    raise ModelLoadError(
        f"the sam-head detector has no {settings.backend} runner yet ({weights}): serve it with "
        "LESIONSEG_BACKEND=torch"
    )
