"""YOLO stage: a batch of images -> boxes, scores, classes per image.

:class:`Detector` letterboxes in numpy, hands the batch to a runner
(:class:`~lesionseg.models.backends.DetectorRunner`: ONNX Runtime, TensorRT, ...) and decodes the
raw
YOLOv8 head output in numpy (:mod:`lesionseg.models.yolo`, as ultralytics' ``non_max_suppression``),
so serving an export needs neither torch nor ultralytics. :class:`UltralyticsDetector`
(backend torch) runs the ``.pt`` through ultralytics itself: the reference the others are
checked against.

Ultralytics tries to download weights, fonts and packages when something is missing; this
module sets its offline switches before the first import and only ever loads a weights file
that exists on disk, so nothing here touches the network.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lesionseg.errors import ModelLoadError
from lesionseg.models.backends import DetectorRunner
from lesionseg.models.baked_settings import check_baked_settings
from lesionseg.models.bundle_settings import exports_dir
from lesionseg.models.yolo import decode
from lesionseg.settings import Settings
from lesionseg.transforms import (
    clip_boxes,
    pad_to_square,
    resize_longest_side,
    resized_hw,
    scale_boxes,
)
from lesionseg.types import Detections


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: longest side to ``size``, padded with 114 at
    the bottom and right. Ultralytics' own letterbox leaves such a square as it is."""
    return pad_to_square(resize_longest_side(image, size), size, value=114)


class Detector:
    """Lesion detector over a runner that executes the network.

    Args:
        runner: executes the exported detector (:class:`~lesionseg.models.backends.DetectorRunner`).
        weights: the file the runner runs (reported by the service and the CLI).
        score_threshold: confidence at or below which boxes are dropped.
        nms_iou_threshold: NMS IoU.
        max_detections: most boxes per image.
        classes: class ids to keep (None: all).
    """

    def __init__(
        self,
        runner: DetectorRunner,
        weights: Path,
        *,
        score_threshold: float = 0.25,
        nms_iou_threshold: float = 0.5,
        max_detections: int = 50,
        classes: Sequence[int] | None = None,
    ):
        self.runner = runner
        self.weights = Path(weights)
        self.names: dict[int, str] = dict(runner.names)
        self.image_size = int(runner.image_size)
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections
        self.classes = list(classes) if classes is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Detector:
        """The detector of ``settings``: the .pt through ultralytics (torch), or its export
        (onnxruntime, openvino, tensorrt) through a runner."""
        options = dict(
            score_threshold=settings.score_threshold,
            nms_iou_threshold=settings.nms_iou_threshold,
            max_detections=settings.max_lesions,
            classes=settings.detector_classes,
        )
        if settings.backend == "torch":
            if settings.detector_weights is None:
                raise ModelLoadError(
                    "no detector weights: set LESIONSEG_DETECTOR_WEIGHTS or LESIONSEG_MODEL_DIR "
                    "(a bundle), or make the settings in force with "
                    "lesionseg.models.bundle_settings.effective_settings"
                )
            return UltralyticsDetector(
                settings.detector_weights,
                device=settings.device,
                image_size=settings.detector_image_size,
                **options,
            )
        check_baked_settings(settings, exports_dir(settings))
        if settings.backend == "tensorrt":
            from lesionseg.models.backends.tensorrt_runner import TensorRTDetectorRunner

            weights = exports_dir(settings) / "detector.engine"
            runner = TensorRTDetectorRunner(weights)
        elif settings.backend == "openvino":
            from lesionseg.models.backends.openvino_runner import OpenVinoDetectorRunner

            # fp32 whatever LESIONSEG_PRECISION says: in bf16 the shipped detector's boxes moved
            # and 8 of 64 LiTS slices got another box count (SAM keeps its Dice in bf16).
            weights = exports_dir(settings) / "detector.onnx"
            runner = OpenVinoDetectorRunner(
                weights,
                device=settings.device,
                precision="fp32",
                image_size=settings.detector_image_size,
                threads=settings.cpu_threads,
            )
        else:
            assert settings.backend == "onnxruntime", settings.backend
            from lesionseg.models.backends.onnx_detector import OnnxDetectorRunner

            weights = exports_dir(settings) / "detector.onnx"
            runner = OnnxDetectorRunner(
                weights,
                device=settings.device,
                image_size=settings.detector_image_size,
                threads=settings.cpu_threads,
            )
        return cls(runner, weights, **options)

    def detect(
        self,
        images: Sequence[np.ndarray],
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[Detections]:
        """Detect lesions in a batch of (H, W, 3) uint8 RGB images with one model call.

        Returns:
            Per image, :class:`Detections` with boxes XYXY in original pixels, scores sorted
            descending.
        """
        if not images:
            return []
        # Every image letterboxed to the same square by us: a batch of mixed shapes must give
        # each image what it would get alone (a server batches unrelated requests).
        squares = [letterbox(im, self.image_size) for im in images]
        found = self._detect_squares(
            squares,
            self.score_threshold if score_threshold is None else score_threshold,
            self.max_detections if max_detections is None else max_detections,
        )
        return [self._in_original(*f, im.shape[:2]) for f, im in zip(found, images, strict=True)]

    def _detect_squares(
        self, squares: list[np.ndarray], score_threshold: float, max_detections: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per letterboxed image: boxes (letterbox frame), scores, class ids."""
        batch = np.stack(squares).transpose(0, 3, 1, 2).astype(np.float32) / 255  # (B, 3, S, S)
        raw = self.runner.run(np.ascontiguousarray(batch))  # (B, 4 + K, A)
        size = self.image_size
        out = []
        for r in raw:
            boxes, scores, class_ids = decode(
                r,
                score_threshold=score_threshold,
                iou_threshold=self.nms_iou_threshold,
                max_detections=max_detections,
                classes=self.classes,
            )
            out.append((clip_boxes(boxes, (size, size)), scores, class_ids))
        return out

    def _in_original(
        self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, hw: tuple[int, int]
    ) -> Detections:
        boxes = clip_boxes(scale_boxes(boxes, resized_hw(hw, self.image_size), hw), hw)
        order = np.argsort(-scores, kind="stable")
        labels = tuple(self.names[int(c)] for c in class_ids[order])
        return Detections(boxes[order], scores[order], class_ids[order], labels)


def configure_ultralytics_offline() -> None:
    """Set ultralytics' offline environment (idempotent; call before importing it)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault(
        "YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "lesionseg-ultralytics")
    )


def import_yolo() -> type:
    """Import ultralytics offline and return its ``YOLO`` class.

    Importing ultralytics replaces ``PIL.Image.open`` with a wrapper that pip-installs
    ``pi-heif`` when Pillow cannot identify a file: a download attempt, and a
    ModuleNotFoundError instead of Pillow's own error for every non-image upload. Pillow's
    function is put back.
    """
    configure_ultralytics_offline()
    from PIL import Image
    from ultralytics import YOLO
    from ultralytics.utils import patches

    original = getattr(patches, "_image_open", None)
    if original is not None:
        Image.open = original
    return YOLO


class UltralyticsDetector(Detector):
    """The ``.pt`` run by ultralytics (predict, its NMS): backend torch and the reference.

    It is also a :class:`~lesionseg.models.backends.DetectorRunner` (``run``: the raw head output of
    the network ultralytics predicts with), so that :func:`lesionseg.models.yolo.decode` can be
    checked on the very numbers ultralytics decoded.

    Args:
        weights: ultralytics ``.pt`` file (must exist: a bare name would trigger a download).
        device: "cpu" or "cuda".
        image_size: inference size, longest side in px.
        score_threshold, nms_iou_threshold, max_detections, classes: as :class:`Detector`.
    """

    def __init__(
        self,
        weights: Path,
        *,
        device: str = "cpu",
        image_size: int = 256,
        score_threshold: float = 0.25,
        nms_iou_threshold: float = 0.5,
        max_detections: int = 50,
        classes: Sequence[int] | None = None,
    ):
        weights = Path(weights)
        if not weights.is_file():
            raise ModelLoadError(
                f"detector weights not found at {weights}: set LESIONSEG_DETECTOR_WEIGHTS to a "
                "local .pt file (backend torch) or run `make export` / `make engines` "
                "(backends onnxruntime / tensorrt)"
            )
        yolo = import_yolo()
        try:
            self.model = yolo(str(weights), task="detect")
        except Exception as exc:  # ultralytics raises many types for a bad file
            raise ModelLoadError(f"cannot load YOLO weights {weights}: {exc}") from exc
        self.names = dict(self.model.names)
        self.image_size = image_size
        self.device = device
        self.precision = "fp32"  # ultralytics predicts in fp32 unless asked for half
        super().__init__(
            self,
            weights,
            score_threshold=score_threshold,
            nms_iou_threshold=nms_iou_threshold,
            max_detections=max_detections,
            classes=classes,
        )

    def _detect_squares(
        self, squares: list[np.ndarray], score_threshold: float, max_detections: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        results = self.model.predict(
            [np.ascontiguousarray(sq[:, :, ::-1]) for sq in squares],  # ultralytics wants BGR
            imgsz=self.image_size,
            conf=score_threshold,
            iou=self.nms_iou_threshold,
            max_det=max_detections,
            classes=self.classes,
            device=self.device,
            verbose=False,
        )
        return [
            (
                res.boxes.xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4),
                res.boxes.conf.cpu().numpy().astype(np.float32),
                res.boxes.cls.cpu().numpy().astype(np.int64),
            )
            for res in results
        ]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 RGB 0..1 -> (B, 4 + K, A): the network ultralytics predicts
        with (its AutoBackend, fused after the first predict), without NMS."""
        import torch

        if self.model.predictor is None:  # let ultralytics build and fuse its network once
            self.detect([np.zeros((self.image_size, self.image_size, 3), np.uint8)])
        with torch.inference_mode():
            out = self.model.predictor.model(torch.from_numpy(batch).to(self.device))
        out = out[0] if isinstance(out, list | tuple) else out
        return out.float().cpu().numpy()
