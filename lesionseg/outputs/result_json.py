"""Turn a :class:`~lesionseg.types.SegmentationResult` into the JSON schema.

The JSON is the one the service returns::

    {"width": W, "height": H, "pixel_spacing_mm": [row, col] | null,
     "lesions": [{"box": [x0, y0, x1, y1], "label": str, "score": float,
                  "iou_prediction": float, "area_px": int, "area_mm2": float | null,
                  "mask": {"size": [H, W], "counts": "<COCO compressed RLE>"}}],
     "models": {...}, "timings_ms": {...}}

plus, for DICOM and NIfTI input, ``"pixel_spacing_source"`` when the spacing is known.
"""

from __future__ import annotations

from lesionseg.io.dicom import DicomImage
from lesionseg.io.masks import encode_rle
from lesionseg.io.nifti import NiftiVolume
from lesionseg.measure.lesions3d import Lesion3D
from lesionseg.types import SegmentationResult


def result_to_dict(result: SegmentationResult, models: dict | None = None) -> dict:
    """JSON-ready dict of one image's result (masks as COCO compressed RLE)."""
    spacing = result.pixel_spacing_mm
    return {
        "width": result.width,
        "height": result.height,
        "pixel_spacing_mm": None if spacing is None else [float(spacing[0]), float(spacing[1])],
        "lesions": [
            {
                "box": [round(v, 2) for v in lesion.box],
                "label": lesion.label,
                "score": round(lesion.score, 4),
                "iou_prediction": round(lesion.iou_prediction, 4),
                "area_px": lesion.area_px,
                "area_mm2": None if lesion.area_mm2 is None else round(lesion.area_mm2, 3),
                "mask": encode_rle(lesion.mask),
            }
            for lesion in result.lesions
        ],
        "models": models or {},
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
        # DICOM/NIfTI input only, so that the JSON of ordinary images is unchanged.
        **(
            {"pixel_spacing_source": result.pixel_spacing_source}
            if result.pixel_spacing_source
            else {}
        ),
    }


def lesion_3d_to_dict(lesion: Lesion3D) -> dict:
    """JSON-ready dict of one 3-D lesion: mm values rounded, None where unknown; the axes'
    end points as [[x, y], [x, y]] image pixel edges on ``long_axis_frame`` (the short axis
    is on the same frame, ``short_axis_frame``, as the viewer reads it)."""

    def mm(value: float | None, digits: int) -> float | None:
        return None if value is None else round(float(value), digits)

    def points(p) -> list[list[float]]:
        return [[round(float(x), 2), round(float(y), 2)] for x, y in p]

    return {
        "id": lesion.id,
        "label": lesion.label,
        "frames": list(lesion.frames),
        "voxels": lesion.voxels,
        "volume_mm3": mm(lesion.volume_mm3, 2),
        "long_axis_mm": mm(lesion.long_axis_mm, 2),
        "short_axis_mm": mm(lesion.short_axis_mm, 2),
        "long_axis_frame": lesion.long_axis_frame,
        "short_axis_frame": lesion.long_axis_frame,
        "long_axis_points": points(lesion.long_axis_points),
        "short_axis_points": points(lesion.short_axis_points),
        "centroid_mm": None
        if lesion.centroid_mm is None
        else [round(float(v), 2) for v in lesion.centroid_mm],
    }


def frame_source(dicom: DicomImage | None, nifti: NiftiVolume | None, index: int) -> dict | None:
    """Where frame ``index`` came from: the DICOM instance and frame number (1-based), or the
    NIfTI slice axis and index; None for ordinary images."""
    if dicom is not None:
        window = None if dicom.window is None else [float(v) for v in dicom.window]
        return {
            "format": "DICOM",
            "sop_instance_uid": str(dicom.dataset.get("SOPInstanceUID", "")),
            "frame_number": index + 1,
            "window": window,
        }
    if nifti is not None:
        return {"format": "NIfTI", "axis": nifti.axis, "slice": index}
    return None
