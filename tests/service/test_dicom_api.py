"""DICOM and NIfTI through the service in-process: /segment, /segment/boxes, SEG, NIfTI mask."""

from __future__ import annotations

import gzip
import io

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from lesionseg.io.masks import decode_rle

from .conftest import png_bytes
from .dicom_inputs import dicom_file, lits_ct, lits_nifti, mammogram

pytestmark = pytest.mark.slow

REAL = {  # name -> (bytes, (width, height), expected spacing, expected source)
    "CT": (lambda: dicom_file("CT_small.dcm"), (128, 128), 0.661468, "pixel_spacing"),
    "MR": (lambda: dicom_file("MR_small.dcm"), (64, 64), 0.3125, "pixel_spacing"),
    "US-RGB": (lambda: dicom_file("US1_UNCR.dcm"), (640, 480), None, None),
    "CR-MONOCHROME1": (lambda: dicom_file("RG1_UNCR.dcm"), (1841, 1955), None, None),
    "MR-JPEG2000": (
        lambda: dicom_file("MR_small_jp2klossless.dcm"),
        (64, 64),
        0.3125,
        "pixel_spacing",
    ),
    "US-PALETTE": (lambda: dicom_file("OBXXXX1A.dcm"), (800, 600), None, None),
    "MG-mammogram-RLE": (mammogram, (2592, 4688), None, None),
}


def post(client, route, files, **fields):
    files = files if isinstance(files, list) else [files]
    parts = [
        ("image", (f"upload{i}.dcm", data, "application/octet-stream"))
        for i, data in enumerate(files)
    ]
    return client.post(route, files=parts, data={k: str(v) for k, v in fields.items()})


def check_areas(body, spacing, source):
    assert body["pixel_spacing_mm"] == (None if spacing is None else [spacing, spacing])
    assert body.get("pixel_spacing_source") == source
    for lesion in body["lesions"]:
        mask = decode_rle(lesion["mask"])
        assert mask.shape == (body["height"], body["width"])
        assert int(mask.sum()) == lesion["area_px"]
        if spacing is None:
            assert lesion["area_mm2"] is None
        else:
            assert lesion["area_mm2"] == pytest.approx(lesion["area_px"] * spacing**2, abs=1e-3)


@pytest.mark.parametrize("name", list(REAL))
def test_real_dicom_segments_with_spacing_derived_areas(client, name):
    data, (width, height), spacing, source = REAL[name]
    data = data()
    automatic = post(client, "/segment", data)
    assert automatic.status_code == 200, automatic.text
    body = automatic.json()
    assert (body["width"], body["height"]) == (width, height)
    assert body["source"]["format"] == "DICOM" and body["source"]["frame_number"] == 1
    check_areas(body, spacing, source)
    # a box prompt gives a lesion for sure, so the area check below is never vacuous
    box = [width // 4, height // 4, width // 2, height // 2]
    prompted = post(client, "/segment/boxes", data, boxes=[box])
    assert prompted.status_code == 200, prompted.text
    (lesion,) = prompted.json()["lesions"]
    assert lesion["area_px"] > 0
    check_areas(prompted.json(), spacing, source)


def test_png_response_has_no_dicom_keys(client):
    body = post(client, "/segment", png_bytes(np.full((32, 48), 90, np.uint8))).json()
    assert "pixel_spacing_source" not in body and "source" not in body


def test_multi_frame_gives_one_result_per_frame(client):
    data = dicom_file("emri_small.dcm")  # 10 frames, 64 x 64
    body = post(client, "/segment", data).json()
    assert body["number_of_frames"] == 10 and [f["frame"] for f in body["frames"]] == list(
        range(10)
    )
    assert all((f["width"], f["height"]) == (64, 64) for f in body["frames"])
    assert body["frames"][4]["source"]["frame_number"] == 5 and "sam" in body["models"]
    boxes = post(client, "/segment/boxes", data, boxes=[[10, 10, 40, 40, 3], [5, 5, 30, 30, 7]])
    frames = boxes.json()["frames"]
    assert [len(f["lesions"]) for f in frames] == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    missing_frame = post(client, "/segment/boxes", data, boxes=[[10, 10, 40, 40]])
    assert missing_frame.status_code == 400 and "fifth value" in missing_frame.text
    overlay = post(client, "/segment/overlay", data)
    assert overlay.status_code == 400 and "10 frames" in overlay.text


def test_window_field(client):
    ct = dicom_file("CT_small.dcm")
    body = post(client, "/segment", ct, window="abdomen").json()
    assert body["source"]["window"] == [40.0, 400.0]
    assert post(client, "/segment", ct, window="-600,1500").json()["source"]["window"] == [
        -600,
        1500,
    ]
    bad = post(client, "/segment", ct, window="kidney")
    assert bad.status_code == 400 and "abdomen" in bad.json()["error"]
    png = post(client, "/segment", png_bytes(np.zeros((16, 16), np.uint8)), window="abdomen")
    assert png.status_code == 400 and "DICOM and NIfTI" in png.json()["error"]


def seg_masks(content: bytes, source_uid: str) -> tuple[pydicom.Dataset, dict[str, np.ndarray]]:
    """Parse with pydicom and highdicom; label -> (H, W) bool union of that label's segments
    (one per 3-D lesion) on ``source_uid``."""
    dataset = pydicom.dcmread(io.BytesIO(content))
    seg = hd.seg.Segmentation.from_dataset(dataset)
    assert hd.seg.segread(io.BytesIO(content)).SOPInstanceUID == dataset.SOPInstanceUID
    masks = {}
    for number in seg.get_segment_numbers():
        label = seg.get_segment_description(number).segment_label
        pixels = seg.get_pixels_by_source_instance(
            [source_uid], segment_numbers=[number], assert_missing_frames_are_empty=True
        )
        masks[label] = masks.get(label, False) | pixels[0, :, :, 0].astype(bool)
    return dataset, masks


def json_union(lesions, label) -> np.ndarray:
    masks = [decode_rle(x["mask"]) for x in lesions if x["label"] == label]
    return np.logical_or.reduce(masks) if masks else None


def check_seg_header(dataset, source: pydicom.Dataset, algorithm_type: str):
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert dataset.SOPInstanceUID != source.SOPInstanceUID
    assert dataset.SeriesInstanceUID != source.SeriesInstanceUID
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert "not for clinical use" in dataset.SeriesDescription
    assert dataset.SegmentationType == "BINARY"
    for segment in dataset.SegmentSequence:
        assert segment.SegmentAlgorithmType == algorithm_type
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "lesionseg" and algorithm.AlgorithmVersion
    refs = {
        item.ReferencedSOPInstanceUID
        for series in dataset.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert source.SOPInstanceUID in refs


@pytest.mark.parametrize("prompted", [True, False], ids=["boxes", "automatic"])
def test_dicom_seg_round_trip_matches_the_json_masks(client, lits, prompted):
    (ct,) = lits_ct(lits, [110])
    source = pydicom.dcmread(io.BytesIO(ct))
    fields = {"window": "abdomen"}
    if prompted:
        fields["boxes"] = lits.slice(110).boxes[:3].tolist()
    json_route = "/segment/boxes" if prompted else "/segment"
    lesions = post(client, json_route, ct, **fields).json()["lesions"]
    assert lesions, "the LiTS slice has tumours: the detector (or the boxes) must find some"
    response = post(client, "/segment/dicom-seg", ct, **fields)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    dataset, masks = seg_masks(response.content, source.SOPInstanceUID)
    check_seg_header(dataset, source, "SEMIAUTOMATIC" if prompted else "AUTOMATIC")
    assert set(masks) == {x["label"] for x in lesions}
    for label, mask in masks.items():
        np.testing.assert_array_equal(mask, json_union(lesions, label))


def test_series_of_files_gives_one_multi_frame_seg(client, lits):
    indices = [106, 110, 114]
    files = lits_ct(lits, indices)
    boxes = [[*b, n] for n, i in enumerate(indices) for b in lits.slice(i).boxes[:2].tolist()]
    response = post(client, "/segment/dicom-seg", files, boxes=boxes, window="abdomen")
    assert response.status_code == 200, response.text
    json_frames = post(
        client,
        "/segment/boxes",
        files[1],
        boxes=[b[:4] for b in boxes if b[4] == 1],
        window="abdomen",
    )
    for n, data in enumerate(files):
        source = pydicom.dcmread(io.BytesIO(data))
        dataset, masks = seg_masks(response.content, source.SOPInstanceUID)
        check_seg_header(dataset, source, "SEMIAUTOMATIC")
        assert masks["lesion"].sum() > 0
        if n == 1:
            np.testing.assert_array_equal(
                masks["lesion"], json_union(json_frames.json()["lesions"], "lesion")
            )
    # One frame per (3-D lesion segment, source frame it is on), over the three sources.
    placed = {
        (
            int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
            f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID,
        )
        for f in dataset.PerFrameFunctionalGroupsSequence
    }
    assert len(placed) == int(dataset.NumberOfFrames) >= 3
    assert {uid for _, uid in placed} == {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID
                                          for f in files}  # fmt: skip


def test_dicom_seg_refuses_other_input(client, lits):
    png = post(client, "/segment/dicom-seg", png_bytes(np.zeros((16, 16), np.uint8)))
    assert png.status_code == 400 and "not DICOM" in png.json()["error"]
    nifti = post(client, "/segment/dicom-seg", lits_nifti(lits, 110, 2))
    assert nifti.status_code == 400 and "/segment/nifti" in nifti.json()["error"]
    ct, mr = dicom_file("CT_small.dcm"), dicom_file("MR_small.dcm")
    mixed = post(client, "/segment/dicom-seg", [ct, mr], boxes=[[1, 1, 9, 9, 0]])
    assert mixed.status_code == 400 and "series" in mixed.json()["error"]


def test_nifti_volume_gives_a_label_mask_and_mm2(client, lits):
    data = lits_nifti(lits, 109, 3)
    body = post(client, "/segment", data, window="abdomen").json()
    assert body["number_of_frames"] == 3
    frame = body["frames"][1]
    assert frame["source"] == {"format": "NIfTI", "axis": 2, "slice": 1} | {
        k: None for k in ("sop_instance_uid", "frame_number", "window")
    }
    assert frame["pixel_spacing_source"] == "nifti_header"
    rows, cols = frame["pixel_spacing_mm"]
    assert (rows, cols) == pytest.approx((0.8, 0.7))
    found = [x for f in body["frames"] for x in f["lesions"]]
    assert found, "the LiTS slices 109-111 have tumours"
    for lesion in found:
        assert lesion["area_mm2"] == pytest.approx(lesion["area_px"] * rows * cols, rel=1e-5)
    response = post(client, "/segment/nifti", data, window="abdomen")
    assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
    out = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    source = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    labels = np.asarray(out.dataobj)
    legend = dict(item.split("=")[::-1] for item in response.headers["x-labels"].split(","))
    for k, f in enumerate(body["frames"]):
        for label in {x["label"] for x in f["lesions"]}:
            np.testing.assert_array_equal(
                int(legend[label]) == labels[:, :, k].T, json_union(f["lesions"], label)
            )
    assert post(client, "/segment/nifti", dicom_file("CT_small.dcm")).status_code == 400
