"""3-D lesions -> a DICOM Comprehensive 3D SR measurement report (TID 1500), with highdicom.

Three measurement groups per 3-D lesion, all with the tracking identifier and UID of its
segment of the SEG (:func:`lesionseg.outputs.dicom_seg.build_seg` with ``lesion_ids``):

- a Volumetric ROI group (TID 1411) referencing that segment: Volume (mm3), when known;
- two Planar ROI groups (TID 1410) on the source image where the RECIST axes were measured
  (:mod:`lesionseg.measure.recist`), one per axis: its region the axis as a two-point SCOORD
  POLYLINE, its measurement Long axis or Short axis (mm); only when the axes are known in mm.
  (TID 1410 gives a measurement no coordinates of its own: the group's region is what it
  measures, hence one group per axis.)

SCOORD Graphic Data are (column, row) image coordinates with 0.0\\0.0 at the top left corner of
the top left pixel (DICOM PS3.3 C.18.6.1.2): the RECIST end points' own coordinates. One
tracking UID for a lesion's groups lets viewers show it as one finding: OHIF 3 merges the
groups of one UID, draws the first SCOORD (the long axis) on its image and lists every NUM.

The algorithm (name "lesionseg", the package version) is named in every group and measurement,
the observer is the lesionseg device, and the SeriesDescription says "not for clinical use".
The evidence lists the source images and the SEG; the report lives in the source study with
new Series and SOP Instance UIDs.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from lesionseg import __version__
from lesionseg.errors import InputError
from lesionseg.measure.lesions3d import Lesion3D
from lesionseg.outputs.dicom_seg import ALGORITHM_NAME, no_name_warnings

SERIES_DESCRIPTION = "lesionseg measurements - research, not for clinical use"
_PROCEDURES = {  # CID 100 Quantitative Diagnostic Imaging Procedures, by modality
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}
DEVICE_UID = generate_uid(entropy_srcs=["lesionseg"])  # the same observer UID in every report


def build_sr(
    sources: Sequence[Dataset],
    seg: Dataset,
    lesions: Sequence[Lesion3D],
    *,
    series_number: int = 991,
) -> hd.sr.Comprehensive3DSR:
    """The measurement report of ``lesions`` (ids = the SEG's ``lesion <id>`` segments).

    Args:
        sources: the images the SEG was made of (one multi-frame object or one series).
        seg: the SEG with one segment per lesion, tracked as ``lesion <id>``.
        lesions: the 3-D lesions, mm values None where unknown (left out of the report).
        series_number: Series Number of the new SR series.
    """
    segment_of = {str(s.get("TrackingID", "")): s for s in seg.SegmentSequence if "TrackingID" in s}
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__)
    groups: list[hd.sr.templates.Template] = []
    for lesion in lesions:
        segment = segment_of.get(f"lesion {lesion.id}")
        if segment is None:
            raise ValueError(f"the SEG has no segment tracked as 'lesion {lesion.id}'")
        tracking = hd.sr.TrackingIdentifier(
            uid=str(segment.TrackingUID), identifier=str(segment.TrackingID)
        )
        volume = []
        if lesion.volume_mm3 is not None:
            mm3 = codes.UCUM.CubicMillimeter
            volume.append(_measurement(codes.SCT.Volume, lesion.volume_mm3, mm3, algorithm))
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=_referenced_segment(seg, segment, lesion, sources),
                finding_type=codes.SCT.Lesion,
                algorithm_id=algorithm,
                measurements=volume,
            )
        )
        if lesion.long_axis_mm is not None and lesion.short_axis_mm is not None:
            groups.extend(_recist_groups(lesion, sources, tracking, algorithm))
    if not groups:
        groups.append(_no_lesion_group(algorithm))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name=ALGORITHM_NAME, manufacturer_name="lesionseg"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(
            str(sources[0].get("Modality", "")).strip(), codes.SCT.DiagnosticImaging
        ),
        imaging_measurements=groups,
    )
    try:
        with no_name_warnings():
            return hd.sr.Comprehensive3DSR(
                evidence=[*sources, seg],
                content=report,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="lesionseg",
                series_description=SERIES_DESCRIPTION,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"cannot make a DICOM SR for this input: {exc}") from exc


def _measurement(
    name: Code, value: float, unit: Code, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=name, value=round(float(value), 3), unit=unit, algorithm_id=algorithm
    )


def _recist_groups(
    lesion: Lesion3D,
    sources: Sequence[Dataset],
    tracking: hd.sr.TrackingIdentifier,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The lesion's RECIST axes on the source image of ``lesion.long_axis_frame``: one TID 1410
    group per axis, its region the axis as a two-point POLYLINE ((2, 2) [[column, row],
    [column, row]] image coordinates), its measurement the axis' length in mm (TID 1410 allows
    no coordinates of its own to a measurement: the group's region is what it measures)."""
    frame = lesion.long_axis_frame
    if len(sources) == 1:  # one multi-frame object: its frame, numbered from 1
        image, frames = sources[0], [frame + 1]
    else:
        image, frames = sources[frame], None
    source = hd.sr.SourceImageForRegion(str(image.SOPClassUID), str(image.SOPInstanceUID), frames)
    axes = [
        (codes.SCT.LongAxis, lesion.long_axis_mm, lesion.long_axis_points),
        (codes.SCT.ShortAxis, lesion.short_axis_mm, lesion.short_axis_points),
    ]
    return [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.asarray(points, np.float64).reshape(2, 2),
                source_image=source,
            ),
            finding_type=codes.SCT.Lesion,
            algorithm_id=algorithm,
            measurements=[_measurement(name, value, codes.UCUM.Millimeter, algorithm)],
        )
        for name, value, points in axes
    ]


def _no_lesion_group(
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The report of a study in which no lesion was found: one TID 1501 group with the
    qualitative evaluation "Lesion: Absent" (TID 1500 needs at least one measurement group,
    and "none found" is a result, not an error)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="no lesion found"),
        algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.SCT.Lesion, value=codes.SCT.Absent)
        ],
    )


def _referenced_segment(
    seg: Dataset, segment: Dataset, lesion: Lesion3D, sources: Sequence[Dataset]
) -> hd.sr.ReferencedSegment:
    """The segment with the source images of its frames. Read here rather than with
    highdicom's ``ReferencedSegment.from_segmentation``, which misses the segment number of a
    one-segment SEG (in the shared functional groups); an empty segment (a box in which SAM
    found nothing) has no frames, so its source series stands in."""
    number = int(segment.SegmentNumber)
    shared = seg.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    images: dict[str, str] = {}
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []) if lesion.voxels else []:
        ident = frame.get("SegmentIdentificationSequence") or shared
        if int(ident[0].ReferencedSegmentNumber) != number:
            continue
        for derivation in frame.get("DerivationImageSequence", []):
            for item in derivation.get("SourceImageSequence", []):
                images[str(item.ReferencedSOPInstanceUID)] = str(item.ReferencedSOPClassUID)
    common = dict(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number,
    )
    if not images:
        series = hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID))
        return hd.sr.ReferencedSegment(**common, source_series=series)
    return hd.sr.ReferencedSegment(
        **common,
        source_images=[
            hd.sr.SourceImageForSegmentation(sop_class, uid) for uid, sop_class in images.items()
        ],
    )
