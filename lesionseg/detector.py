"""YOLO stage on ultralytics: a batch of images -> boxes, scores, classes per image.

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

from .errors import ModelLoadError
from .settings import Settings
from .transforms import clip_boxes, pad_to_square, resize_longest_side, resized_hw, scale_boxes
from .types import Detections


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


class Detector:
    """Lesion detector.

    Args:
        weights: ultralytics ``.pt`` file (must exist: a bare name would trigger a download).
        device: "cpu" or "cuda".
        image_size: inference size, longest side in px.
        score_threshold: confidence below which boxes are dropped.
        nms_iou_threshold: NMS IoU.
        max_detections: most boxes per image.
        classes: class ids to keep (None: all).
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
        self.weights = weights
        self.names: dict[int, str] = dict(self.model.names)
        self.device = device
        self.image_size = image_size
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections
        self.classes = list(classes) if classes is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Detector:
        """The detector of ``settings``: the .pt (torch), or its export (onnxruntime, tensorrt)."""
        weights = settings.detector_weights
        if settings.backend == "onnxruntime":
            weights = settings.exports() / "detector.onnx"
        elif settings.backend == "tensorrt":
            from .backends.tensorrt_runner import check_engine

            weights = settings.exports() / "detector.engine"
            check_engine(weights)
        return cls(
            weights,
            device=settings.device,
            image_size=settings.detector_image_size,
            score_threshold=settings.score_threshold,
            nms_iou_threshold=settings.nms_iou_threshold,
            max_detections=settings.max_lesions,
            classes=settings.detector_classes,
        )

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
        # Letterbox every image to the same square ourselves: ultralytics pads a batch of mixed
        # shapes differently from a single image, and a server's result must not depend on
        # which other requests shared its batch.
        size = self.image_size
        squares = [
            pad_to_square(resize_longest_side(im, size), size, value=114)[:, :, ::-1]  # BGR
            for im in images
        ]
        results = self.model.predict(
            [np.ascontiguousarray(sq) for sq in squares],
            imgsz=self.image_size,
            conf=self.score_threshold if score_threshold is None else score_threshold,
            iou=self.nms_iou_threshold,
            max_det=self.max_detections if max_detections is None else max_detections,
            classes=self.classes,
            device=self.device,
            verbose=False,
        )
        out = []
        for res, im in zip(results, images, strict=True):
            boxes = res.boxes.xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4)
            resized = resized_hw(im.shape[:2], size)
            boxes = clip_boxes(scale_boxes(boxes, resized, im.shape[:2]), im.shape[:2])
            scores = res.boxes.conf.cpu().numpy().astype(np.float32)
            class_ids = res.boxes.cls.cpu().numpy().astype(np.int64)
            order = np.argsort(-scores, kind="stable")
            labels = tuple(self.names[int(c)] for c in class_ids[order])
            out.append(Detections(boxes[order], scores[order], class_ids[order], labels))
        return out
