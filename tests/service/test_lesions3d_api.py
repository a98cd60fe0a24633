"""3-D lesions through the service in-process: lesions_3d on a synthetic NIfTI ellipsoid,
/segment/propagate on a LiTS lesion, /segment/dicom-sr read back with highdicom."""

from __future__ import annotations

import gzip
import io
import time
import zipfile

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from lesionseg.io.masks import decode_rle
from lesionseg.measure.evaluation import dice
from lesionseg.transforms import mask_to_box

from .dicom_inputs import lits_ct, lits_nifti
from .test_dicom_api import post

pytestmark = pytest.mark.slow

ZOOMS = (0.7, 0.9, 2.5)  # mm
SEMI_AXES = (14.0, 9.0, 7.5)  # mm along x, y, z: the ellipsoid spans 7 slices


def ellipsoid_nifti() -> tuple[bytes, np.ndarray]:
    shape = (64, 48, 9)
    idx = np.indices(shape).astype(np.float64)
    centre = (31.0, 23.0, 4.0)
    mm = [(idx[i] - centre[i]) * ZOOMS[i] for i in range(3)]
    inside = sum((mm[i] / SEMI_AXES[i]) ** 2 for i in range(3)) <= 1
    image = nib.Nifti1Image(np.where(inside, 80.0, -60.0).astype(np.float32), np.diag([*ZOOMS, 1]))
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes()), inside


def test_lesions_3d_of_a_synthetic_ellipsoid_match_its_axes(client):
    data, inside = ellipsoid_nifti()
    boxes = [
        [*mask_to_box(inside[:, :, k].T).tolist(), k] for k in range(9) if inside[..., k].any()
    ]
    response = post(client, "/segment/boxes", data, boxes=boxes, window="0,400")
    assert response.status_code == 200, response.text
    body = response.json()
    (lesion,) = body["lesions_3d"]  # one box per slice, linked into one lesion
    assert lesion["frames"] == [b[4] for b in boxes]
    for frame in body["frames"]:
        assert [x["lesion_id"] for x in frame["lesions"]] == [1] * len(frame["lesions"])
    # The JSON is self-consistent: the volume is the frames' areas x the slice distance ...
    areas = sum(x["area_mm2"] for f in body["frames"] for x in f["lesions"])
    assert lesion["volume_mm3"] == pytest.approx(areas * ZOOMS[2], rel=1e-4)
    # ... and SAM's masks match the synthetic ground truth within a voxel's worth per axis.
    truth = inside.sum() * np.prod(ZOOMS)
    assert lesion["volume_mm3"] == pytest.approx(truth, rel=0.1)
    pixel = np.hypot(ZOOMS[0], ZOOMS[1])
    assert abs(lesion["long_axis_mm"] - 2 * SEMI_AXES[0]) <= 2 * pixel
    assert abs(lesion["short_axis_mm"] - 2 * SEMI_AXES[1]) <= 2 * pixel
    assert lesion["long_axis_frame"] == 4
    np.testing.assert_allclose(lesion["centroid_mm"], [-31 * ZOOMS[0], -23 * ZOOMS[1], 10.0],
                               atol=1.0)  # fmt: skip


def test_propagation_follows_a_lits_lesion(client, lits):
    first, count = 100, 12  # LiTS slices 100-111: the tumour at 100 (its largest) runs to 110
    labels, _ = ndimage.label(lits.labels[first : first + count] == 2, np.ones((3, 3, 3)))
    truth = labels == labels[0][lits.slice(first).instances == 1][0]  # (Z, H, W)
    seed = [*mask_to_box(truth[0]).tolist(), 0]
    response = post(client, "/segment/propagate", lits_nifti(lits, first, count),
                    boxes=[seed], window="abdomen")  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    (lesion,) = body["lesions_3d"]
    predicted = np.zeros_like(truth)
    for frame in body["frames"]:
        for x in frame["lesions"]:
            assert x["lesion_id"] == 1
            predicted[frame["frame"]] |= decode_rle(x["mask"])
    assert lesion["frames"] == sorted({f["frame"] for f in body["frames"] if f["lesions"]})
    assert lesion["frames"][0] == 0 and len(lesion["frames"]) >= 5  # it went through slices
    assert set(lesion["frames"]) <= set(np.flatnonzero(truth.any(axis=(1, 2))))  # and stopped
    assert dice(predicted, truth) >= 0.5
    bad = post(client, "/segment/propagate", lits_nifti(lits, first, 2), boxes=[[1, 1, 9, 9]])
    assert bad.status_code == 400 and "fifth value" in bad.json()["error"]


def test_dicom_sr_measures_each_3d_lesion_of_its_seg(client, lits):
    indices = [109, 110, 111]
    files = lits_ct(lits, indices)  # 0.661468 mm pixels, 2.5 mm apart
    boxes = [[*b, n] for n, i in enumerate(indices) for b in lits.slice(i).boxes.tolist()]
    response = post(client, "/segment/dicom-sr", files, boxes=boxes, window="abdomen")
    assert response.status_code == 200, response.text
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    seg = hd.seg.segread(io.BytesIO(archive.read("seg.dcm")))
    sr = hd.sr.srread(io.BytesIO(archive.read("sr.dcm")))
    assert response.headers["x-sop-instance-uid"] == sr.SOPInstanceUID
    assert "not for clinical use" in sr.SeriesDescription
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(seg.SegmentSequence) >= 2
    sources = [pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files]
    for group in groups:
        number = group.referenced_segment.referenced_segment_numbers[0]
        segment = seg.get_segment_description(number)
        assert group.tracking_uid == segment.tracking_uid
        voxels = seg.get_pixels_by_source_instance(sources, segment_numbers=[number]).sum()
        volume = {m.name.meaning: m.value for m in group.get_measurements()}["Volume"]
        assert volume == pytest.approx(voxels * 0.661468**2 * 2.5, rel=1e-3)


def test_a_job_propagates_and_writes_an_sr(client, lits):
    indices = [109, 110, 111]
    files = lits_ct(lits, indices)
    seed = [*lits.slice(110).boxes[0].tolist(), 1]
    parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    fields = {"boxes": str([seed]), "propagate": "true", "sr": "true", "push": "false"}
    accepted = client.post("/jobs", files=parts, data=fields)
    assert accepted.status_code == 202, accepted.text
    location = accepted.json()["location"]
    deadline = time.monotonic() + 120
    while (status := client.get(location).json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["state"] == "done", status
    summary = status["summary"]
    (lesion,) = summary["lesions_3d"]
    assert 1 in lesion["frames"] and lesion["volume_mm3"] > 0
    assert [s["tracking_id"] for s in summary["seg"]["segments"]] == ["lesion 1"]
    sr = hd.sr.srread(io.BytesIO(client.get(status["sr"]).content))
    assert sr.SOPInstanceUID == summary["sr"]["sop_instance_uid"]
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    recist = sr.content.get_image_measurement_groups()  # the RECIST axes: one group
    measured = {m.name.meaning: m.value for g in [group, *recist] for m in g.get_measurements()}
    assert measured["Volume"] == pytest.approx(lesion["volume_mm3"], abs=0.01)
    assert measured["Long Axis"] == pytest.approx(lesion["long_axis_mm"], abs=0.01)
    assert measured["Short Axis"] == pytest.approx(lesion["short_axis_mm"], abs=0.01)
    bad = client.post("/jobs", files=parts, data={"propagate": "true"})
    assert bad.status_code == 400 and "needs boxes" in bad.json()["error"]
