"""Intensity windows of DICOM and NIfTI uploads: the named presets and the window parser.

A window is (center, width) in modality units (HU for CT); it maps
``[center - width/2, center + width/2]`` linearly to 0-255 (:func:`lesionseg.io.images.window_ct`).
It lives on the base floor because :class:`lesionseg.settings.Settings` checks its
``default_window`` with :func:`parse_window` and takes its presets from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lesionseg.errors import InputError

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),  # MedSAM's CT abdomen window, as LiTS training slices
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}


def parse_window(
    window: str | None, presets: Mapping[str, tuple[float, float]]
) -> tuple[float, float] | None:
    """``None``/empty -> None (the file decides); a preset name or ``"center,width"`` ->
    (center, width) in modality units (HU for CT).

    Raises:
        InputError: neither a preset nor two finite numbers with width > 0.
    """
    if window is None or not window.strip():
        return None
    name = window.strip().lower()
    if name in presets:
        center, width = presets[name]
        return float(center), float(width)
    parts = name.split(",")
    try:
        center, width = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        center, width = math.nan, math.nan
    if not (math.isfinite(center) and math.isfinite(width) and width > 0):
        raise InputError(
            f"window must be one of {sorted(presets)} or 'center,width' with width > 0 "
            f"(modality units, e.g. '40,400'), got {window[:40]!r}"
        )
    return center, width
