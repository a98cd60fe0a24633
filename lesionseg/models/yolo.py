"""Raw YOLOv8 head output -> detections, in numpy.

After ultralytics' ``non_max_suppression`` with the defaults its predictor uses
(https://github.com/ultralytics/ultralytics/blob/main/ultralytics/utils/nms.py) and
torchvision's CPU ``nms``, down to the float32 arithmetic, so that a served export detects
what ultralytics would without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_NMS = 30_000  # ultralytics: most candidates that enter NMS (the best by score)
MAX_WH = 7680  # ultralytics: offset per class id that keeps NMS within a class


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS as ``torchvision.ops.nms`` on the CPU: stable descending score order, a box
    goes when its IoU with a kept one is > ``iou_threshold``, float32 arithmetic.

    Args:
        boxes: (N, 4) float32 XYXY.
        scores: (N,) float32.

    Returns:
        (K,) int64 indices of the kept boxes, best first.
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    alive = np.ones(len(order), bool)
    keep = []
    for k, i in enumerate(order):
        if not alive[k]:
            continue
        keep.append(i)
        rest = order[k + 1 :]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        alive[k + 1 :] &= ~(iou.astype(np.float64) > iou_threshold)  # torchvision: float vs double
    return np.array(keep, np.int64)


def decode(
    raw: np.ndarray,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    classes: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw YOLOv8 head output -> its detections, best first.

    Ultralytics' ``non_max_suppression`` with its defaults (one class per box, class-aware
    NMS): score = best class score, kept when > ``score_threshold``; boxes centre xywh -> XYXY.

    Args:
        raw: (4 + K, A) float32 (:class:`~lesionseg.models.backends.DetectorRunner` output).

    Returns:
        boxes (N, 4) float32 XYXY in the letterboxed frame (not clipped), scores (N,) float32,
        class ids (N,) int64.
    """
    x = raw.T  # (A, 4 + K)
    cls = x[:, 4:]
    scores = cls.max(axis=1)
    keep = scores > score_threshold
    class_ids = cls[keep].argmax(axis=1)
    xy, wh = x[keep, :2], x[keep, 2:4] / np.float32(2)
    boxes, scores = np.concatenate([xy - wh, xy + wh], axis=1), scores[keep]
    if classes is not None:
        wanted = np.isin(class_ids, list(classes))
        boxes, scores, class_ids = boxes[wanted], scores[wanted], class_ids[wanted]
    if len(scores) > MAX_NMS:
        best = np.argsort(-scores, kind="stable")[:MAX_NMS]
        boxes, scores, class_ids = boxes[best], scores[best], class_ids[best]
    offset = (class_ids.astype(np.float32) * np.float32(MAX_WH))[:, None]
    kept = nms(boxes + offset, scores, iou_threshold)[:max_detections]
    return boxes[kept], scores[kept], class_ids[kept].astype(np.int64)
