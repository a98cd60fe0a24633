"""SAM stage: batch-first and stateless.

``embed(images)`` runs the image encoder once for a whole batch; ``predict(embeddings, boxes)``
runs the prompt encoder and mask decoder once per image for all of that image's boxes. Nothing
about an image is kept between calls, so a server can embed in one batch and decode later.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionseg.errors import InvalidBoxesError
from lesionseg.models.backends import SamRunner
from lesionseg.models.baked_settings import check_baked_settings
from lesionseg.models.bundle_settings import exports_dir
from lesionseg.settings import Settings
from lesionseg.transforms import clip_boxes, preprocess, resize_bilinear, resized_hw, scale_boxes
from lesionseg.types import ImageEmbedding, MaskPrediction


def validate_boxes(boxes: object, image_hw: tuple[int, int]) -> np.ndarray:
    """Check caller-supplied boxes and clip them to the image.

    Args:
        boxes: anything array-like of shape (N, 4): XYXY in original pixels.
        image_hw: (H, W) of the image.

    Returns:
        (N, 4) float32 boxes clipped to the image.

    Raises:
        InvalidBoxesError: wrong shape, non-finite values, x1 <= x0 or y1 <= y0, or a box that
            lies wholly outside the image.
    """
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidBoxesError(f"boxes must be a list of [x0, y0, x1, y1] numbers: {exc}") from exc
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InvalidBoxesError(
            f"boxes must be a list of [x0, y0, x1, y1]; got an array of shape {list(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        raise InvalidBoxesError("boxes contain NaN or infinite values")
    bad = np.flatnonzero((arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1]))
    if bad.size:
        raise InvalidBoxesError(
            f"box {int(bad[0])} = {arr[bad[0]].tolist()} is empty: need x1 > x0 and y1 > y0"
        )
    clipped = clip_boxes(arr, image_hw)
    outside = np.flatnonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    if outside.size:
        h, w = image_hw
        raise InvalidBoxesError(
            f"box {int(outside[0])} = {arr[outside[0]].tolist()} lies outside the {w}x{h} image"
        )
    return clipped


class Segmenter:
    """Box-prompted SAM segmentation.

    Args:
        runner: executes the SAM encoder/decoder (torch, onnxruntime, tensorrt).
        mask_threshold: logit above which a pixel is in the mask.
        refine_iterations: default rounds of mask-prompt refinement (M-SAM style).
    """

    def __init__(
        self, runner: SamRunner, *, mask_threshold: float = 0.0, refine_iterations: int = 0
    ):
        self.runner = runner
        self.spec = runner.spec
        self.mask_threshold = mask_threshold
        self.refine_iterations = refine_iterations

    @classmethod
    def from_settings(cls, settings: Settings, *, with_encoder: bool = True) -> Segmenter:
        """Load the SAM model and runtime (torch, onnxruntime, openvino, tensorrt) named in
        settings. ``with_encoder`` False: onnxruntime and openvino load the prompt encoder and
        mask decoder only (:meth:`embed` then raises; :meth:`wrap` and :meth:`predict` work on
        embeddings made elsewhere); torch and tensorrt load the whole model either way."""
        if settings.backend == "torch":
            import torch  # only here: the other backends serve without torch

            torch.set_num_threads(settings.cpu_threads)
        if settings.backend != "torch":
            check_baked_settings(settings, exports_dir(settings))
        if settings.backend == "onnxruntime":
            from lesionseg.models.backends.onnx_runner import OnnxSamRunner

            runner = OnnxSamRunner(
                exports_dir(settings),
                device=settings.device,
                multimask=settings.multimask_output,
                threads=settings.cpu_threads,
                with_encoder=with_encoder,
            )
        elif settings.backend == "openvino":
            from lesionseg.models.backends.openvino_runner import OpenVinoSamRunner

            runner = OpenVinoSamRunner(
                exports_dir(settings),
                device=settings.device,
                multimask=settings.multimask_output,
                precision=settings.precision,
                threads=settings.cpu_threads,
                with_encoder=with_encoder,
            )
        elif settings.backend == "tensorrt":
            from lesionseg.models.backends.tensorrt_runner import TensorRTSamRunner

            runner = TensorRTSamRunner(exports_dir(settings), multimask=settings.multimask_output)
        else:
            from lesionseg.models.backends.torch_runner import TorchSamRunner
            from lesionseg.models.sam import load_sam

            modules = load_sam(
                settings.sam_family, settings.sam_path, multimask=settings.multimask_output
            )
            precision = "fp32" if settings.precision == "auto" else settings.precision
            runner = TorchSamRunner(modules, settings.device, precision)
        return cls(
            runner,
            mask_threshold=settings.mask_threshold,
            refine_iterations=settings.refine_iterations,
        )

    def embed(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Encode a batch of (H, W, 3) uint8 RGB images (sizes may differ) in one encoder pass."""
        if not images:
            return []
        size = self.spec.image_size
        batch = np.stack([preprocess(im, size, self.spec.normalisation) for im in images])
        features = self.runner.encode(batch)  # B x (C, h, w)
        return [self.wrap(f, im.shape[:2]) for f, im in zip(features, images, strict=True)]

    def wrap(self, features: np.ndarray, original_hw: tuple[int, int]) -> ImageEmbedding:
        """Attach the geometry of an (H, W) image to its (C, h, w) encoder output.

        For servers that encode in one process (batched) and decode in another.
        """
        hw = (int(original_hw[0]), int(original_hw[1]))
        return ImageEmbedding(features, hw, resized_hw(hw, self.spec.image_size))

    def predict(
        self,
        embeddings: Sequence[ImageEmbedding],
        boxes_per_image: Sequence[np.ndarray],
        *,
        refine_iterations: int | None = None,
    ) -> list[MaskPrediction]:
        """Segment the boxes of each image; one decoder call per image and round.

        Args:
            embeddings: from :meth:`embed`.
            boxes_per_image: per image (N_i, 4) XYXY in original pixels (validated).
            refine_iterations: rounds that feed the previous low-res logits back as a mask
                prompt together with the box (default: the constructor's).

        Returns:
            One :class:`MaskPrediction` per image, masks in box order.
        """
        assert len(embeddings) == len(boxes_per_image)
        rounds = self.refine_iterations if refine_iterations is None else refine_iterations
        return [
            self._predict_one(emb, np.asarray(boxes, np.float32).reshape(-1, 4), rounds)
            for emb, boxes in zip(embeddings, boxes_per_image, strict=True)
        ]

    def _predict_one(self, emb: ImageEmbedding, boxes: np.ndarray, rounds: int) -> MaskPrediction:
        n = boxes.shape[0]
        if n == 0:
            return self.predict_empty(emb.original_hw)
        low = (self.spec.mask_size, self.spec.mask_size)
        size = self.spec.image_size
        model_boxes = scale_boxes(boxes, emb.original_hw, emb.resized_hw)
        embedding = emb.features[None]  # (1, C, h, w)
        mask_input = np.zeros((n, 1, *low), np.float32)
        has_mask = False
        for _ in range(rounds + 1):
            logits, iou = self.runner.decode(embedding, model_boxes, mask_input, has_mask)
            best = iou.argmax(axis=1)  # (N,) best of the M candidates
            logits = logits[np.arange(n), best]  # (N, 4h, 4w)
            iou = iou[np.arange(n), best]  # (N,)
            mask_input, has_mask = logits[:, None], True
        masks = self._to_original(logits, emb.resized_hw, emb.original_hw, size)
        return MaskPrediction(masks, iou.astype(np.float32), logits.astype(np.float32))

    def predict_empty(self, original_hw: tuple[int, int]) -> MaskPrediction:
        """The prediction for an image without boxes (no model call)."""
        s = self.spec.mask_size
        return MaskPrediction(
            np.zeros((0, *original_hw), bool),
            np.zeros(0, np.float32),
            np.zeros((0, s, s), np.float32),
        )

    def _to_original(
        self, logits: np.ndarray, resized: tuple[int, int], original: tuple[int, int], size: int
    ) -> np.ndarray:
        """(N, s, s) low-res logits -> (N, H, W) bool: upsample to S, crop padding, resize
        (bilinear as torch's ``F.interpolate(align_corners=False)``, the same masks)."""
        out = np.empty((logits.shape[0], *original), bool)
        for i, lg in enumerate(logits):  # one at a time: large images x many boxes add up
            x = resize_bilinear(lg, (size, size))[: resized[0], : resized[1]]
            out[i] = resize_bilinear(x, original) > self.mask_threshold
        return out
