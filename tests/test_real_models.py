"""Real LiteMedSAM and the committed detector on real LiTS slices (slow tier, runs in make test)."""

import json

import numpy as np
import pytest
from PIL import Image

from lesionseg.cli import main as cli_main
from lesionseg.io.masks import decode_rle
from lesionseg.measure.evaluation import dice
from lesionseg.models.bundle import SHIPPED_BUNDLE, Bundle
from lesionseg.train.train_detector import detect_frames, detection_counts

pytestmark = pytest.mark.slow

MIN_LESION_PX = 10  # outlines of a few pixels are noise at this resolution


def test_lits_split_never_straddles(lits):
    from lesionseg.datasets.lits import SPLITS

    assert lits.ct.shape == lits.labels.shape == (128, 128, 128)
    assert min(SPLITS["val"]) - max(SPLITS["train"]) > 1
    sl = lits.slice(110)
    assert sl.image.shape == (128, 128, 3) and sl.image.dtype == np.uint8
    assert len(sl.boxes) == sl.instances.max() > 0
    for k, box in enumerate(sl.boxes):
        ys, xs = np.nonzero(sl.instances == k + 1)
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_litemedsam_with_ground_truth_boxes_reaches_dice(lits, litemedsam):
    slices = list(lits.slices("val", step=3))  # 10 of the 28 validation slices
    embeddings = litemedsam.embed([s.image for s in slices])
    predictions = litemedsam.predict(embeddings, [s.boxes for s in slices])
    scores = [
        dice(pred.masks[k], sl.instances == k + 1)
        for sl, pred in zip(slices, predictions, strict=True)
        for k in range(len(sl.boxes))
        if sl.areas[k] >= MIN_LESION_PX
    ]
    assert len(scores) >= 20
    assert np.mean(scores) >= 0.65, f"lesion Dice {np.mean(scores):.3f} over {len(scores)} lesions"


def test_shipped_bundle_record_holds_on_validation(lits_volume, settings, detector):
    """The shipped bundle's recorded automatic accuracy (its detector at its threshold and box
    margin, its SAM), re-measured on the LiTS validation slab by the training's own code."""
    from lesionseg.models.sam import load_sam
    from lesionseg.train.evaluate import FLOOR, SamEvaluator, automatic_row

    bundle = Bundle.load(SHIPPED_BUNDLE)
    record = bundle.record["metrics"]["selected"]
    assert (settings.score_threshold, settings.box_margin) == (
        record["score_threshold"],
        record["box_margin"],
    )
    frames = list(lits_volume.frames(0, (100, 128)))  # the validation slab, all with lesions
    detections = detect_frames(detector, frames, score_threshold=FLOOR)
    sam = SamEvaluator(
        load_sam("litemedsam", settings.sam_path), frames, settings.cache_dir / "train"
    )
    row = automatic_row(
        sam,
        detections,
        threshold=record["score_threshold"],
        margin=record["box_margin"],
        min_area=20,
    )
    assert row["lesions"] == record["lesions"]
    for key in ("lesion_dice", "fp_penalised_dice", "det_recall", "det_precision"):
        assert abs(row[key] - record[key]) <= 0.01, (key, row, record)
    counts = detection_counts(
        detections, frames, iou=0.3, min_area=50, threshold=record["score_threshold"]
    )
    assert counts.recall >= 0.7


@pytest.fixture
def onnx_env(exported, monkeypatch):
    """The CLI runs the default backend (openvino on the CPU) on the exported files."""
    monkeypatch.setenv("LESIONSEG_EXPORT_DIR", str(exported[0]))


def test_cli_predict_on_a_validation_slice(lits, tmp_path, onnx_env):
    image_path = tmp_path / "lits117-z110.png"
    Image.fromarray(lits.slice(110).image).save(image_path)
    assert cli_main(["predict", str(image_path), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "lits117-z110.json").read_text())
    assert (result["width"], result["height"]) == (128, 128)
    assert result["lesions"], "the detector found no lesion on a slice full of tumours"
    for lesion in result["lesions"]:
        mask = decode_rle(lesion["mask"])
        assert mask.shape == (128, 128) and mask.sum() == lesion["area_px"]
        assert lesion["area_mm2"] is None  # LiTS spacing is unknown
    overlay = Image.open(tmp_path / "out" / "lits117-z110.overlay.png")
    assert overlay.size == (128, 128) and overlay.mode == "RGB"


def test_cli_predict_with_boxes_reports_bad_input(lits, tmp_path, capsys, onnx_env):
    image_path = tmp_path / "slice.png"
    Image.fromarray(lits.slice(110).image).save(image_path)
    code = cli_main(
        ["predict", str(image_path), "--boxes", "[[10, 10, 5, 5]]", "--out", str(tmp_path)]
    )
    assert code == 2 and "x1 > x0" in capsys.readouterr().err
    box = lits.slice(110).boxes[:1].tolist()
    assert (
        cli_main(["predict", str(image_path), "--boxes", json.dumps(box), "--out", str(tmp_path)])
        == 0
    )
    result = json.loads((tmp_path / "slice.json").read_text())
    assert [lesion["box"] for lesion in result["lesions"]] == [[round(v, 2) for v in box[0]]]
