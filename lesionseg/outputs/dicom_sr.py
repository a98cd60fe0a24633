"""3-D lesions -> a DICOM Comprehensive 3D SR measurement report (TID 1500), with highdicom.

Per 3-D lesion, two measurement groups with the Tracking Unique Identifier of its segment of the
SEG (:func:`lesionseg.outputs.dicom_seg.build_seg` with ``lesion_ids``), so that viewers show
them and the segment as one finding:

- when its RECIST axes are known in mm (:mod:`lesionseg.measure.recist`), a Measurement Group
  (TID 1501): Long Axis and Short Axis (mm), each a TID 300 measurement INFERRED FROM its axis,
  a two-point SCOORD POLYLINE (TID 320) on the source image where they were measured; Finding
  Lesion; the lesion's name ``lesion <id>`` as a Comment (DCM 121106; TID 1501's qualitative
  evaluation in text);
- a Volumetric ROI group (TID 1411), tracked as the segment (``lesion <id>``) and referencing
  it: Volume (mm3), when known.

The RECIST group comes first and is tracked as ``Cornerstone3DTools@^0.1.0:Bidirectional``,
Cornerstone's tool of a long and a short axis, so that OHIF Viewer 3 (3.13) lists it in its
Measurements panel. OHIF re-creates an SR's groups as its own measurements only where
@cornerstonejs/adapters finds a tool for the group's tracking identifier
(``MeasurementReport.getAdapterForTrackingIdentifier``), and offers to at all only when the
first group of some tracking UID names one (``isRehydratable`` and ``_getMeasurements`` in
extensions/cornerstone-dicom-sr/src); its Bidirectional adapter reads the NUMs whose
CodeMeaning is exactly "Long Axis" and "Short Axis" (CID 7470's; pydicom's are "Long axis"),
each with its SCOORD inside, and labels the measurement with the Comment. The cost: that
group's Tracking Identifier names a tool, not the lesion. A reader loses nothing that follows
the lesion by its tracking UID (shared with the volumetric group and the SEG segment), as
TID 4108 means it to, and the name is in the Comment. The volume measures a SEG segment, which
no Cornerstone tool draws, so OHIF shows it in its SR viewport, not in the panel.

SCOORD Graphic Data are (column, row) image coordinates with 0.0\\0.0 at the top left corner of
the top left pixel (DICOM PS3.3 C.18.6.1.2): the RECIST end points' own coordinates.

The algorithm (name "lesionseg", the package version) is named in every group, once for all its
measurements (OHIF's SR viewport leaves out a NUM with content items but no SCOORD), the
observer is the lesionseg device, and the SeriesDescription says "not for clinical use". The
evidence lists the source images and the SEG; the report lives in the source study with new
Series and SOP Instance UIDs.
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
# Cornerstone's tool of a long and a short axis, as OHIF's SR reader looks it up (module docstring).
RECIST_TRACKING_IDENTIFIER = "Cornerstone3DTools@^0.1.0:Bidirectional"
LONG_AXIS = Code("103339001", "SCT", "Long Axis")  # CID 7470's meanings, which OHIF matches
SHORT_AXIS = Code("103340004", "SCT", "Short Axis")


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
        uid = str(segment.TrackingUID)
        if lesion.long_axis_mm is not None and lesion.short_axis_mm is not None:
            # First of its UID: OHIF decides by that group's tracking identifier.
            groups.append(_recist_group(lesion, sources, uid, algorithm))
        volume = []
        if lesion.volume_mm3 is not None:
            mm3 = codes.UCUM.CubicMillimeter
            volume.append(_measurement(codes.SCT.Volume, lesion.volume_mm3, mm3))
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid, str(segment.TrackingID)),
                referenced_segment=_referenced_segment(seg, segment, lesion, sources),
                finding_type=codes.SCT.Lesion,
                algorithm_id=algorithm,
                measurements=volume,
            )
        )
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
    name: Code, value: float, unit: Code, coordinates: hd.sr.CoordinatesForMeasurement | None = None
) -> hd.sr.Measurement:
    """A TID 300 NUM, ``value`` rounded to 3 decimals, inferred from ``coordinates`` if given."""
    return hd.sr.Measurement(
        name=name,
        value=round(float(value), 3),
        unit=unit,
        referenced_coordinates=None if coordinates is None else [coordinates],
    )


def _recist_group(
    lesion: Lesion3D,
    sources: Sequence[Dataset],
    tracking_uid: str,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The lesion's RECIST axes on the source image of ``lesion.long_axis_frame``: one TID 1501
    group, tracked as Cornerstone's Bidirectional tool with the lesion's ``tracking_uid``, whose
    Long Axis and Short Axis (mm) are each inferred from a two-point POLYLINE ((2, 2)
    [[column, row], [column, row]] image coordinates), and a Comment ``lesion <id>``."""
    frame = lesion.long_axis_frame
    if len(sources) == 1:  # one multi-frame object: its frame, numbered from 1
        image, frames = sources[0], [frame + 1]
    else:
        image, frames = sources[frame], None
    source = hd.sr.SourceImageForRegion(str(image.SOPClassUID), str(image.SOPInstanceUID), frames)
    axes = [
        (LONG_AXIS, lesion.long_axis_mm, lesion.long_axis_points),
        (SHORT_AXIS, lesion.short_axis_mm, lesion.short_axis_points),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(tracking_uid, RECIST_TRACKING_IDENTIFIER),
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        measurements=[
            _measurement(
                name,
                value,
                codes.UCUM.Millimeter,
                hd.sr.CoordinatesForMeasurement(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=np.asarray(points, np.float64).reshape(2, 2),
                    source_image=source,
                ),
            )
            for name, value, points in axes
        ],
    )
    # TID 1501's text evaluation (row 12), which highdicom's class does not take: OHIF's label.
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=f"lesion {lesion.id}",
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


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
