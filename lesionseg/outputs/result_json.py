"""The JSON of results: what the service answers and the CLI writes (one place for both).

One image (``/segment``'s SegmentResponse)::

    {"width": W, "height": H, "pixel_spacing_mm": [row, col] | null,
     "lesions": [{"box": [x0, y0, x1, y1], "label": str, "score": float,
                  "iou_prediction": float, "area_px": int, "area_mm2": float | null,
                  "mask": {"size": [H, W], "counts": "<COCO compressed RLE>"}}],
     "models": {...}, "timings_ms": {...}}

plus, for DICOM and NIfTI input, ``"pixel_spacing_source"`` when the spacing is known and
the frame's ``"source"``. Several frames, a volume or a series (FramesResponse)::

    {"number_of_frames": F, "frames": [{...as above, without "models", "frame": k; each lesion
     with its "lesion_id"}], "lesions_3d": [{...}], "models": {...}}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from lesionseg.io.dicom import DicomImage
from lesionseg.io.masks import encode_rle
from lesionseg.io.nifti import NiftiVolume
from lesionseg.io.uploads import Upload
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
    NIfTI slice axis and index, the other format's keys null (as the API's FrameSource
    writes them); None for ordinary images."""
    if dicom is not None:
        window = None if dicom.window is None else [float(v) for v in dicom.window]
        return {
            "format": "DICOM",
            "sop_instance_uid": str(dicom.dataset.get("SOPInstanceUID", "")),
            "frame_number": index + 1,
            "window": window,
            "axis": None,
            "slice": None,
        }
    if nifti is not None:
        return {
            "format": "NIfTI",
            "sop_instance_uid": None,
            "frame_number": None,
            "window": None,
            "axis": nifti.axis,
            "slice": index,
        }
    return None


def frame_dicts(
    uploads: Sequence[Upload],
    results: Sequence[SegmentationResult],
    models: dict,
    on_stage: Callable[[str, float], None] | None = None,
) -> list[dict]:
    """Per frame of ``uploads`` (in order) its result dict with its ``source``; each frame's
    ``timings_ms`` gains ``encode_response``, the time this took (also given to
    ``on_stage``)."""
    start = time.perf_counter()
    payloads, frames = [], [(u, i) for u in uploads for i in range(len(u.frames))]
    for (upload, index), result in zip(frames, results, strict=True):
        payload = result_to_dict(result, models)
        if (source := frame_source(upload.dicom, upload.nifti, index)) is not None:
            payload["source"] = source
        payloads.append(payload)
    elapsed = time.perf_counter() - start
    if on_stage is not None:
        on_stage("encode_response", elapsed)
    for payload, result in zip(payloads, results, strict=True):
        timings = {**result.timings_ms, "encode_response": elapsed * 1000}
        payload["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
    return payloads


def response_body(
    uploads: Sequence[Upload],
    results: Sequence[SegmentationResult],
    models: dict,
    *,
    lesion_ids: Sequence[Sequence[int]] | None = None,
    lesions_3d: Sequence[Lesion3D] = (),
    on_stage: Callable[[str, float], None] | None = None,
) -> dict:
    """One image's dict (``lesion_ids`` None), else the multi-frame dict: per frame its
    result with ``frame`` and each lesion's ``lesion_id``, ``lesions_3d``, ``models`` once."""
    frames = frame_dicts(uploads, results, models, on_stage)
    if lesion_ids is None:
        (body,) = frames
        return body
    for index, (payload, frame_ids) in enumerate(zip(frames, lesion_ids, strict=True)):
        payload["frame"] = index
        del payload["models"]
        for lesion, lesion_id in zip(payload["lesions"], frame_ids, strict=True):
            lesion["lesion_id"] = lesion_id
    return {
        "number_of_frames": len(frames),
        "frames": frames,
        "lesions_3d": [lesion_3d_to_dict(x) for x in lesions_3d],
        "models": models,
    }
