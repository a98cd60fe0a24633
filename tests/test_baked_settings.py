"""Settings baked into an export (lesionseg/models/baked_settings.py): a service given an export
made with another value refuses to load it with a message naming the setting, the export and the
command; the CLI's export directory changes with them (it exports again). Fast: export records
and engine sidecars written here, no ONNX file is opened."""

from __future__ import annotations

import json

import pytest

from lesionseg.errors import ModelLoadError
from lesionseg.models.baked_settings import BAKED_INTO_EXPORT, baked_mismatches
from lesionseg.models.bundle_settings import effective_settings, export_key
from lesionseg.models.detector import Detector
from lesionseg.models.segmenter import Segmenter
from lesionseg.settings import Settings

EXPORTED = ("onnxruntime", "openvino", "tensorrt")


@pytest.fixture
def export_dir(tmp_path):
    """An export record as `python -m export onnx` writes it (multimask off, detector at 256
    px) and the sidecars of `python -m export tensorrt` (fp16, at most 50 boxes)."""
    record = {"sam": {"multimask": False}, "detector": {"image_size": 256}, "key": "x-0"}
    (tmp_path / "export.json").write_text(json.dumps(record))
    for part, profiles in (("encoder", {"images": {"max": [4, 3, 256, 256]}}),
                           ("decoder", {"boxes": {"max": [50, 4]}})):  # fmt: skip
        sidecar = {"precision": "fp16 (fp32 normalisation/softmax layers)", "profiles": profiles}
        (tmp_path / f"sam_{part}.engine.json").write_text(json.dumps(sidecar))
    return tmp_path


@pytest.mark.parametrize("backend", EXPORTED)
def test_matching_settings_pass(export_dir, backend):
    assert baked_mismatches(Settings(backend=backend, export_dir=export_dir), export_dir) == []


@pytest.mark.parametrize("backend", EXPORTED)
def test_multimask_changed_after_export_is_refused(export_dir, backend):
    settings = Settings(backend=backend, export_dir=export_dir, multimask_output=True)
    with pytest.raises(ModelLoadError) as caught:
        Segmenter.from_settings(settings)
    message = str(caught.value)
    assert "LESIONSEG_MULTIMASK_OUTPUT=true" in message and "with false" in message
    assert str(export_dir) in message and "make export models" in message


@pytest.mark.parametrize("backend", EXPORTED)
def test_detector_image_size_changed_after_export_is_refused(export_dir, backend):
    settings = Settings(backend=backend, export_dir=export_dir, detector_image_size=512)
    with pytest.raises(ModelLoadError, match=r"LESIONSEG_DETECTOR_IMAGE_SIZE=512 .* with 256"):
        Detector.from_settings(settings)


def test_a_sam_head_export_records_no_detector_size(export_dir):
    record = {"sam": {"multimask": False}, "detector": {"kind": "sam-head"}}
    (export_dir / "export.json").write_text(json.dumps(record))
    settings = Settings(backend="openvino", export_dir=export_dir, detector_image_size=512)
    assert baked_mismatches(settings, export_dir) == []


def test_max_lesions_above_the_decoder_engine_profile_is_refused(export_dir):
    settings = Settings(backend="tensorrt", export_dir=export_dir, max_lesions=100)
    with pytest.raises(ModelLoadError, match=r"LESIONSEG_MAX_LESIONS=100 .*at most 50.*engines"):
        Segmenter.from_settings(settings)
    fewer = Settings(backend="tensorrt", export_dir=export_dir, max_lesions=20)
    assert baked_mismatches(fewer, export_dir) == []


@pytest.mark.parametrize(
    ("backend", "precision", "refused"),
    [
        ("tensorrt", "fp32", True),
        ("tensorrt", "fp16", False),
        ("onnxruntime", "bf16", True),
        ("onnxruntime", "fp32", False),
        ("openvino", "bf16", False),  # compiled at load: not baked
    ],
)
def test_precision_the_export_lacks_is_refused(export_dir, backend, precision, refused):
    settings = Settings(backend=backend, export_dir=export_dir, precision=precision)
    problems = baked_mismatches(settings, export_dir)
    assert bool(problems) is refused
    assert all("LESIONSEG_PRECISION" in p for p in problems)


def test_torch_serves_no_export(export_dir):
    settings = Settings(backend="torch", export_dir=export_dir, multimask_output=True)
    assert baked_mismatches(settings, export_dir) == []


@pytest.mark.parametrize(
    ("name", "value"), [("multimask_output", True), ("detector_image_size", 320)]
)
def test_the_cli_export_directory_changes_with_a_baked_setting(name, value):
    # The CLI exports into cache_dir/exports/<key> when stale: a new value is a new export.
    base = effective_settings(Settings())
    assert export_key(effective_settings(Settings(**{name: value}))) != export_key(base)


def test_the_settings_page_marks_every_baked_setting():
    from tests.test_docs import settings_page

    rows = {line.split("`")[1]: line for line in settings_page().render().splitlines()
            if line.startswith("| `LESIONSEG_")}  # fmt: skip
    for name in BAKED_INTO_EXPORT:
        assert "*Baked into the export*" in rows[f"LESIONSEG_{name.upper()}"], name
    assert sum("*Baked into the export*" in row for row in rows.values()) == len(BAKED_INTO_EXPORT)
