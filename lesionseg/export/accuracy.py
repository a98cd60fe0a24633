"""Lesion accuracy on LiTS slices, and the accuracy guard of the exported backends.

:func:`lesion_metrics` scores any predictor over LiTS slices (lesion, image and pooled Dice;
detection recall and precision of automatic predictions) by the protocol of
:mod:`lesionseg.measure.evaluation`. :func:`compare` is the guard: the served SAM, prompted with
each lesion's ground-truth box, in fp32 torch (the reference), onnxruntime and openvino; a
backend passes when its lesion Dice is within :data:`TOLERANCE` of torch's. Both
``benchmarks/openvino_accuracy.py`` and ``tests/test_openvino.py`` run it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lesionseg.datasets.lits import LitsSlice
from lesionseg.measure.evaluation import (
    DETECTION_IOU,
    DETECTION_MIN_AREA,
    EVAL_MIN_AREA,
    DetectionCounts,
    LesionScores,
    dice,
    match_detections,
)
from lesionseg.models.backends.onnx_runner import OnnxSamRunner
from lesionseg.models.backends.openvino_runner import OpenVinoSamRunner
from lesionseg.models.backends.torch_runner import TorchSamRunner
from lesionseg.models.sam import load_sam
from lesionseg.models.segmenter import Segmenter
from lesionseg.settings import Settings
from lesionseg.transforms import mask_to_box

TOLERANCE = 0.01  # lesion Dice a backend may lose against fp32 torch and still be used

Predict = Callable[[LitsSlice], tuple[np.ndarray, bool]]  # -> ((K, H, W) bool, prompted)


def _rounded(x: float | None) -> float | str:
    return "" if x is None else round(x, 4)


def lesion_metrics(slices: list[LitsSlice], predict: Predict, min_area: int) -> dict:
    """The metrics of ``predict`` over ``slices``; ``predict`` returns a slice's instances and
    whether they are one per ground-truth lesion (box-prompted) or free (automatic). Lesions
    of >= ``min_area`` px count in lesion Dice."""
    scores, image_dice = LesionScores(), []
    inter = total = 0
    counts, automatic = DetectionCounts(), False
    for sl in slices:
        masks, prompted = predict(sl)
        automatic = not prompted
        union = masks.any(axis=0) if len(masks) else np.zeros(sl.instances.shape, bool)
        image_dice.append(dice(union, sl.tumour_mask))
        inter += int((union & sl.tumour_mask).sum())
        total += int(union.sum() + sl.tumour_mask.sum())
        lesions = [sl.instances == k + 1 for k in range(len(sl.areas))]
        scores.add(
            np.asarray(masks, bool).reshape(-1, *union.shape),
            np.array(lesions, bool).reshape(-1, *union.shape),
            prompted=prompted,
            min_area=min_area,
        )
        if not prompted:
            boxes = np.array([mask_to_box(m) for m in masks if m.any()], np.float32)
            counts += match_detections(
                boxes,
                sl.boxes,
                sl.areas,
                iou_threshold=DETECTION_IOU,
                min_area=DETECTION_MIN_AREA,
            )
    ld = np.array(scores.dices)
    return {
        "lesions": len(ld),
        "lesion_dice": round(float(ld.mean()), 4),
        "lesion_iou": round(float((ld / (2 - ld)).mean()), 4),
        "image_dice": round(float(np.mean(image_dice)), 4),
        "pooled_dice": round(2 * inter / max(total, 1), 4),
        "det_recall": _rounded(counts.recall) if automatic else "",
        "det_precision": _rounded(counts.precision) if automatic else "",
    }


def gt_box_dice(segmenter: Segmenter, slices: list[LitsSlice]) -> dict:
    """:func:`lesion_metrics` of ``segmenter`` prompted with each lesion's ground-truth box,
    lesions >= ``EVAL_MIN_AREA`` px."""
    embeddings = segmenter.embed([sl.image for sl in slices])
    by_index = {sl.index: e for sl, e in zip(slices, embeddings, strict=True)}
    return lesion_metrics(
        slices,
        lambda sl: (segmenter.predict([by_index[sl.index]], [sl.boxes])[0].masks, True),
        EVAL_MIN_AREA,
    )


def compare(
    settings: Settings, slices: list[LitsSlice], exports: Path, *, openvino_fp32: bool = True
) -> list[dict]:
    """One row per runtime: torch fp32 (the reference), onnxruntime fp32 and openvino at the
    precision it picks here from the export in ``exports``; openvino fp32 too when
    ``openvino_fp32`` and it picked another. ``vs_torch``: lesion Dice minus the reference's;
    ``passes``: within :data:`TOLERANCE`."""
    multimask = settings.multimask_output
    modules = load_sam(settings.sam_family, settings.sam_path, multimask=multimask)
    rows = [
        {"backend": "torch", "precision": "fp32"}
        | gt_box_dice(Segmenter(TorchSamRunner(modules)), slices)
    ]
    runners = [OnnxSamRunner(exports, multimask=multimask)]
    runners.append(OpenVinoSamRunner(exports, multimask=multimask, threads=settings.cpu_threads))
    if openvino_fp32 and runners[-1].precision != "fp32":
        runners.append(
            OpenVinoSamRunner(
                exports, multimask=multimask, precision="fp32", threads=settings.cpu_threads
            )
        )
    for runner in runners:
        backend = "onnxruntime" if isinstance(runner, OnnxSamRunner) else "openvino"
        precision = getattr(runner, "precision", "fp32")
        rows.append(
            {"backend": backend, "precision": precision} | gt_box_dice(Segmenter(runner), slices)
        )
    reference = rows[0]["lesion_dice"]
    for row in rows:
        row["vs_torch"] = round(row["lesion_dice"] - reference, 4)
        row["passes"] = abs(row["vs_torch"]) <= TOLERANCE
    return rows
