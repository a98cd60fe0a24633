"""Settings of what the engine does with the models: detection, prompts, volumes, windows.

Fields of :class:`lesionseg.settings.Settings`, grouped by concern; that class is the one
settings object (read from the environment with the ``LESIONSEG_`` prefix), not this one.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from lesionseg.windows import WINDOW_PRESETS


class PipelineFields(BaseModel):
    """Detection, segmentation, volumes and intensity windows."""

    # --- detection and segmentation ------------------------------------------------------------
    score_threshold: float = Field(
        0.25, ge=0.0, le=1.0, description="Detector confidence below which boxes are dropped."
    )
    nms_iou_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="IoU above which the detector's NMS merges boxes."
    )
    detector_score_floor: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Service only: confidence the batched detector runs "
        "at; a request's score_threshold may not go below it.",
    )
    max_lesions: int = Field(50, ge=1, le=1000, description="Most lesions returned per image.")
    detector_classes: tuple[int, ...] | None = Field(
        None, description="Detector class ids to keep (default: all)."
    )
    box_margin: float = Field(
        0.0,
        ge=-0.25,
        le=1.0,
        description="Each detector box grows by this fraction of its width/height on every "
        "side before it prompts SAM (tuned per bundle on its validation cases).",
    )
    mask_threshold: float = Field(
        0.0, description="Logit above which a pixel belongs to the mask (0.0 = probability 0.5)."
    )
    multimask_output: bool = Field(
        False, description="Ask SAM for 3 candidate masks per box and keep the best by its IoU."
    )
    refine_iterations: int = Field(
        0, ge=0, le=10, description="Rounds of feeding the low-res logits back as a mask prompt."
    )

    # --- volumes: box propagation and 3-D linking ------------------------------------------
    propagation_margin: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Propagation through a volume: the previous frame's mask box grows by this "
        "fraction of its width/height on each side (at least propagation_margin_px) to prompt "
        "the next frame (lesionseg/pipeline/propagate.py).",
    )
    propagation_margin_px: float = Field(
        2.0, ge=0.0, description="Propagation: the least growth (px) of that box on each side."
    )
    propagation_min_iou: float = Field(
        0.5, ge=0.0, le=1.0, description="Propagation: SAM's predicted IoU below it ends a lesion."
    )
    propagation_max_growth: float = Field(
        2.0,
        gt=1.0,
        description="Propagation: a mask whose area is over this many times the previous "
        "one's (of at least 10 px) ends the lesion (SAM outlined the organ around it).",
    )
    propagation_min_overlap: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Propagation: least overlap of the new and the previous mask, as a fraction "
        "of the smaller one; less ends the lesion (it jumped to something else).",
    )
    propagation_max_intensity_shift: float = Field(
        15.0,
        gt=0.0,
        description="Propagation: most change of a mask's mean grey level (0-255, as the models "
        "see the frame) from the seed mask's; more ends the lesion.",
    )
    lesion_link_min_overlap: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="3-D linking: masks on neighbouring frames that overlap by at least this "
        "fraction of the smaller one are one lesion (lesions_3d, lesion_id).",
    )

    # --- DICOM / NIfTI intensity windows ------------------------------------------------------
    window_presets: dict[str, tuple[float, float]] = Field(
        WINDOW_PRESETS,
        description="Named (center, width) windows in modality units (HU for CT) that a "
        "request's `window` field may name instead of 'center,width'.",
    )

    default_window: str | None = Field(
        None,
        description="Window applied to DICOM/NIfTI uploads that name none (a preset or "
        "'center,width'): the window the bundle's models were trained with.",
    )
    default_window_modality: str | None = Field(
        None,
        description="DICOM Modality (CT, MR, ...) that default_window applies to: the "
        "bundle's training modality. A DICOM upload of another modality keeps its own window "
        "(or a min-max stretch); NIfTI carries no modality and always gets default_window. "
        "None: every grayscale DICOM.",
    )
