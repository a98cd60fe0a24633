"""DICOM decoding on real pydicom-data files: detection, LUTs, colour, frames, spacing, errors."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from lesionseg.errors import ImageTooLargeError, InputError, InvalidImageError
from lesionseg.io.dicom import decode_dicom, is_dicom, scrub
from lesionseg.settings import Settings
from lesionseg.windows import parse_window

PRESETS = Settings().window_presets
LIMITS = {"max_pixels": 40_000_000, "max_frames": 256}


def raw_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def decode(name_or_bytes, **kwargs):
    data = raw_bytes(name_or_bytes) if isinstance(name_or_bytes, str) else name_or_bytes
    return decode_dicom(data, **{**LIMITS, **kwargs})


def to_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The documented window: [c - w/2, c + w/2] -> [0, 255], rounded."""
    return np.floor(np.clip((values - (center - width / 2)) / width, 0, 1) * 255 + 0.5)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "OT-PAL-8-face.dcm", "emri_small.dcm"]
)
def test_dicom_is_detected_by_content(name):
    assert is_dicom(raw_bytes(name))


def test_bare_data_set_without_preamble_decodes():
    data = raw_bytes("OT-PAL-8-face.dcm")
    assert data[128:132] != b"DICM"  # no preamble, no file meta
    (frame,) = decode(data).frames
    assert frame.pixels.shape == (480, 640, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"II*\x00" + bytes(200),
        b"\xff\xd8\xff\xe0" + bytes(200),
        b"<html>not an image</html>" * 10,
        bytes(range(256)) * 2,
        b"",
    ],
)
def test_other_content_is_not_dicom(data):
    assert not is_dicom(data)


def test_ct_rescale_then_caller_window():
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = dataset.pixel_array.astype(np.float64) * 1.0 - 1024.0  # slope 1, intercept -1024
    (frame,) = decode("CT_small.dcm", window=parse_window("abdomen", PRESETS)).frames
    np.testing.assert_array_equal(frame.pixels[:, :, 0], linear_window(hu, 40, 400))
    # spot checks by hand: stored 175 -> -849 HU (below -160) -> 0
    assert dataset.pixel_array[0, 0] == 175 and frame.pixels[0, 0, 0] == 0
    assert (frame.pixels[hu >= 240] == 255).all() and (frame.pixels[hu <= -160] == 0).all()
    assert frame.pixel_spacing_mm == (0.661468, 0.661468)
    assert frame.pixel_spacing_source == "pixel_spacing"


def test_explicit_window_and_file_window():
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    values = dataset.pixel_array.astype(np.float64)
    mr = decode("MR_small.dcm")  # the file's window: 600 / 1600
    assert mr.window == (600.0, 1600.0)
    np.testing.assert_array_equal(mr.frames[0].pixels[:, :, 0], linear_window(values, 600, 1600))
    custom = decode("MR_small.dcm", window=parse_window("300,200", PRESETS))
    np.testing.assert_array_equal(custom.frames[0].pixels[:, :, 1], linear_window(values, 300, 200))


def test_no_window_stretches_min_max():
    (frame,) = decode("CT_small.dcm").frames
    gray = frame.pixels[:, :, 0]
    assert gray.min() == 0 and gray.max() == 255


def test_monochrome1_is_inverted():
    dataset = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    (frame,) = decode("RG3_UNCR.dcm").frames
    expected = 255 - linear_window(dataset.pixel_array.astype(np.float64), 550, 1024)
    np.testing.assert_array_equal(frame.pixels[:, :, 2], expected)


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS
        ("US1_J2KR.dcm", "US1_UNCR.dcm"),  # JPEG 2000, YBR_RCT colour
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),  # RLE colour
    ],
)
def test_lossless_transfer_syntaxes_give_the_uncompressed_pixels(compressed, reference):
    assert (
        decode(compressed).frames[0].pixels.tobytes()
        == decode(reference).frames[0].pixels.tobytes()
    )


def test_lossy_jpeg_ybr_is_converted_to_rgb():
    lossy = decode("SC_rgb_jpeg_dcmtk.dcm").frames[0].pixels.astype(int)
    exact = decode("SC_rgb.dcm").frames[0].pixels.astype(int)
    assert np.abs(lossy - exact).mean() < 3


def test_rgb_is_kept():
    dataset = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    (frame,) = decode("US1_UNCR.dcm").frames
    np.testing.assert_array_equal(frame.pixels, dataset.pixel_array)
    assert frame.pixel_spacing_mm is None and frame.pixel_spacing_source is None


def test_palette_colour_goes_through_the_palette():
    dataset = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    (frame,) = decode("OBXXXX1A.dcm").frames
    rgb16 = apply_color_lut(dataset.pixel_array, dataset).astype(np.float64)  # 16-bit entries
    np.testing.assert_array_equal(frame.pixels, np.floor(rgb16 / 65535 * 255 + 0.5))
    assert (frame.pixels[:, :, 0] != frame.pixels[:, :, 2]).any()


def test_multi_frame_gives_one_image_per_frame():
    dataset = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    image = decode("emri_small.dcm")
    assert len(image.frames) == 10 and image.frames[3].pixels.shape == (64, 64, 3)
    stored = dataset.pixel_array.astype(np.float64)  # (10, 64, 64); one stretch for all frames
    lo, hi = stored.min(), stored.max()
    np.testing.assert_array_equal(
        image.frames[3].pixels[:, :, 0], linear_window(stored[3], (lo + hi) / 2, hi - lo)
    )


def test_zero_pixel_spacing_is_unknown():
    (frame,) = decode("RG1_UNCR.dcm").frames  # PixelSpacing is [0, 0] in this file
    assert frame.pixel_spacing_mm is None and frame.pixel_spacing_source is None


def test_imager_pixel_spacing_is_flagged():
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del dataset.PixelSpacing
    dataset.ImagerPixelSpacing = [0.2, 0.25]
    (frame,) = decode(to_bytes(dataset)).frames
    assert frame.pixel_spacing_mm == (0.2, 0.25)
    assert frame.pixel_spacing_source == "imager_pixel_spacing"


def test_sizes_are_checked_before_decoding(monkeypatch):
    import lesionseg.io.dicom

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data decoded before the size check")

    monkeypatch.setattr(lesionseg.io.dicom, "pixel_array", no_decoding)
    with pytest.raises(ImageTooLargeError, match="LESIONSEG_MAX_IMAGE_PIXELS"):
        decode("RG1_UNCR.dcm", max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError, match="10 frames"):
        decode("emri_small.dcm", max_frames=4)
    with pytest.raises(ImageTooLargeError, match="LESIONSEG_MAX_TOTAL_PIXELS"):
        decode("emri_small.dcm", max_total_pixels=64 * 64 * 9)  # 10 frames of 64 x 64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (raw_bytes("CT_small.dcm")[:-5000], "corrupt or truncated|cannot decode"),
        (bytes(128) + b"DICM" + b"\xff" * 64, "corrupt or truncated|no image"),
        (raw_bytes("rtplan.dcm"), "RT Plan Storage.*no image"),
    ],
)
def test_malformed_dicom_raises_invalid_image(data, message):
    with pytest.raises(InvalidImageError, match=message):
        decode(data)


def test_window_on_colour_is_refused():
    with pytest.raises(InputError, match="grayscale"):
        decode("US1_UNCR.dcm", window=(40, 400))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("abdomen", (40.0, 400.0)),
        ("LUNG", (-600.0, 1500.0)),
        ("-50.5, 350", (-50.5, 350.0)),
    ],
)
def test_parse_window(text, expected):
    assert parse_window(text, PRESETS) == expected


@pytest.mark.parametrize("text", ["kidney", "40", "40,0", "40,-5", "a,b", "1,2,3", "nan,400"])
def test_parse_window_rejects_with_the_choices(text):
    with pytest.raises(InputError, match="abdomen"):
        parse_window(text, PRESETS)


def test_scrub_removes_patient_identifiers():
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    dataset.PatientName, dataset.PatientID = "Quux^Zorblat", "PID-777-XYZ"
    message = scrub("bad value 'Quux^Zorblat' of PID-777-XYZ at (0010,0010)", dataset)
    assert "Zorblat" not in message and "PID-777" not in message and "(0010,0010)" in message


@pytest.mark.parametrize(
    ("name", "windowed"),
    [("CT_small.dcm", True), ("MR_small.dcm", False)],
    ids=["CT gets the CT bundle's window", "MR keeps its own"],
)
def test_bundle_window_applies_to_its_modality_only(name, windowed):
    from lesionseg.io.uploads import decode_upload

    with open(get_testdata_file(name), "rb") as handle:
        data = handle.read()
    settings = Settings()
    bundle = decode_upload(
        data, settings, default_window="abdomen", default_window_modality="CT"
    ).frames[0]
    explicit = decode_upload(data, settings, window="abdomen").frames[0]
    own = decode_upload(data, settings).frames[0]
    expected = explicit if windowed else own
    np.testing.assert_array_equal(bundle.pixels, expected.pixels)
    assert not np.array_equal(explicit.pixels, own.pixels)  # the two cases differ at all
