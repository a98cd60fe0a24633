"""DICOM SEG writer on real pydicom-data sources, without the models (masks made here)."""

from __future__ import annotations

import io
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lesionseg import __version__
from lesionseg.errors import InputError
from lesionseg.outputs.dicom_seg import build_seg, seg_to_bytes, segment_labels
from lesionseg.types import Lesion, SegmentationResult


def source(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def result(h: int, w: int, *rects: tuple[int, int, int, int, str]) -> SegmentationResult:
    lesions = []
    for y0, y1, x0, x1, label in rects:
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = True
        lesions.append(Lesion((x0, y0, x1, y1), label, 0.9, 0.8, mask, int(mask.sum()), None))
    return SegmentationResult(w, h, tuple(lesions))


def read_back(seg) -> hd.seg.Segmentation:
    return hd.seg.segread(io.BytesIO(seg_to_bytes(seg)))


def masks_of(seg: hd.seg.Segmentation, uid: str) -> np.ndarray:
    return seg.get_pixels_by_source_instance([uid], assert_missing_frames_are_empty=True)[0]


def test_one_segment_per_label_with_the_union_of_its_masks():
    ct = source("CT_small.dcm")
    res = result(
        128, 128, (10, 20, 10, 30, "lesion"), (15, 40, 20, 25, "lesion"), (60, 70, 60, 90, "cyst")
    )
    seg = read_back(build_seg([ct], [res]))
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["cyst", "lesion"]
    pixels = masks_of(seg, ct.SOPInstanceUID)  # (H, W, segments)
    np.testing.assert_array_equal(pixels[:, :, 0], res.lesions[2].mask)
    np.testing.assert_array_equal(pixels[:, :, 1], res.lesions[0].mask | res.lesions[1].mask)
    assert seg.SOPInstanceUID != ct.SOPInstanceUID and seg.SeriesInstanceUID != ct.SeriesInstanceUID
    assert seg.StudyInstanceUID == ct.StudyInstanceUID
    assert "not for clinical use" in seg.SeriesDescription
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("lesionseg", __version__)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"


def test_box_prompts_are_semiautomatic():
    ct = source("CT_small.dcm")
    seg = build_seg([ct], [result(128, 128, (1, 5, 1, 5, "lesion"))], semiautomatic=True)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"


def test_nothing_found_still_describes_the_segments():
    ct = source("CT_small.dcm")
    seg = read_back(build_seg([ct], [result(128, 128)], labels=("lesion",)))
    assert len(seg.SegmentSequence) == 1 and int(seg.NumberOfFrames) == 1
    assert not masks_of(seg, ct.SOPInstanceUID).any()
    assert segment_labels([result(8, 8)], ["b", "a", "b"]) == ["a", "b"]


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "RG1_UNCR.dcm", "MR_small_jp2klossless.dcm"])
def test_other_sources_round_trip(name):
    """RGB ultrasound, CR with PixelSpacing [0, 0] (dropped), a JPEG 2000 source."""
    ds = source(name)
    res = result(ds.Rows, ds.Columns, (2, 12, 3, 9, "lesion"))
    seg = read_back(build_seg([ds], [res]))
    np.testing.assert_array_equal(masks_of(seg, ds.SOPInstanceUID)[:, :, 0], res.lesions[0].mask)
    assert "PixelSpacing" in ds or name != "RG1_UNCR.dcm"  # the source is left untouched


def test_a_series_of_single_frame_files_gives_one_multi_frame_seg():
    files = []
    for k in range(3):
        ds = source("CT_small.dcm")
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        files.append(ds)
    results = [result(128, 128, (k, k + 9, 5, 20, "lesion")) for k in range(3)]
    seg = read_back(build_seg(files, results))
    assert int(seg.NumberOfFrames) == 3
    for ds, res in zip(files, results, strict=True):
        np.testing.assert_array_equal(
            masks_of(seg, ds.SOPInstanceUID)[:, :, 0], res.lesions[0].mask
        )


def test_unsupported_inputs_raise_input_errors():
    emri = source("emri_small.dcm")  # 10 frames, no plane positions: highdicom cannot place them
    with pytest.raises(InputError, match="cannot make a DICOM SEG"):
        build_seg([emri], [result(64, 64)] * 10)
    ct, mr = source("CT_small.dcm"), source("MR_small.dcm")
    with pytest.raises(InputError, match="2 series"):
        build_seg([ct, mr], [result(128, 128), result(64, 64)])
    with pytest.raises(InputError, match="multi-frame"):
        build_seg([ct, emri], [result(128, 128)] * 11)


def test_no_patient_name_in_warnings():
    ct = source("CT_small.dcm")
    ct.PatientName = "odd name without carets Quuxington"
    with warnings.catch_warnings(record=True) as seen:  # the filters as configured, recorded
        build_seg([ct], [result(128, 128)])
    assert not any("Quuxington" in str(w.message) for w in seen), [str(w.message) for w in seen]
