"""ONNX export: parity with PyTorch on LiTS validation slices, both SAM families."""

import numpy as np
import pytest

from lesionseg.errors import ModelLoadError
from lesionseg.export.onnx_sam import export_sam_onnx, sam_numeric_parity, sam_record
from lesionseg.models.backends.onnx_runner import OnnxSamRunner
from lesionseg.models.detector import Detector
from lesionseg.models.sam import load_hf_sam
from lesionseg.models.segmenter import Segmenter
from lesionseg.settings import Settings

from .conftest import disk

pytestmark = pytest.mark.slow


def test_exported_litemedsam_masks_match_torch(exported):
    directory, record = exported
    assert {p.name for p in directory.iterdir()} >= {
        "sam_encoder.onnx",
        "sam_decoder.onnx",
        "detector.onnx",
        "export.json",
    }
    parity = record["sam"]["parity"]
    assert parity["lesions"] >= 20
    assert parity["mask_dice_vs_torch"] >= 0.99
    assert parity["encoder_max_abs_err"] < 1e-3


@pytest.mark.parametrize("threshold", ["parity", "parity_at_floor"])
def test_exported_detector_matches_torch(exported, threshold):
    # The export's own check: ultralytics on the .pt vs onnxruntime + the numpy decoding.
    parity = exported[1]["detector"][threshold]
    assert parity["boxes"] >= parity["images"]
    assert parity["images_with_same_count"] == parity["images"]
    assert parity["images_with_same_classes"] == parity["images"]
    assert parity["min_box_iou"] >= 0.999 and parity["max_score_diff"] <= 1e-4


def test_onnx_backend_from_settings(exported, lits, litemedsam):
    settings = Settings(backend="onnxruntime", export_dir=exported[0])
    onnx = Segmenter.from_settings(settings)
    sl = lits.slice(120)
    ours = onnx.predict(onnx.embed([sl.image]), [sl.boxes])[0]
    ref = litemedsam.predict(litemedsam.embed([sl.image]), [sl.boxes])[0]
    np.testing.assert_allclose(ours.iou_predictions, ref.iou_predictions, atol=1e-3)
    assert (ours.masks != ref.masks).mean() < 1e-3
    detector = Detector.from_settings(settings)
    assert detector.weights.suffix == ".onnx" and len(detector.detect([sl.image])[0]) > 0


def test_export_refuses_a_mismatched_multimask(exported):
    with pytest.raises(ModelLoadError, match="multimask"):
        OnnxSamRunner(exported[0], multimask=True)


def test_missing_exports_say_how_to_make_them(tmp_path):
    with pytest.raises(ModelLoadError, match="make export"):
        Segmenter.from_settings(Settings(backend="onnxruntime", export_dir=tmp_path))
    with pytest.raises(ModelLoadError, match="make export"):
        Detector.from_settings(Settings(backend="onnxruntime", export_dir=tmp_path))


def test_hf_family_exports_with_dynamic_axes(tiny_hf_sam_dir, tmp_path):
    import json

    modules = load_hf_sam(tiny_hf_sam_dir)
    export_sam_onnx(modules, tmp_path)
    record = {"sam": sam_record(modules.spec, multimask=False)}
    (tmp_path / "export.json").write_text(json.dumps(record))
    runner = OnnxSamRunner(tmp_path)
    for batch in (1, 3):
        images = np.random.default_rng(batch).random((batch, 3, 256, 256), np.float32)
        parity = sam_numeric_parity(modules, runner, images)
        assert parity["encoder_max_abs_err"] < 1e-3 and parity["decoder_logits_max_abs_err"] < 1e-3
    seg = Segmenter(runner)
    (pred,) = seg.predict(seg.embed([disk(80, 60, 40, 30, 8)]), [[[20, 30, 40, 50], [0, 0, 9, 9]]])
    assert pred.masks.shape == (2, 80, 60)
