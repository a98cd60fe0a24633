"""What one request asks of the engine (:class:`Options`) and what it answers
(:class:`Prediction`): per frame the lesions and, for a volume, their 3-D links and
measurements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lesionseg.io.uploads import Upload, uploads_geometry
from lesionseg.measure.lesions3d import MIN_OVERLAP, Lesion3D, link_lesions, measure_lesions
from lesionseg.types import SegmentationResult


@dataclass(frozen=True)
class Options:
    """What one request asks for.

    Attributes:
        boxes: caller boxes instead of the detector: [x0, y0, x1, y1] in original pixels, with
            the 0-based frame as a fifth value when there are several frames.
        propagate: one box per lesion, carried through the frames (needs ``boxes``).
        score_threshold, max_lesions: the filter stage (default: the engine's).
        refine_iterations: SAM rounds fed back their own logits (default: the segmenter's).
    """

    boxes: list | None = None
    propagate: bool = False
    score_threshold: float | None = None
    max_lesions: int | None = None
    refine_iterations: int | None = None


@dataclass(frozen=True)
class Prediction:
    """The answer to one request.

    Attributes:
        uploads: what was segmented (one upload, or the DICOM files of one series).
        results: per frame its lesions, in frame order over the uploads.
        lesion_ids: per frame, per lesion the 1-based id of its 3-D lesion; None unless the
            answer is a volume's.
        lesions_3d: the 3-D lesions (RECIST, mm, patient coordinates), in id order.
    """

    uploads: tuple[Upload, ...]
    results: list[SegmentationResult]
    lesion_ids: list[list[int]] | None = None
    lesions_3d: tuple[Lesion3D, ...] = ()

    @property
    def volume(self) -> bool:
        return self.lesion_ids is not None


def is_volume(uploads: Sequence[Upload]) -> bool:
    """Several files, several frames or a NIfTI volume: the multi-frame answer."""
    return len(uploads) > 1 or uploads[0].multi_frame


def link(
    uploads: Sequence[Upload],
    results: list[SegmentationResult],
    ids: list[list[int]] | None = None,
    min_overlap: float = MIN_OVERLAP,
) -> tuple[list[list[int]], list[Lesion3D]]:
    """The 3-D lesions of one volume's frames: their ids per frame (``ids`` when given, as
    propagation's; else linked by overlap between neighbouring slices) and the lesions."""
    geometry = uploads_geometry(uploads)
    if ids is None:
        ids = link_lesions(results, geometry, min_overlap=min_overlap)
    return ids, measure_lesions(results, ids, geometry)
