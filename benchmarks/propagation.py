"""3-D rows of the accuracy benchmark: LiTS lesions prompted once and propagated.

GT lesions are the 3-D connected components (26-connected) of the tumour label inside the
validation slab (slices 100-127). Each is prompted with its tight box on the slice where it is
largest, and :mod:`lesionseg.pipeline.propagate` carries it through the slab; next to it, the same
SAM
prompted slice by slice with the GT boxes of that lesion's outlines (the best a per-slice
prompt can do). Measures per lesion: 3-D Dice; volume error (mm^3) and RECIST long-axis error
(mm) against the GT's own measurements (:mod:`lesionseg.measure`). LiTS 117 records no spacing:
the example NIfTI's is assumed (0.8 x 0.7 mm pixels, 2.5 mm slices), so mm errors scale with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesionseg.datasets.lits import SPLITS, LitsCase
from lesionseg.measure.evaluation import dice
from lesionseg.measure.geometry import VolumeGeometry
from lesionseg.measure.lesions3d import measure_lesions
from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.propagate import Propagation, propagate
from lesionseg.transforms import mask_to_box
from lesionseg.types import Lesion, MedicalImage, SegmentationResult

SPACING = (0.8, 0.7, 2.5)  # assumed (row, column, slice) mm: the example NIfTI's
SECTION = "## 3-D lesions: one prompt, propagated"


def slab_geometry(n: int, hw: tuple[int, int]) -> VolumeGeometry:
    origins = np.zeros((n, 3))
    origins[:, 2] = np.arange(n) * SPACING[2]
    spacing = np.tile(SPACING[:2], (n, 1))
    return VolumeGeometry(origins, np.eye(3)[0], np.eye(3)[1], spacing, "assumed")


def gt_lesions(case: LitsCase, indices: range) -> np.ndarray:
    """(Z, H, W) int32 3-D tumour components of the slab (0 background)."""
    tumour = case.labels[indices.start : indices.stop] == 2
    labels, _ = ndimage.label(tumour, structure=np.ones((3, 3, 3)))
    return labels


def measure(masks: np.ndarray, geometry: VolumeGeometry):
    """(Z, H, W) bool one lesion -> its Lesion3D (or None when empty)."""
    results, ids = [], []
    for m in masks:
        lesions = (Lesion((0, 0, 1, 1), "lesion", 1, 1, m, int(m.sum()), None),) if m.any() else ()
        results.append(SegmentationResult(m.shape[1], m.shape[0], lesions))
        ids.append([1] if m.any() else [])
    found = measure_lesions(results, ids, geometry)
    return found[0] if found else None


def rows(
    case: LitsCase,
    segmenter: Segmenter,
    embeddings: dict[int, np.ndarray],
    min_voxels: int,
    name: str = "zero-shot",
) -> list[dict]:
    """One row per method (``name``: the SAM's): mean and median 3-D Dice, mean |volume
    error| (mm^3), mean |long-axis error| (mm), mean slices found minus slices in the GT."""
    indices = SPLITS["val"]
    labels = gt_lesions(case, indices)
    n, hw = len(indices), labels.shape[1:]
    geometry = slab_geometry(n, hw)
    frames = [MedicalImage(case.slice(i).image, SPACING[:2]) for i in indices]

    def decode(pending: dict[int, np.ndarray]):
        return {
            f: segmenter.predict([segmenter.wrap(embeddings[indices[f]], hw)], [boxes])[0]
            for f, boxes in pending.items()
        }

    def propagated(gt: np.ndarray) -> np.ndarray:
        largest = int(np.argmax(gt.sum(axis=(1, 2))))
        seed = mask_to_box(gt[largest])
        run = propagate(Propagation([(largest, seed)], frames), decode)
        out = np.zeros_like(gt)
        for f, (_, mask, _) in run.found[0].items():
            out[f] = mask
        return out

    def slice_by_slice(gt: np.ndarray) -> np.ndarray:
        out = np.zeros_like(gt)
        for f in np.flatnonzero(gt.any(axis=(1, 2))):
            parts, k = ndimage.label(gt[f], structure=np.ones((3, 3)))
            boxes = np.array([mask_to_box(parts == i) for i in range(1, k + 1)], np.float32)
            out[f] = decode({int(f): boxes})[int(f)].masks.any(axis=0)
        return out

    methods: dict[str, tuple[str, Callable]] = {
        f"SAM {name}, propagated": ("GT box on the largest slice only", propagated),
        f"SAM {name}, slice by slice": ("GT boxes on every slice", slice_by_slice),
    }
    out = []
    for method, (prompt, predict) in methods.items():
        dices, volume_err, long_err, slices = [], [], [], []
        for k in range(1, labels.max() + 1):
            gt = labels == k
            if gt.sum() < min_voxels:
                continue
            pred = predict(gt)
            truth, got = measure(gt, geometry), measure(pred, geometry)
            dices.append(dice(pred, gt))
            slices.append(int(pred.any(axis=(1, 2)).sum()) - int(gt.any(axis=(1, 2)).sum()))
            volume_err.append(abs((got.volume_mm3 if got else 0) - truth.volume_mm3))
            long_err.append(abs((got.long_axis_mm if got else 0) - truth.long_axis_mm))
        out.append(
            {
                "method": method,
                "prompt": prompt,
                "lesions_3d": len(dices),
                "dice_3d": round(float(np.mean(dices)), 4),
                "dice_3d_median": round(float(np.median(dices)), 4),
                "volume_abs_err_mm3": round(float(np.mean(volume_err)), 1),
                "long_axis_abs_err_mm": round(float(np.mean(long_err)), 2),
                "slices_extra": round(float(np.mean(slices)), 2),
            }
        )
    return out


def write_markdown(path: Path, rows: list[dict], prov: dict, min_voxels: int) -> None:
    """Put the 3-D table in ``path`` (the accuracy table), replacing an earlier one."""
    cols = ["method", "prompt", "lesions_3d", "dice_3d", "dice_3d_median"]
    cols += ["volume_abs_err_mm3", "long_axis_abs_err_mm", "slices_extra"]
    table = [
        SECTION,
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
        f"3-D tumour components of the validation slab of >= {min_voxels} voxels, each prompted "
        "with its tight GT box on its largest slice and propagated through the slab "
        "(lesionseg.pipeline.propagate, its defaults; they were tuned on the training slab, 0-89), "
        "next "
        "to SAM prompted with the GT box of every outline of the lesion on every slice. Errors "
        "are absolute, against the GT's own volume and RECIST long axis (lesionseg.measure), "
        "with 0.8 x 0.7 mm pixels and 2.5 mm slices assumed (LiTS 117 records no spacing); "
        "slices_extra: slices found minus slices with the lesion. "
        f"Commit {prov['commit']}, {prov['cpu']} x{prov['cpu_cores']}, torch {prov['v_torch']}, "
        f"{prov['date']}.",
    ]
    text = path.read_text() if path.exists() else ""
    text = text.split(SECTION)[0].rstrip()
    path.write_text((text + "\n\n" if text else "") + "\n".join(table) + "\n")
