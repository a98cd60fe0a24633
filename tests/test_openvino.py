"""OpenVINO backend: precision choice, dynamic shapes, and the accuracy guard against torch."""

import numpy as np
import pytest

from lesionseg.errors import ModelLoadError
from lesionseg.models.backends.onnx_runner import OnnxSamRunner
from lesionseg.models.backends.openvino_runner import OpenVinoSamRunner, resolve_precision
from lesionseg.models.bundle_settings import effective_settings
from lesionseg.models.detector import Detector
from lesionseg.models.segmenter import Segmenter
from lesionseg.settings import Settings

from .conftest import assert_same_detections

AVX512_BF16 = ["BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]  # this project's CPU
AVX2_ONLY = ["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]


@pytest.mark.parametrize(
    ("requested", "capabilities", "chosen"),
    [
        ("auto", AVX512_BF16, "bf16"),
        ("auto", AVX2_ONLY, "fp32"),
        ("fp32", AVX512_BF16, "fp32"),
        ("bf16", AVX512_BF16, "bf16"),
    ],
)
def test_precision_is_bf16_only_where_the_cpu_has_it(requested, capabilities, chosen):
    assert resolve_precision(requested, capabilities) == chosen


@pytest.mark.parametrize("requested", ["bf16", "fp16"])
def test_a_precision_the_cpu_lacks_fails_at_start(requested):
    with pytest.raises(ModelLoadError, match=f"PRECISION={requested}.*auto or fp32"):
        resolve_precision(requested, AVX2_ONLY)


@pytest.mark.parametrize("stage", [Segmenter, Detector])
def test_openvino_is_refused_on_cuda_and_without_exports(tmp_path, stage):
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        stage.from_settings(Settings(backend="openvino", device="cuda", export_dir=tmp_path))
    with pytest.raises(ModelLoadError, match="make export"):
        stage.from_settings(Settings(backend="openvino", export_dir=tmp_path))


def test_onnxruntime_refuses_a_precision_it_does_not_run(tmp_path):
    with pytest.raises(ModelLoadError, match="onnxruntime backend runs the fp32 export"):
        Segmenter.from_settings(
            Settings(backend="onnxruntime", precision="bf16", export_dir=tmp_path)
        )


def test_the_default_backend_is_openvino_on_the_cpu_onnxruntime_on_cuda(monkeypatch):
    for name in ("LESIONSEG_BACKEND", "LESIONSEG_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().backend == "openvino"
    assert Settings(device="cuda").backend == "onnxruntime"
    assert Settings(device="cuda", backend="tensorrt").backend == "tensorrt"


@pytest.mark.slow
def test_dynamic_batch_and_box_count_match_onnxruntime(served_export):
    directory = served_export
    reference = OnnxSamRunner(directory)
    fp32 = OpenVinoSamRunner(directory, precision="fp32", threads=2)
    chosen = OpenVinoSamRunner(directory)  # auto
    assert chosen.precision in ("bf16", "fp32")
    images = np.random.default_rng(0).random((3, 3, 256, 256), np.float32)
    want = reference.encode(images)
    for batch in (1, 3):
        np.testing.assert_allclose(fp32.encode(images[:batch]), want[:batch], atol=1e-3)
        assert chosen.encode(images[:batch]).shape == want[:batch].shape
    boxes = np.array([[40, 40, 120, 140], [10, 20, 60, 50], [100, 90, 200, 250], [0, 0, 256, 256]])
    for n in (1, 4):
        args = (want[:1], boxes[:n].astype(np.float32), np.zeros((n, 1, 256, 256), np.float32))
        for got, ref in zip(fp32.decode(*args, False), reference.decode(*args, False), strict=True):
            np.testing.assert_allclose(got, ref, atol=1e-3)
        logits, iou = chosen.decode(*args, False)
        assert logits.shape == (n, 1, 256, 256) and iou.shape == (n, 1)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_a_decoder_only_segmenter_decodes_as_the_whole_one(served_export, backend):
    """The service's API process loads SAM without its encoder: the same masks from the same
    embedding, and no encoder to run by mistake."""
    settings = Settings(backend=backend, export_dir=served_export, precision="fp32")
    whole = Segmenter.from_settings(settings)
    decoder_only = Segmenter.from_settings(settings, with_encoder=False)
    assert decoder_only.runner.encoder is None
    image = np.zeros((96, 128, 3), np.uint8)
    image[30:60, 40:90] = 200
    (embedding,) = whole.embed([image])
    boxes = [np.array([[38, 28, 92, 62]], np.float32)]
    (want,) = whole.predict([embedding], boxes)
    (got,) = decoder_only.predict([decoder_only.wrap(embedding.features, (96, 128))], boxes)
    np.testing.assert_array_equal(got.masks, want.masks)
    with pytest.raises(ModelLoadError, match="without its encoder"):
        decoder_only.embed([image])


@pytest.mark.slow
def test_openvino_detector_matches_ultralytics(served_export, detector, lits):
    """fp32 whatever the SAM precision (bf16 changed the detections); at the served threshold
    and the service's score floor, every slice of the validation slab."""
    settings = effective_settings(Settings(backend="openvino", export_dir=served_export))
    ours = Detector.from_settings(settings)
    assert ours.runner.precision == "fp32" and ours.names == detector.names
    assert_same_detections(detector, ours, lits, min_iou=0.99, max_score_diff=1e-3)


@pytest.mark.slow
def test_openvino_lesion_dice_within_001_of_fp32_torch(served_export, lits, settings):
    """The accuracy guard (lesionseg.export.accuracy, as benchmarks/openvino_accuracy.py runs
    it, on every second validation slice):
    the openvino backend at the precision it picks here must keep the lesion Dice of fp32
    torch within 0.01 on the same lesions and ground-truth boxes, or it is not used."""
    from lesionseg.export.accuracy import TOLERANCE, compare

    slices = list(lits.slices("val", step=2))
    rows = compare(settings, slices, served_export, openvino_fp32=False)
    for row in rows:  # the figures, in the test log (-rA or a failure)
        print(
            f"{row['backend']} {row['precision']}: lesion Dice {row['lesion_dice']} "
            f"({row['vs_torch']:+.4f} vs fp32 torch) over {row['lesions']} lesions"
        )
    torch_row, ort_row, ov_row = rows
    assert torch_row["backend"] == "torch" and ov_row["backend"] == "openvino"
    assert torch_row["lesions"] >= 20 and ov_row["lesions"] == torch_row["lesions"]
    assert abs(ort_row["vs_torch"]) <= TOLERANCE
    assert abs(ov_row["vs_torch"]) <= TOLERANCE, ov_row
