"""Response models of the HTTP API (they appear in the OpenAPI spec at /docs.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_serializer


class MaskRLE(BaseModel):
    size: list[int] = Field(description="[height, width] of the mask (= the image)")
    counts: str = Field(description="COCO compressed RLE; pycocotools.mask.decode reads it")


class LesionOut(BaseModel):
    box: list[float] = Field(description="[x0, y0, x1, y1], original pixel edges")
    label: str
    score: float = Field(description="detector confidence (1.0 for caller-supplied boxes)")
    iou_prediction: float = Field(description="SAM's predicted IoU of the mask")
    area_px: int
    area_mm2: float | None = Field(description="null when the pixel spacing is unknown")
    mask: MaskRLE
    lesion_id: int | None = Field(
        None, description="volumes only: the id of its 3-D lesion in lesions_3d"
    )

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler) -> dict[str, Any]:
        data = handler(self)  # single images keep the original schema
        if data.get("lesion_id") is None:
            data.pop("lesion_id", None)
        return data


class Lesion3DOut(BaseModel):
    """A lesion across the frames of a volume (docs/3d.md)."""

    id: int = Field(description="the lesion_id its per-frame lesions carry")
    label: str
    frames: list[int] = Field(description="0-based frames it appears on, ascending")
    voxels: int = Field(description="mask pixels over all its frames")
    volume_mm3: float | None = Field(
        description="pixel area x the distance between slice centres (ImagePositionPatient "
        "or the NIfTI affine); null when the headers do not tell"
    )
    long_axis_mm: float | None = Field(description="RECIST: longest in-plane diameter")
    short_axis_mm: float | None = Field(description="longest diameter perpendicular to it")
    long_axis_frame: int = Field(description="the frame where the long axis is longest")
    short_axis_frame: int = Field(description="= long_axis_frame")
    long_axis_points: list[list[float]] = Field(description="[[x, y], [x, y]], image pixels")
    short_axis_points: list[list[float]] = Field(description="[[x, y], [x, y]], image pixels")
    centroid_mm: list[float] | None = Field(
        description="[x, y, z] in DICOM patient coordinates (LPS, mm; NIfTI RAS converted)"
    )


class FrameSource(BaseModel):
    format: Literal["DICOM", "NIfTI"]
    sop_instance_uid: str | None = Field(None, description="DICOM: the source instance")
    frame_number: int | None = Field(None, description="DICOM: 1-based frame in that instance")
    window: list[float] | None = Field(None, description="DICOM: [center, width] applied")
    axis: int | None = Field(None, description="NIfTI: voxel axis of the slices")
    slice: int | None = Field(None, description="NIfTI: slice index along that axis")


class SegmentResponse(BaseModel):
    width: int
    height: int
    pixel_spacing_mm: list[float] | None = Field(description="[row, column] spacing or null")
    lesions: list[LesionOut]
    models: dict = Field(description="name, family, version and sha256 of each model")
    timings_ms: dict[str, float] = Field(description="wall time per stage")
    pixel_spacing_source: (
        Literal["pixel_spacing", "imager_pixel_spacing", "nifti_header"] | None
    ) = Field(
        None,
        description="DICOM/NIfTI only, when the spacing is known: PixelSpacing, "
        "ImagerPixelSpacing (detector plane, magnification not corrected) or the NIfTI "
        "header; absent otherwise",
    )
    source: FrameSource | None = Field(None, description="DICOM/NIfTI only: the frame's origin")

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler) -> dict[str, Any]:
        # Ordinary images keep the original schema: the DICOM/NIfTI keys are left out.
        data = handler(self)
        for key in ("pixel_spacing_source", "source"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class FrameOut(SegmentResponse):
    frame: int = Field(description="0-based frame (DICOM) or slice (NIfTI) index")
    models: dict | None = Field(None, exclude=True)  # once, at the top level


class FramesResponse(BaseModel):
    """/segment and /segment/boxes for multi-frame DICOM and NIfTI volumes."""

    number_of_frames: int
    frames: list[FrameOut] = Field(description="per frame the /segment result, in frame order")
    lesions_3d: list[Lesion3DOut] = Field(
        default_factory=list, description="the frames' lesions linked across slices"
    )
    models: dict = Field(description="name, family, version and sha256 of each model")


class ErrorOut(BaseModel):
    """Every error's body (service/errors.py makes BentoML's and routing's fit it too)."""

    error: str = Field(
        min_length=1, description="what is wrong with the request, and how to fix it"
    )
    detail: Any = Field(
        None, description="optional structured detail, e.g. one {loc, msg, type} per bad field"
    )
