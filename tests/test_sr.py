"""DICOM SEG with one segment per 3-D lesion and the TID 1500 SR, on a synthetic CT series with
an ellipsoid of known axes (no models): written, read back with highdicom, values checked."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from lesionseg import __version__
from lesionseg.io.dicom import volume_geometry
from lesionseg.measure.lesions3d import Lesion3D, link_lesions, measure_lesions
from lesionseg.outputs.dicom_seg import build_seg, seg_to_bytes
from lesionseg.outputs.dicom_sr import RECIST_TRACKING_IDENTIFIER, _recist_group, build_sr
from lesionseg.types import Lesion, SegmentationResult

SLICE_MM = 3.0
SEMI_AXES = (20.0, 12.0, 9.0)  # mm: x, y, z


def ct_series(n: int) -> list[pydicom.Dataset]:
    """CT_small.dcm (128 x 128, 0.661468 mm pixels) as an n-file series, 3 mm apart, files
    in reverse order of position."""
    series, files = pydicom.uid.generate_uid(), []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [-40.0, -40.0, 50.0 - SLICE_MM * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        files.append(ds)
    return files


def masks_per_frame(files) -> tuple[list[SegmentationResult], int]:
    """An ellipsoid centred at (x, y, z) = (2, 4, 35) mm, plus a small cube on two frames."""
    spacing = float(files[0].PixelSpacing[0])
    yy, xx = np.mgrid[:128, :128]
    results, voxels = [], 0
    for ds in files:
        x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
        x, y = x0 + xx * spacing - 2.0, y0 + yy * spacing - 4.0
        inside = (x / SEMI_AXES[0]) ** 2 + (y / SEMI_AXES[1]) ** 2 + ((z - 35) / SEMI_AXES[2]) ** 2
        masks = [inside <= 1] if (inside <= 1).any() else []
        voxels += int((inside <= 1).sum())
        if z in (50.0, 47.0):
            cube = np.zeros((128, 128), bool)
            cube[2:6, 2:8] = True
            masks.append(cube)
        lesions = tuple(
            Lesion((0, 0, 1, 1), "lesion", 1.0, 0.9, m, int(m.sum()), m.sum() * spacing**2)
            for m in masks
        )
        results.append(SegmentationResult(128, 128, lesions, (spacing, spacing)))
    return results, voxels


@pytest.fixture(scope="module")
def report():
    files = ct_series(9)  # z = 50 ... 26: the ellipsoid spans 26-44
    results, voxels = masks_per_frame(files)
    geometry = volume_geometry(files)
    ids = link_lesions(results, geometry)
    lesions = measure_lesions(results, ids, geometry)
    seg = hd.seg.segread(io.BytesIO(seg_to_bytes(build_seg(files, results, lesion_ids=ids))))
    sr = build_sr(files, seg, lesions)
    sr_back = hd.sr.srread(io.BytesIO(seg_to_bytes(sr)))
    return files, seg, sr_back, lesions, voxels


def test_one_seg_segment_per_3d_lesion(report):
    files, seg, _, lesions, voxels = report
    assert [x.frames for x in lesions] == [(0, 1), (3, 4, 5, 6, 7)]  # cube first (z = 50)
    spacing = float(files[0].PixelSpacing[0])
    for lesion, segment in zip(lesions, seg.SegmentSequence, strict=True):
        assert segment.TrackingID == f"lesion {lesion.id}" and segment.SegmentLabel == "lesion"
        pixels = seg.get_pixels_by_source_instance(
            [f.SOPInstanceUID for f in files], segment_numbers=[segment.SegmentNumber]
        )
        assert pixels.sum() == lesion.voxels
        assert lesion.volume_mm3 == pytest.approx(lesion.voxels * spacing**2 * SLICE_MM)
    ellipsoid = lesions[1]
    assert ellipsoid.voxels == voxels
    truth = 4 / 3 * np.pi * np.prod(SEMI_AXES)
    assert ellipsoid.volume_mm3 == pytest.approx(truth, rel=0.04)  # 3 mm slices, 18 mm tall
    pixel = np.sqrt(2) * spacing
    assert abs(ellipsoid.long_axis_mm - 2 * SEMI_AXES[0]) <= pixel
    assert abs(ellipsoid.short_axis_mm - 2 * SEMI_AXES[1]) <= pixel
    assert files[ellipsoid.long_axis_frame].ImagePositionPatient[2] == 35.0
    np.testing.assert_allclose(ellipsoid.centroid_mm, [2.0, 4.0, 35.0], atol=spacing / 2)


def test_sr_references_the_seg_and_sources_and_carries_the_values(report):
    files, seg, sr, lesions, _ = report
    assert sr.SOPClassUID == hd.sr.Comprehensive3DSR.from_dataset(sr).SOPClassUID
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == files[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in {seg.SeriesInstanceUID, files[0].SeriesInstanceUID}
    assert "not for clinical use" in sr.SeriesDescription
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {seg.SOPInstanceUID} | {f.SOPInstanceUID for f in files}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(lesions)
    tracking = {s.TrackingID: s.TrackingUID for s in seg.SegmentSequence}
    for group, lesion in zip(groups, lesions, strict=True):
        assert group.tracking_identifier == f"lesion {lesion.id}"
        assert group.tracking_uid == tracking[f"lesion {lesion.id}"]
        referenced = group.referenced_segment
        assert referenced.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert referenced.referenced_segment_numbers == [lesion.id]
        assert group.finding_type == codes.SCT.Lesion
        items = group[0].ContentSequence
        texts = {x.ConceptNameCodeSequence[0].CodeMeaning: x.get("TextValue") for x in items}
        assert (texts["Algorithm Name"], texts["Algorithm Version"]) == ("lesionseg", __version__)
        (volume,) = group.get_measurements()  # the group names the algorithm: no content
        assert (volume.name.meaning, volume.unit.value) == ("Volume", "mm3")  # of its own (OHIF)
        assert volume.value == pytest.approx(lesion.volume_mm3, abs=1e-3)
        assert "ContentSequence" not in volume[0]


def test_each_lesions_recist_axes_are_one_bidirectional_group_on_the_measured_image(report):
    """One TID 1501 group per lesion, with its segment's tracking UID, tracked as Cornerstone's
    Bidirectional tool (what OHIF needs to list it in its Measurements panel) and named in a
    Comment: Long Axis and Short Axis in mm, each inferred from a two-point POLYLINE, the axis'
    end points in (column, row) image coordinates on the source slice of ``long_axis_frame``,
    as the lesion (the JSON's ``lesions_3d``) has them."""
    files, seg, sr, lesions, _ = report
    groups = sr.content.get_image_measurement_groups()
    assert sr.content.get_planar_roi_measurement_groups() == []
    assert len(groups) == len(lesions)
    tracking = {s.TrackingID: s.TrackingUID for s in seg.SegmentSequence}
    spacing = np.array([float(v) for v in files[0].PixelSpacing])
    for group, lesion in zip(groups, lesions, strict=True):
        image = files[lesion.long_axis_frame]
        assert group.tracking_identifier == RECIST_TRACKING_IDENTIFIER
        assert group.tracking_uid == tracking[f"lesion {lesion.id}"]
        assert group.finding_type == codes.SCT.Lesion
        (comment,) = group[0].ContentSequence.find(codes.DCM.Comment)
        assert comment.value == f"lesion {lesion.id}"
        long, short = group.get_measurements()
        for measurement, code, meaning, mm, points in (
            (long, codes.SCT.LongAxis, "Long Axis", lesion.long_axis_mm, lesion.long_axis_points),
            (short, codes.SCT.ShortAxis, "Short Axis", lesion.short_axis_mm,
             lesion.short_axis_points),
        ):  # fmt: skip
            # OHIF's Bidirectional adapter finds the axes by this exact CodeMeaning.
            assert measurement.name == code and measurement.name.meaning == meaning
            assert measurement.unit.value == "mm"
            assert measurement.value == pytest.approx(mm, abs=1e-3)
            (region,) = measurement.referenced_coordinates
            assert region.RelationshipType == "INFERRED FROM"
            assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
            (source,) = region.ContentSequence
            assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
            assert source.ReferencedSOPSequence[0].ReferencedSOPClassUID == image.SOPClassUID
            ends = region.value  # (2, 2) [[column, row], [column, row]]
            np.testing.assert_allclose(ends, points, atol=1e-4)
            length = np.linalg.norm((ends[1] - ends[0]) * spacing[::-1])  # columns x, rows y
            assert length == pytest.approx(mm, abs=1e-3)
    # The ellipsoid's long axis crosses its centre (x, y) = (2, 4) mm on the slice z = 35:
    # an edge coordinate e is the position (first pixel's centre) + (e - 0.5) pixels.
    ellipsoid = lesions[1]
    x0, y0, _ = (float(v) for v in files[ellipsoid.long_axis_frame].ImagePositionPatient)
    centre = (np.array([2.0 - x0, 4.0 - y0]) / spacing[::-1]) + 0.5
    assert np.linalg.norm(ellipsoid.long_axis_points.mean(axis=0) - centre) < 1.5


def test_a_lesions_first_group_is_its_recist_group(report):
    """OHIF merges the groups of one tracking UID and offers to load them as its own
    measurements only when the first one names a Cornerstone tool: each lesion's RECIST group
    comes just before its volumetric group."""
    _, seg, sr, lesions, _ = report
    (measurements,) = [
        x for x in sr.ContentSequence if x.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]  # Imaging Measurements, in the order the groups are stored
    tracked = []
    for group in measurements.ContentSequence:
        items = {x.ConceptNameCodeSequence[0].CodeMeaning: x for x in group.ContentSequence}
        tracked.append(
            (items["Tracking Identifier"].TextValue, items["Tracking Unique Identifier"].UID)
        )
    expected = []
    for segment in seg.SegmentSequence:
        expected += [(RECIST_TRACKING_IDENTIFIER, segment.TrackingUID)]
        expected += [(segment.TrackingID, segment.TrackingUID)]
    assert tracked == expected and len(expected) == 2 * len(lesions)


def test_the_axes_of_a_multi_frame_source_reference_their_frame():
    """Of one multi-frame object, the axes' image is that object and their frame's number."""
    source = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # 10 frames
    points = np.array([[1.0, 2.0], [30.5, 2.0]])
    lesion = Lesion3D(1, "lesion", (3, 4), 50, 10.0, 29.5, 8.0, 4, points, points[::-1], None)
    algorithm = hd.sr.AlgorithmIdentification(name="lesionseg", version=__version__)
    group = _recist_group(lesion, [source], hd.UID(), algorithm)
    for measurement in group.get_measurements():
        (region,) = measurement.referenced_coordinates
        (image,) = region.ContentSequence[0].ReferencedSOPSequence
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert image.ReferencedFrameNumber == 5  # frame 4, counted from 1


def test_a_lesion_sam_found_nothing_for_is_reported_empty():
    files = ct_series(2)
    results, _ = masks_per_frame(files)  # the cube on both frames (z = 50, 47)
    empty = Lesion((0, 0, 1, 1), "lesion", 1.0, 0.2, np.zeros((128, 128), bool), 0, 0.0)
    results[1] = SegmentationResult(
        128, 128, (*results[1].lesions, empty), results[1].pixel_spacing_mm
    )
    geometry = volume_geometry(files)
    ids = link_lesions(results, geometry)
    assert ids == [[1], [1, 2]]
    lesions = measure_lesions(results, ids, geometry)
    assert lesions[1].voxels == 0 and lesions[1].volume_mm3 == 0
    seg = build_seg(files, results, lesion_ids=ids)
    sr = hd.sr.srread(io.BytesIO(seg_to_bytes(build_sr(files, seg, lesions))))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.referenced_segment.referenced_segment_numbers for g in groups] == [[1], [2]]
    assert lesions[1].long_axis_mm is None  # no axes: no RECIST group, the volume only
    (recist,) = sr.content.get_image_measurement_groups()
    assert recist.tracking_uid == groups[0].tracking_uid


def test_a_study_without_lesions_gets_a_report_saying_so():
    """No lesion found is a result: the SR says "Lesion: Absent" (no measurement group could
    be made, and highdicom refuses a TID 1500 without one: that was a 500 before)."""
    files = ct_series(2)
    empty = [SegmentationResult(128, 128, (), (0.661468, 0.661468)) for _ in files]
    geometry = volume_geometry(files)
    ids = link_lesions(empty, geometry)
    assert measure_lesions(empty, ids, geometry) == []
    seg = build_seg(files, empty, lesion_ids=ids, labels=["lesion"])
    sr = hd.sr.srread(io.BytesIO(seg_to_bytes(build_sr(files, seg, []))))
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == codes.SCT.Lesion and evaluation.value == codes.SCT.Absent


def test_a_job_with_an_sr_pushes_it_with_its_seg_to_a_real_orthanc(report, orthanc, tmp_path):
    from lesionseg.pacs.dicomweb import StowClient, push_due
    from lesionseg.pacs.job_store import JobStore
    from lesionseg.settings import Settings

    files, seg, sr, lesions, _ = report
    store = JobStore(tmp_path / "jobs")
    job = store.submit([io.BytesIO(seg_to_bytes(f)) for f in files], push=True,
                       options={"sr": True})  # fmt: skip
    assert store.options(job.id) == {"sr": True}
    store.claim_next()
    store.complete(job.id, seg_to_bytes(seg), {}, sr=seg_to_bytes(sr))
    (pushed,) = push_due(store, StowClient(orthanc.dicomweb_url), Settings())
    assert pushed.push_state == "pushed", pushed.push_error
    assert {seg.SOPInstanceUID, sr.SOPInstanceUID} <= set(orthanc.sop_instance_uids())
    stored = hd.sr.Comprehensive3DSR.from_dataset(orthanc.instance_file(sr.SOPInstanceUID))
    groups = stored.content.get_volumetric_roi_measurement_groups()
    volumes = [{m.name.meaning: m.value for m in g.get_measurements()}["Volume"] for g in groups]
    assert volumes == pytest.approx([x.volume_mm3 for x in lesions], abs=1e-3)


def test_a_one_segment_seg_is_referenced_with_its_source_images():
    files = ct_series(2)  # the cube only: one lesion, one segment (shared functional groups)
    results, _ = masks_per_frame(files)
    geometry = volume_geometry(files)
    ids = link_lesions(results, geometry)
    seg = build_seg(files, results, lesion_ids=ids)
    sr = hd.sr.srread(
        io.BytesIO(seg_to_bytes(build_sr(files, seg, measure_lesions(results, ids, geometry))))
    )
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    item = group[0].ContentSequence[-1]  # Source Image for Segmentation items follow
    referenced = {
        x.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for x in group[0].ContentSequence
        if x.ConceptNameCodeSequence[0].CodeMeaning == "Source Image for Segmentation"
    }
    assert item.ValueType == "IMAGE" and referenced == {f.SOPInstanceUID for f in files}
