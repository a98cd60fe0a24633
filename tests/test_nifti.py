"""NIfTI volumes and upload routing (no models): detection, slicing, spacing, label mask, limits."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionseg.errors import ImageTooLargeError, InputError, InvalidBoxesError, InvalidImageError
from lesionseg.io.images import window_ct
from lesionseg.io.nifti import decode_nifti, is_nifti, label_mask, slice_axis
from lesionseg.io.uploads import decode_upload, split_boxes
from lesionseg.settings import Settings
from lesionseg.types import Lesion, SegmentationResult

LIMITS = {"max_pixels": 10**7, "max_frames": 64, "max_bytes": 10**9}


@pytest.fixture(scope="module")
def volume(lits) -> tuple[bytes, np.ndarray]:
    """LiTS slices 108-111 as a gzipped NIfTI (X, Y, Z), 0.7 x 0.8 x 2.5 mm."""
    data = lits.ct[108:112].transpose(2, 1, 0).astype(np.float32)
    image = nib.Nifti1Image(data, np.diag([0.7, 0.8, 2.5, 1.0]))
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes()), data


def test_nifti_is_detected_gzipped_or_not(volume):
    gz, _ = volume
    assert is_nifti(gz) and is_nifti(gzip.decompress(gz))
    assert not is_nifti(gzip.compress(b"not a nifti" * 100)) and not is_nifti(b"\x89PNG" * 200)


def test_axial_slices_are_the_lits_slices_with_header_spacing(volume, lits):
    gz, _ = volume
    decoded = decode_nifti(gz, window=(40, 400), **LIMITS)
    assert decoded.axis == 2 and len(decoded.frames) == 4
    for k, frame in enumerate(decoded.frames):
        np.testing.assert_array_equal(frame.pixels, lits.slice(108 + k).image)
        assert frame.pixel_spacing_mm == pytest.approx((0.8, 0.7))
        assert frame.pixel_spacing_source == "nifti_header"


def test_without_window_the_volume_is_stretched_once(volume):
    gz, data = volume
    frames = decode_nifti(gz, **LIMITS).frames
    lo, hi = float(data.min()), float(data.max())
    np.testing.assert_array_equal(
        frames[2].pixels[:, :, 0], window_ct(data[:, :, 2].T, (lo + hi) / 2, hi - lo)
    )


def test_slice_axis_follows_the_affine():
    sagittal_slices = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    assert slice_axis(np.eye(4)) == 2 and slice_axis(sagittal_slices) == 0


def test_label_mask_keeps_shape_and_affine(volume):
    gz, data = volume
    decoded = decode_nifti(gz, **LIMITS)
    mask = np.zeros((128, 128), bool)
    mask[40:50, 60:64] = True  # rows = y, columns = x
    lesion = Lesion((60, 40, 64, 50), "lesion", 1.0, 1.0, mask, 40, None)
    results = [SegmentationResult(128, 128, (lesion,) if k == 1 else ()) for k in range(4)]
    out = nib.Nifti1Image.from_bytes(gzip.decompress(label_mask(decoded, results, ["lesion"])))
    labels = np.asarray(out.dataobj)
    assert labels.shape == data.shape and labels.dtype == np.uint8
    assert np.allclose(out.affine, decoded.image.affine)
    assert labels[60:64, 40:50, 1].all() and labels.sum() == 40  # x 60-63, y 40-49, slice 1


def test_nifti_limits_and_errors(volume):
    gz, _ = volume
    with pytest.raises(ImageTooLargeError, match="LESIONSEG_MAX_FRAMES"):
        decode_nifti(gz, **{**LIMITS, "max_frames": 3})
    with pytest.raises(ImageTooLargeError, match="LESIONSEG_MAX_TOTAL_PIXELS"):
        decode_nifti(gz, **LIMITS, max_total_pixels=128 * 128 * 3)
    with pytest.raises(ImageTooLargeError, match="uncompressed"):
        decode_nifti(gz, **{**LIMITS, "max_bytes": 1000})
    with pytest.raises(InvalidImageError):
        decode_nifti(gzip.decompress(gz)[:5000], **LIMITS)
    four_d = nib.Nifti1Image(np.zeros((8, 8, 2, 3), np.float32), np.eye(4))
    with pytest.raises(InputError, match="4-D"):
        decode_nifti(four_d.to_bytes(), **LIMITS)


def test_upload_routing(volume):
    settings = Settings()
    gz, _ = volume
    assert decode_upload(gz, settings).nifti is not None
    from pydicom.data import get_testdata_file

    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        upload = decode_upload(f.read(), settings, window="lung")
    assert upload.dicom is not None and upload.dicom.window == (-600.0, 1500.0)
    assert not upload.multi_frame
    with pytest.raises(InputError, match="empty"):
        decode_upload(b"", settings)


def test_split_boxes():
    assert split_boxes([[1, 2, 3, 4, 1], [5, 6, 7, 8, 1]], 3) == [
        [],
        [[1, 2, 3, 4], [5, 6, 7, 8]],
        [],
    ]
    for bad, message in [
        ([[1, 2, 3, 4]], "fifth value"),
        ([[1, 2, 3, 4, 3]], "frame index"),
        ([[1, 2, 3, 4, 0.5]], "frame index"),
        ([[1, 2, 3]], "each box"),
    ]:
        with pytest.raises(InvalidBoxesError, match=message):
            split_boxes(bad, 3)


def test_default_window_stands_in_where_a_window_applies(volume):
    """The bundle's window (default_window) for grayscale DICOM and NIfTI without a window;
    an explicit window wins; PNG and colour DICOM ignore it."""
    from pydicom.data import get_testdata_file

    from tests.service.conftest import png_bytes

    settings = Settings()
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    defaulted = decode_upload(ct, settings, default_window="abdomen")
    assert defaulted.dicom.window == (40.0, 400.0)
    assert decode_upload(ct, settings).dicom.window != (40.0, 400.0)  # the file's own
    explicit = decode_upload(ct, settings, window="lung", default_window="abdomen")
    assert explicit.dicom.window == (-600.0, 1500.0)
    gz, _ = volume
    nifti = decode_upload(gz, settings, default_window="abdomen").frames
    same = decode_upload(gz, settings, window="abdomen").frames
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(nifti, same, strict=True))
    colour = Path(get_testdata_file("US1_UNCR.dcm")).read_bytes()
    assert decode_upload(colour, settings, default_window="abdomen").dicom.window is None
    png = png_bytes(np.zeros((8, 8), np.uint8))
    assert decode_upload(png, settings, default_window="abdomen").frames[0].width == 8
