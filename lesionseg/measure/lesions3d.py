"""Per-frame lesions of a volume linked into 3-D lesions, and what is measured of each.

Linking: two lesions on frames that are neighbours in space (adjacent in
:attr:`VolumeGeometry.order`, else in frame order) belong to one 3-D lesion when they have the
same label and their masks overlap by at least ``min_overlap`` of the smaller one; the links
are closed transitively (union-find), so a lesion that splits on one slice stays one lesion.
Ids are 1, 2, ... in the order of each 3-D lesion's first frame lesion (frame, then lesion
order). Propagation gives the groups itself (:func:`measure_lesions` with its ``ids``).

Measurements (:class:`Lesion3D`), on the lesion's mask on each frame (the union of its parts
there): volume = sum over frames of (mask pixels x pixel area x the slab the frame stands for,
:meth:`VolumeGeometry.thicknesses`); RECIST long axis = the longest in-plane diameter over the
lesion's frames, short axis = the longest diameter perpendicular to it on that frame
(:mod:`.recist`); centroid = the volume-weighted mean of the pixel centres in patient
coordinates.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionseg.measure.geometry import VolumeGeometry
from lesionseg.measure.recist import recist_axes
from lesionseg.settings import Settings
from lesionseg.types import SegmentationResult

# Of the smaller mask: neighbouring-slice lesions this close are one lesion (Settings).
MIN_OVERLAP = Settings.model_fields["lesion_link_min_overlap"].default


@dataclass(frozen=True)
class Lesion3D:
    """One lesion across frames.

    Attributes:
        id: 1-based id; the per-frame lesions of this lesion carry it as ``lesion_id``.
        label: class name of its frame lesions.
        frames: 0-based frame indices it appears on, ascending.
        voxels: mask pixels over all its frames (each pixel once).
        volume_mm3: volume in mm^3; None without spacing and slice positions.
        long_axis_mm, short_axis_mm: RECIST diameters in mm; None without pixel spacing.
        long_axis_frame: the frame of both axes (where the long axis is longest).
        long_axis_points, short_axis_points: (2, 2) [[x, y], [x, y]] end points on that
            frame, image pixel-edge coordinates (measured in pixels when the spacing is unknown).
        centroid_mm: (3,) patient coordinates (DICOM LPS, mm); None without geometry.
    """

    id: int
    label: str
    frames: tuple[int, ...]
    voxels: int
    volume_mm3: float | None
    long_axis_mm: float | None
    short_axis_mm: float | None
    long_axis_frame: int
    long_axis_points: np.ndarray
    short_axis_points: np.ndarray
    centroid_mm: np.ndarray | None


def link_lesions(
    results: Sequence[SegmentationResult],
    geometry: VolumeGeometry | None = None,
    *,
    min_overlap: float = MIN_OVERLAP,
) -> list[list[int]]:
    """Per frame, the 1-based 3-D lesion id of each of its lesions (in lesion order)."""
    keys = [(f, i) for f, r in enumerate(results) for i in range(len(r.lesions))]
    parent = {k: k for k in keys}

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    order = geometry.order if geometry is not None else np.arange(len(results))
    for a, b in itertools.pairwise(order):
        for i, x in enumerate(results[a].lesions):
            for j, y in enumerate(results[b].lesions):
                if x.label != y.label or not x.area_px or not y.area_px:
                    continue
                shared = int(np.count_nonzero(x.mask & y.mask))
                if shared >= min_overlap * min(x.area_px, y.area_px) and shared:
                    parent[root((int(a), i))] = root((int(b), j))
    ids: dict = {}
    return [[ids.setdefault(root((f, i)), len(ids) + 1) for i in range(len(r.lesions))]
            for f, r in enumerate(results)]  # fmt: skip


def measure_lesions(
    results: Sequence[SegmentationResult],
    ids: Sequence[Sequence[int]],
    geometry: VolumeGeometry | None = None,
) -> list[Lesion3D]:
    """The 3-D lesions named by ``ids`` (per frame, per lesion; as :func:`link_lesions`
    returns), in id order. ``geometry`` gives mm and patient coordinates; without it the
    in-plane spacing of each result is used for the axes and nothing else is in mm."""
    assert len(ids) == len(results)
    thick = geometry.thicknesses() if geometry is not None else None
    members: dict[int, list[tuple[int, int]]] = {}
    for f, frame_ids in enumerate(ids):
        assert len(frame_ids) == len(results[f].lesions)
        for i, lesion_id in enumerate(frame_ids):
            members.setdefault(lesion_id, []).append((f, i))
    out = []
    for lesion_id in sorted(members):
        parts = members[lesion_id]
        # Its mask on each of its frames: the union of its parts there (two lesions of one
        # frame that both touch it on a neighbour are one lesion, and their masks may overlap;
        # counted once, as its SEG segment holds them).
        masks: dict[int, np.ndarray] = {}
        for f, i in parts:
            mask = results[f].lesions[i].mask.astype(bool)
            masks[f] = masks[f] | mask if f in masks else mask
        spacing = {f: _spacing(results[f], geometry, f) for f in masks}
        known = all(s is not None for s in spacing.values())
        best = None  # (long mm, frame, axes)
        for f, mask in masks.items():
            axes = recist_axes(mask, spacing[f] or (1.0, 1.0))
            if axes is not None and (best is None or axes.long_mm > best[0]):
                best = (axes.long_mm, f, axes)
        volume = centroid = None
        if known and thick is not None:
            weights, centres = [], []
            for f, mask in masks.items():
                rows, cols = np.nonzero(mask)
                if len(rows):
                    weights.append(len(rows) * spacing[f][0] * spacing[f][1] * thick[f])
                    # The map is affine: the mean pixel's position is the positions' mean.
                    centres.append(geometry.to_patient(f, [rows.mean()], [cols.mean()])[0])
            volume = float(sum(weights))
            if volume > 0:
                centroid = np.average(np.array(centres), axis=0, weights=weights)
        frame0, lesion0 = parts[0]
        empty = np.zeros((2, 2))
        out.append(
            Lesion3D(
                id=lesion_id,
                label=results[frame0].lesions[lesion0].label,
                frames=tuple(sorted(masks)),
                voxels=sum(int(np.count_nonzero(m)) for m in masks.values()),
                volume_mm3=volume,
                long_axis_mm=best[2].long_mm if best and known else None,
                short_axis_mm=best[2].short_mm if best and known else None,
                long_axis_frame=best[1] if best else frame0,
                long_axis_points=best[2].long_points if best else empty,
                short_axis_points=best[2].short_points if best else empty,
                centroid_mm=centroid,
            )
        )
    return out


def _spacing(
    result: SegmentationResult, geometry: VolumeGeometry | None, frame: int
) -> tuple[float, float] | None:
    if geometry is not None:
        return float(geometry.spacing[frame, 0]), float(geometry.spacing[frame, 1])
    return result.pixel_spacing_mm
