"""The SAM-head detector's numpy side (lesionseg.models.sam_head): its input, the decoding of
hand-made raw maps into exact boxes, and sam-head bundles (classes from the head checkpoint)
and their loading on each backend (lesionseg.models.detectors.load_sam_head)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from lesionseg.errors import ModelLoadError
from lesionseg.models.bundle import Bundle, detector_class_names
from lesionseg.models.bundle_settings import effective_settings
from lesionseg.models.detectors import HEAD_ONNX, load_detector, load_sam_head
from lesionseg.models.sam_head import SamHeadDetector, decode_head, head_input
from lesionseg.settings import Settings
from lesionseg.types import ImageEmbedding
from tests.sam_head_bundle import write_sam_head_bundle

# A 128 x 64 image: SAM resizes its longest side to 256 -> 256 x 128, so frame px * 0.5 = image px.
GEOMETRY = dict(original_hw=(128, 64), resized_hw=(256, 128))
STRIDE = 4.0
DECODE = dict(stride=STRIDE, score_threshold=0.5, iou_threshold=0.5, max_detections=10)


def embedding(value: float, channels: int = 2, grid: int = 8) -> ImageEmbedding:
    return ImageEmbedding(np.full((channels, grid, grid), value, np.float32), **GEOMETRY)


def raw_map(classes: int = 1, grid: int = 8) -> np.ndarray:
    """(K + 4, grid, grid): every heatmap logit -10 (score ~0), sizes 1 cell, no offsets."""
    raw = np.zeros((classes + 4, grid, grid), np.float32)
    raw[:classes] = -10.0
    return raw


def put(raw: np.ndarray, k: int, row: int, col: int, logit: float, size=(0.0, 0.0), off=(0, 0)):
    """A heatmap logit for class ``k`` at a cell, with log width/height and x/y offsets."""
    classes = raw.shape[0] - 4
    raw[k, row, col] = logit
    raw[classes : classes + 4, row, col] = [*size, *off]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_a_peak_becomes_one_box_in_original_pixels():
    raw = raw_map()
    put(raw, 0, 2, 3, 2.0, size=(math.log(2), math.log(4)), off=(0.25, -0.25))
    raw[0, 2, 4] = 1.0  # a neighbour above the threshold, lower than the peak: no box of its own
    raw[0, 6, 6] = -0.5  # an isolated peak below the threshold
    boxes, scores, ids = decode_head(raw, embedding(0), **DECODE)
    # centre ((3 + 0.5 + 0.25) * 4, (2 + 0.5 - 0.25) * 4) = (15, 9) in the frame, 8 x 16 frame px,
    # then x 0.5 into the image
    np.testing.assert_allclose(boxes, [[5.5, 0.5, 9.5, 8.5]], atol=1e-5)
    np.testing.assert_allclose(scores, [sigmoid(2.0)], atol=1e-6)
    assert ids.tolist() == [0] and ids.dtype == np.int64


def test_class_agnostic_nms_keeps_the_best_class_and_scores_descend():
    raw = raw_map(classes=2)
    put(raw, 0, 4, 4, 1.0)
    raw[1, 4, 4] = 3.0  # class 1 at the same cell, higher: the same box, kept instead
    put(raw, 0, 0, 0, 2.0)  # far away: kept
    boxes, scores, ids = decode_head(raw, embedding(0), **DECODE)
    assert ids.tolist() == [1, 0]
    np.testing.assert_allclose(scores, [sigmoid(3.0), sigmoid(2.0)], atol=1e-6)
    np.testing.assert_allclose(boxes, [[8.0, 8.0, 10.0, 10.0], [0.0, 0.0, 2.0, 2.0]], atol=1e-5)


def test_boxes_are_clipped_to_the_image_and_capped_in_number():
    raw = raw_map()
    # 240 x 16 frame px centred at (30, 30): 120 x 8 image px centred at (15, 15), 64 px wide
    put(raw, 0, 7, 7, 2.0, size=(math.log(60), math.log(4)))
    for col in range(0, 6, 2):
        put(raw, 0, 0, col, 1.0 + col / 10)
    boxes, _, _ = decode_head(raw, embedding(0), **DECODE)
    np.testing.assert_allclose(boxes[0], [0.0, 11.0, 64.0, 19.0], atol=1e-5)
    capped, scores, _ = decode_head(raw, embedding(0), **{**DECODE, "max_detections": 2})
    np.testing.assert_allclose(scores, [sigmoid(2.0), sigmoid(1.4)], atol=1e-6)
    assert len(capped) == 2


def test_head_input_stacks_k_minus_1_k_k_plus_1():
    before, center, after = embedding(1), embedding(2), embedding(3)
    stacked = head_input(center, [before, after], context=1)
    assert stacked.shape == (6, 8, 8) and stacked.dtype == np.float32
    assert stacked[::2, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert head_input(center, [before, after], context=0)[:, 0, 0].tolist() == [2.0, 2.0]


@pytest.mark.parametrize(
    ("neighbours", "expected"),
    [
        ([None, "after"], [2.0, 2.0, 3.0]),  # a volume's first slice: itself for k-1
        (["before", None], [1.0, 2.0, 2.0]),  # its last slice
        ([], [2.0, 2.0, 2.0]),  # a single image
    ],
)
def test_a_missing_neighbour_is_the_slice_itself(neighbours, expected):
    named = {"before": embedding(1), "after": embedding(3), None: None}
    stacked = head_input(embedding(2), [named[n] for n in neighbours], context=1)
    assert stacked[::2, 0, 0].tolist() == expected


def test_a_neighbour_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="neighbouring slice's embedding"):
        head_input(embedding(2), [embedding(1, grid=4), None], context=1)


class RecordingRunner:
    """A HeadRunner that answers a fixed raw map per image and keeps the batches it got."""

    precision = "fp32"

    def __init__(self, raw: np.ndarray) -> None:
        self.raw, self.batches = raw, []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch)
        return np.repeat(self.raw[None], len(batch), axis=0)


def test_the_detector_sends_one_batch_with_neighbours_and_filters_classes(tmp_path):
    from lesionseg.models.sam_head import HeadConfig

    raw = raw_map(classes=2)
    put(raw, 0, 2, 2, 2.0)
    put(raw, 1, 6, 6, 2.0)
    runner = RecordingRunner(raw)
    config = HeadConfig(classes=("a", "b"), context=1, embedding_channels=2)
    head = SamHeadDetector(runner, config, tmp_path / "head.onnx", classes=[1])
    slices = [embedding(z) for z in (1, 2, 3)]
    out = head.detect(slices, [[None, slices[1]], [slices[0], slices[2]], [slices[1], None]])
    (batch,) = runner.batches
    assert batch.shape == (3, 6, 8, 8)
    assert batch[:, ::2, 0, 0].tolist() == [[1, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert [d.labels for d in out] == [("b",)] * 3


def test_a_sam_head_bundle_reads_its_classes_from_the_head(tmp_path):
    directory = write_sam_head_bundle(tmp_path / "bundle")
    bundle = Bundle.load(directory)
    assert bundle.detector.architecture == "sam-head"
    assert detector_class_names(directory / "detector.pt") == list(bundle.classes)
    settings = effective_settings(Settings(backend="torch", model_dir=directory))
    assert settings.detector_kind == "sam-head"
    head = load_detector(settings)
    assert isinstance(head, SamHeadDetector) and head.names == dict(enumerate(bundle.classes))


def test_a_bundle_whose_classes_differ_from_its_head_is_refused(tmp_path):
    directory = write_sam_head_bundle(tmp_path / "bundle")
    record = json.loads((directory / "model.json").read_text())
    (directory / "model.json").write_text(json.dumps({**record, "classes": ["cyst"]}))
    with pytest.raises(ModelLoadError, match=r"lists classes \['cyst'\] but detector.pt detects"):
        Bundle.load(directory)


def test_the_stored_head_loads_as_the_model_store_keeps_it(tmp_path):
    """service.model_store stores a bundle's detector.pt as weights.pt beside bundle/; the
    torch backend's runtime settings point at that copy (service/runner.py)."""
    directory = write_sam_head_bundle(tmp_path / "bundle")
    stored = tmp_path / "store"
    Bundle.load(directory).copy_to(stored / "bundle")
    shutil.copyfile(directory / "detector.pt", stored / "weights.pt")
    settings = effective_settings(
        Settings(
            backend="torch", detector_weights=stored / "weights.pt", model_dir=stored / "bundle"
        )
    )
    head = load_sam_head(settings)
    assert head.weights == stored / "weights.pt" and head.config.context == 1


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_backends_need_the_head_export(tmp_path, backend):
    directory = write_sam_head_bundle(tmp_path / "bundle")
    settings = effective_settings(
        Settings(backend=backend, model_dir=directory, export_dir=tmp_path / "none")
    )
    with pytest.raises(ModelLoadError, match=f"{HEAD_ONNX}.*make export"):
        load_sam_head(settings)


def test_tensorrt_is_refused_for_the_head_with_the_way_out(tmp_path):
    directory = write_sam_head_bundle(tmp_path / "bundle")
    settings = effective_settings(
        Settings(backend="tensorrt", device="cuda", model_dir=directory, export_dir=tmp_path)
    )
    with pytest.raises(ModelLoadError, match=r"no TensorRT runner.*LESIONSEG_BACKEND=onnxruntime"):
        load_sam_head(settings)
