"""Response models of the HTTP API (they appear in the OpenAPI spec at /docs.json)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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


class SegmentResponse(BaseModel):
    width: int
    height: int
    pixel_spacing_mm: list[float] | None = Field(description="[row, column] spacing or null")
    lesions: list[LesionOut]
    models: dict = Field(description="name, family, version and sha256 of each model")
    timings_ms: dict[str, float] = Field(description="wall time per stage")


class ErrorOut(BaseModel):
    error: str = Field(description="what is wrong with the request, and how to fix it")
