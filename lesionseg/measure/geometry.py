"""Where the frames of a volume lie in the patient, in millimetres.

Coordinates are DICOM patient coordinates (LPS: x to the patient's left, y to the posterior,
z to the head), whatever the source: DICOM gives them (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing); a NIfTI affine (RAS) is converted by negating x and y
(:func:`lesionseg.io.nifti.volume_geometry`). Pixel ``(row r, column c)`` of frame ``k`` has its
centre at ``origins[k] + c * spacing[k, 1] * row_dir + r * spacing[k, 0] * col_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VolumeGeometry:
    """The pixel grid of each frame, in frame order (not necessarily sorted in space).

    Attributes:
        origins: (F, 3) float64, centre of pixel (0, 0) of each frame, patient mm (LPS).
        row_dir: (3,) unit vector along a row (the direction columns increase).
        col_dir: (3,) unit vector down a column (the direction rows increase).
        spacing: (F, 2) float64 (row, column) pixel spacing in mm.
        source: where the positions came from: "image_position_patient" or "nifti_affine".
        slice_step: mm between slice centres when the frames cannot tell (a one-slice NIfTI:
            its affine's slice-axis step); None otherwise.
    """

    origins: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: np.ndarray
    source: str
    slice_step: float | None = None

    def __post_init__(self) -> None:
        assert self.origins.ndim == 2 and self.origins.shape[1] == 3, self.origins.shape
        assert self.spacing.shape == (len(self.origins), 2), self.spacing.shape

    @property
    def normal(self) -> np.ndarray:
        """(3,) unit normal of the frames (row_dir x col_dir)."""
        n = np.cross(self.row_dir, self.col_dir)
        return n / np.linalg.norm(n)

    @property
    def positions(self) -> np.ndarray:
        """(F,) position of each frame along the normal, mm."""
        return self.origins @ self.normal

    @property
    def order(self) -> np.ndarray:
        """(F,) int frame indices sorted along the normal (stable for equal positions)."""
        return np.argsort(self.positions, kind="stable")

    def thicknesses(self) -> np.ndarray | None:
        """(F,) mm of the slab each frame stands for, in frame order: half the distance to the
        previous slice centre plus half the distance to the next (an end frame: the distance
        to its one neighbour). None when two frames share a position, or when there is one
        frame and no ``slice_step``."""
        if len(self.origins) == 1:
            return None if self.slice_step is None else np.array([self.slice_step])
        order = self.order
        gaps = np.diff(self.positions[order])  # (F-1,) between neighbours in space
        if np.min(gaps) < 1e-3:
            return None
        sorted_thick = np.empty(len(order))
        sorted_thick[0], sorted_thick[-1] = gaps[0], gaps[-1]
        sorted_thick[1:-1] = (gaps[:-1] + gaps[1:]) / 2
        out = np.empty(len(order))
        out[order] = sorted_thick
        return out

    def to_patient(self, frame: int, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """(N,) row and column pixel indices (fractional allowed, pixel centres at integers)
        of one frame -> (N, 3) patient mm."""
        r = np.asarray(rows, np.float64)[:, None] * self.spacing[frame, 0]
        c = np.asarray(columns, np.float64)[:, None] * self.spacing[frame, 1]
        return self.origins[frame] + c * self.row_dir + r * self.col_dir
