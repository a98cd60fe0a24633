"""RECIST 1.1 diameters of one 2-D mask: the long axis and the short axis perpendicular to it.

The outline is the set of midpoints of the pixel edges between mask and background (the
boundary that marching squares would trace through pixel centres' half-way points), so a disk
of diameter ``d`` pixels measures ``d`` on average, not ``d - 1`` (pixel centres) or
``d + 1`` (pixel corners). Distances are in mm: columns scaled by the column spacing, rows by
the row spacing, so anisotropic pixels are measured correctly.

- long axis: the longest distance between two outline points (the maximum Feret diameter);
- short axis: the longest chord of the outline's convex hull perpendicular to the long axis
  (exact for convex lesions; a concave lesion's chord may cross its concavity, as a ruler
  across it would).

End points are ``[[x, y], [x, y]]`` in image pixel-edge coordinates (x = column, y = row; the
pixel at row r, column c covers ``[c, c + 1) x [r, r + 1)``): what the viewer draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError


@dataclass(frozen=True)
class Axes:
    """RECIST axes of one mask.

    Attributes:
        long_mm, short_mm: the diameters in mm (pixels when the spacing given was (1, 1)).
        long_points, short_points: (2, 2) float64 end points [[x, y], [x, y]], pixel edges.
    """

    long_mm: float
    long_points: np.ndarray
    short_mm: float
    short_points: np.ndarray


def outline_points(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (P, 2) float64 [x, y] midpoints of the mask's boundary pixel edges."""
    m = np.pad(np.asarray(mask, bool), 1)
    inside = m[1:-1, 1:-1]
    points = []
    for dy, dx, ox, oy in (
        (0, 1, 1.0, 0.5),
        (0, -1, 0.0, 0.5),
        (1, 0, 0.5, 1.0),
        (-1, 0, 0.5, 0.0),
    ):
        neighbour = m[1 + dy : m.shape[0] - 1 + dy, 1 + dx : m.shape[1] - 1 + dx]
        r, c = np.nonzero(inside & ~neighbour)
        points.append(np.stack([c + ox, r + oy], axis=1))
    return np.concatenate(points).astype(np.float64)


def recist_axes(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Axes | None:
    """Long and short axes of an (H, W) bool mask with (row, column) ``spacing`` in mm;
    None for an empty mask."""
    points = outline_points(mask)
    if not len(points):
        return None
    scale = np.array([spacing[1], spacing[0]], np.float64)  # x: columns, y: rows
    mm = points * scale
    try:
        hull = mm[ConvexHull(mm).vertices]  # counter-clockwise polygon
    except QhullError:  # cannot happen for edge midpoints, which never lie on one line
        hull = mm
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    long_mm = float(np.sqrt(d2[i, j]))
    u = (hull[j] - hull[i]) / max(long_mm, 1e-12)
    v = np.array([-u[1], u[0]])
    s, t = (hull - hull[i]) @ u, (hull - hull[i]) @ v  # hull in (along, across) the long axis
    edges = np.stack([np.arange(len(hull)), np.roll(np.arange(len(hull)), -1)], axis=1)
    chords = []  # (width, s, lo, hi) at each hull vertex: the widths' maximum is at one of them
    for s0 in s:
        lo, hi = np.inf, -np.inf
        for a, b in edges:
            if min(s[a], s[b]) - 1e-9 <= s0 <= max(s[a], s[b]) + 1e-9:
                if abs(s[b] - s[a]) < 1e-12:
                    crossing = np.array([t[a], t[b]])
                else:
                    f = (s0 - s[a]) / (s[b] - s[a])
                    crossing = np.array([t[a] + f * (t[b] - t[a])])
                lo, hi = min(lo, crossing.min()), max(hi, crossing.max())
        chords.append((hi - lo, s0, lo, hi))
    # Digitised outlines have flat stretches of (nearly) equal width: of the chords within
    # a quarter of a pixel of the widest, the one nearest the middle of the long axis.
    widest = max(c[0] for c in chords)
    tolerance = 0.25 * min(spacing)
    width, s0, lo, hi = min(
        (c for c in chords if c[0] >= widest - tolerance), key=lambda c: abs(c[1] - long_mm / 2)
    )
    ends = np.stack([hull[i] + s0 * u + lo * v, hull[i] + s0 * u + hi * v])
    return Axes(long_mm, np.stack([hull[i], hull[j]]) / scale, float(width), ends / scale)
