"""Segmentation results -> a DICOM Segmentation (SEG) object, written with highdicom.

One BINARY segment per 3-D lesion when the lesions' ids are given (what the service does:
:mod:`lesionseg.measure.lesions3d`), labelled with its class name and tracked as
``lesion <id>`` with a Tracking UID that the SR (:mod:`lesionseg.outputs.dicom_sr`) repeats; else
one per
lesion label (the detector's class names, or "lesion" for box prompts), a segment's frame
then holding the union of that label's lesion masks on the source frame.
The SEG references its source SOP instance(s), gets new Series/SOP Instance UIDs, identifies
the algorithm (name "lesionseg", the package version, family Artificial Intelligence) and says
"not for clinical use" in its SeriesDescription. Frames with no lesion are omitted (highdicom's
default ``omit_empty_frames``); when nothing was found at all, highdicom keeps every (empty)
frame so the SEG stays valid, and every segment is still described (highdicom issue #338).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Mapping, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from lesionseg import __version__
from lesionseg.errors import InputError
from lesionseg.io.dicom import pixel_spacing
from lesionseg.types import SegmentationResult

_NAME_WARNING = "The string .* is unlikely to represent"  # highdicom quotes the patient's name

_PIXEL_SPACING = pydicom.tag.Tag("PixelSpacing")
SERIES_DESCRIPTION = "lesionseg lesions - research, not for clinical use"
ALGORITHM_NAME = "lesionseg"


def source_frames(sources: Sequence[Dataset]) -> int:
    """Frames the sources hold: one multi-frame object or several single-frame ones."""
    if len(sources) == 1:
        return int(sources[0].get("NumberOfFrames") or 1)
    multi = [i for i, s in enumerate(sources) if int(s.get("NumberOfFrames") or 1) > 1]
    if multi:
        raise InputError(
            f"file {multi[0]} is a multi-frame object: send it alone, or a series of "
            "single-frame files"
        )
    series = {str(s.get("SeriesInstanceUID", "")) for s in sources}
    if len(series) != 1:
        raise InputError(
            f"the {len(sources)} files belong to {len(series)} series; send one series"
        )
    return len(sources)


def segment_labels(results: Sequence[SegmentationResult], default: Sequence[str]) -> list[str]:
    """Labels found, sorted; ``default`` when nothing was found (a SEG needs >= 1 segment)."""
    found = sorted({lesion.label for r in results for lesion in r.lesions})
    return found or sorted(set(default))


def build_seg(
    sources: Sequence[Dataset],
    results: Sequence[SegmentationResult],
    *,
    labels: Sequence[str] = ("lesion",),
    lesion_ids: Sequence[Sequence[int]] | None = None,
    semiautomatic: bool = False,
    algorithm_parameters: Mapping[str, str] | None = None,
    series_number: int = 990,
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``results`` (one per source frame, in order) over ``sources``.

    Args:
        sources: one (multi-frame) object or the single-frame objects of one series.
        results: per source frame, the lesions found (masks (H, W) bool).
        labels: segments to describe when no lesion was found (the pipeline's class names).
        lesion_ids: per frame, the 3-D lesion id of each lesion: one segment per id (in id
            order) instead of one per label.
        semiautomatic: True when caller-supplied box prompts guided the masks (DICOM
            SEMIAUTOMATIC), False for fully automatic detection (AUTOMATIC).
        algorithm_parameters: name -> value recorded in the algorithm identification.
        series_number: Series Number of the new SEG series.
    """
    n_frames = source_frames(sources)
    if len(results) != n_frames:
        raise ValueError(f"{len(results)} results for {n_frames} source frames")
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if any((r.height, r.width) != (rows, columns) for r in results):
        raise InputError(f"every frame must be {columns}x{rows} pixels like the first one")
    segments = _segments(results, labels, lesion_ids)  # (label, tracking id or None)
    masks = np.zeros((n_frames, rows, columns, len(segments)), bool)  # (F, H, W, S)
    index = {key: i for i, (_, key) in enumerate(segments)}
    for f, result in enumerate(results):
        for k, lesion in enumerate(result.lesions):
            key = lesion.label if lesion_ids is None else lesion_ids[f][k]
            masks[f, :, :, index[key]] |= lesion.mask
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters=dict(algorithm_parameters or {}) or None,
    )
    kind = "SEMIAUTOMATIC" if semiautomatic else "AUTOMATIC"
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=kind,
            algorithm_identification=algorithm,
            **(
                {"tracking_id": f"lesion {key}", "tracking_uid": hd.UID()}
                if isinstance(key, int)
                else {}
            ),
        )
        for i, (name, key) in enumerate(segments)
    ]
    try:
        with no_name_warnings():
            return hd.seg.Segmentation(
                source_images=[_valid_spacing(s) for s in sources],
                pixel_array=masks,
                segmentation_type="BINARY",
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="lesionseg",
                manufacturer_model_name=ALGORITHM_NAME,
                software_versions=__version__,
                device_serial_number="none",
                content_label="LESIONS",
                content_description="Lesions found by lesionseg (research, not for clinical use)",
                series_description=SERIES_DESCRIPTION,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        # highdicom names the missing or unsupported attribute, never its value.
        raise InputError(f"cannot make a DICOM SEG for this input: {exc}") from exc


def _segments(
    results: Sequence[SegmentationResult],
    labels: Sequence[str],
    lesion_ids: Sequence[Sequence[int]] | None,
) -> list[tuple[str, str | int]]:
    """(segment label, key): key = the label, or the 3-D lesion id."""
    if lesion_ids is None or not any(r.lesions for r in results):
        return [(name, name) for name in segment_labels(results, labels)]
    label_of = {
        lesion_id: lesion.label
        for result, ids in zip(results, lesion_ids, strict=True)
        for lesion, lesion_id in zip(result.lesions, ids, strict=True)
    }
    return [(label_of[i], i) for i in sorted(label_of)]


@contextlib.contextmanager
def no_name_warnings() -> Iterator[None]:
    """While highdicom writes an object: no warning quoting the patient's name. Scoped to the
    call, not set at import: a module-level filter is lost to any enclosing catch_warnings
    (pytest's, for one), and the warning would log the name."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NAME_WARNING, module="highdicom")
        yield


def _valid_spacing(source: Dataset) -> Dataset:
    """``source``, or a shallow copy without an unusable PixelSpacing (e.g. [0, 0], as in
    pydicom-data's RG1_UNCR.dcm): highdicom would copy it into a SEG it cannot read back."""
    if "PixelSpacing" not in source or pixel_spacing(source)[1] == "pixel_spacing":
        return source
    header = Dataset({tag: elem for tag, elem in source.items() if tag != _PIXEL_SPACING})
    header.file_meta = source.file_meta
    return header


def seg_to_bytes(seg: Dataset) -> bytes:
    """DICOM Part-10 bytes (preamble, file meta) of ``seg``."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, seg, enforce_file_format=True)
    return buffer.getvalue()
