"""Frozen value types passed between the pipeline stages.

Conventions used everywhere in this package:

* images are ``(H, W, 3) uint8`` RGB arrays after the documented intensity mapping;
* boxes are ``(N, 4) float32`` XYXY in original-image pixel-edge coordinates: a pixel at row
  ``r``, column ``c`` covers ``[c, c + 1) x [r, r + 1)``, so a box around a single pixel is
  ``[c, r, c + 1, r + 1]``;
* masks are ``(H, W) bool`` at the original resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lesionseg.transforms import Normalisation


@dataclass(frozen=True)
class MedicalImage:
    """One 2-D image ready for the models.

    Attributes:
        pixels: (H, W, 3) uint8 RGB after the intensity mapping of :mod:`lesionseg.io.images`.
        pixel_spacing_mm: (row spacing, column spacing) in mm, or None when unknown.
        source: short description of where the pixels came from (format, bit depth).
        pixel_spacing_source: where the spacing was read ("pixel_spacing",
            "imager_pixel_spacing" for DICOM, "nifti_header"), None when the spacing is unknown.
    """

    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None = None
    source: str = ""
    pixel_spacing_source: str | None = None

    def __post_init__(self) -> None:
        assert self.pixels.ndim == 3 and self.pixels.shape[2] == 3, self.pixels.shape
        assert self.pixels.dtype == np.uint8, self.pixels.dtype

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True)
class Detections:
    """Detector output for one image.

    Attributes:
        boxes: (K, 4) float32 XYXY, original pixels.
        scores: (K,) float32 confidences in [0, 1], sorted descending.
        class_ids: (K,) int64.
        labels: K class names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), ()
        )


@dataclass(frozen=True)
class ImageEmbedding:
    """SAM image-encoder output for one image, with the geometry needed to map masks back.

    Attributes:
        features: (C, h, w) float32 image embedding (LiteMedSAM and SAM: (256, 64, 64)).
        original_hw: (H, W) of the original image in pixels.
        resized_hw: (h', w') of the image after resize-longest-side, before padding.
    """

    features: np.ndarray
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]


@dataclass(frozen=True)
class MaskPrediction:
    """SAM decoder output for the boxes of one image.

    Attributes:
        masks: (N, H, W) bool at the original resolution.
        iou_predictions: (N,) float32, SAM's own estimate of each mask's IoU.
        low_res_logits: (N, s, s) float32 logits in the padded model frame (s = 256), the mask
            prompt of a further refinement round.
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    low_res_logits: np.ndarray


@dataclass(frozen=True)
class Lesion:
    """One lesion found in an image.

    Attributes:
        box: (x0, y0, x1, y1) original pixels.
        label: class name from the detector ("lesion" for box prompts).
        score: detector confidence in [0, 1] (1.0 for caller-supplied boxes).
        iou_prediction: SAM's predicted IoU of the mask.
        mask: (H, W) bool.
        area_px: number of mask pixels.
        area_mm2: area in mm^2 when the pixel spacing is known, else None.
    """

    box: tuple[float, float, float, float]
    label: str
    score: float
    iou_prediction: float
    mask: np.ndarray = field(repr=False)
    area_px: int
    area_mm2: float | None


@dataclass(frozen=True)
class SegmentationResult:
    """Everything found in one image, in detector-score order (or box order for prompts).

    Attributes:
        width, height: original image size in pixels.
        lesions: the lesions.
        pixel_spacing_mm: (row, column) spacing used for areas, or None.
        timings_ms: wall time per stage for this image's batch (ms).
        pixel_spacing_source: see :attr:`MedicalImage.pixel_spacing_source`.
    """

    width: int
    height: int
    lesions: tuple[Lesion, ...]
    pixel_spacing_mm: tuple[float, float] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    pixel_spacing_source: str | None = None


@dataclass(frozen=True)
class SamSpec:
    """What the preprocessing needs to know about a SAM checkpoint (torch-free, so that the
    runtimes that serve exported files need no torch).

    Attributes:
        family: "litemedsam" or "hf".
        name: human-readable model name for responses and logs.
        image_size: S, side of the square model input in px.
        normalisation: intensity normalisation of the input.
        sha256: checksum of the weights file (first weights file for HF directories).
        mask_size: side of the decoder's low-res logits (4 x the embedding grid).
    """

    family: str
    name: str
    image_size: int
    normalisation: Normalisation
    sha256: str
    mask_size: int = 256
