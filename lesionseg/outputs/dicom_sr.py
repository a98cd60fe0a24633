"""3-D lesions -> a DICOM Comprehensive 3D SR measurement report (TID 1500), with highdicom.

One Volumetric ROI measurement group (TID 1411) per 3-D lesion, each referencing its segment
of the SEG (:func:`lesionseg.outputs.dicom_seg.build_seg` with ``lesion_ids``) and carrying that
segment's
tracking identifier and UID; measurements: Volume (mm3), Long axis and Short axis (mm, RECIST,
:mod:`lesionseg.measure.recist`), each only when known. The algorithm (name "lesionseg", the
package version) is named in every group and measurement, the observer is the lesionseg
device, and the SeriesDescription says "not for clinical use". The evidence lists the source
images and the SEG; the report lives in the source study with new Series and SOP Instance UIDs.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
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
    groups = []
    for lesion in lesions:
        segment = segment_of.get(f"lesion {lesion.id}")
        if segment is None:
            raise ValueError(f"the SEG has no segment tracked as 'lesion {lesion.id}'")
        values = [
            (codes.SCT.Volume, lesion.volume_mm3, codes.UCUM.CubicMillimeter),
            (codes.SCT.LongAxis, lesion.long_axis_mm, codes.UCUM.Millimeter),
            (codes.SCT.ShortAxis, lesion.short_axis_mm, codes.UCUM.Millimeter),
        ]
        tracking = hd.sr.TrackingIdentifier(
            uid=str(segment.TrackingUID), identifier=str(segment.TrackingID)
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=_referenced_segment(seg, segment, lesion, sources),
                finding_type=codes.SCT.Lesion,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=name, value=round(float(value), 3), unit=unit, algorithm_id=algorithm
                    )
                    for name, value, unit in values
                    if value is not None
                ],
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
