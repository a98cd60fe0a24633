from pathlib import Path

import numpy as np
import pytest

from lesionseg.errors import ModelLoadError
from lesionseg.models.bundle import SHIPPED_BUNDLE, Bundle
from lesionseg.models.detector import Detector, UltralyticsDetector

from .conftest import assert_same_detections, disk


def test_detector_on_tiny_images_batch(detector):
    images = [disk(64, 64, 32, 32, 6), disk(40, 90, 20, 45, 5)]
    out = detector.detect(images, score_threshold=0.0)
    assert len(out) == 2
    for det, image in zip(out, images, strict=True):
        h, w = image.shape[:2]
        assert det.boxes.shape == (len(det), 4) and det.boxes.dtype == np.float32
        assert np.all(det.boxes[:, [0, 2]] <= w + 1e-3) and np.all(det.boxes[:, [1, 3]] <= h + 1e-3)
        assert np.all(np.diff(det.scores) <= 0)
        assert set(det.labels) <= set(detector.names.values())


def test_detector_limits(detector):
    out = detector.detect([disk(64, 64, 32, 32, 6)], score_threshold=0.0, max_detections=2)
    assert len(out[0]) <= 2
    assert detector.detect([]) == []


def test_missing_weights_never_download(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        UltralyticsDetector(tmp_path / "yolov8n.pt")  # a bare name would trigger a download


def test_shipped_bundle_has_a_record():
    # Only what the bundle format promises: the shipped bundle is retrained from time to time.
    bundle = Bundle.load(SHIPPED_BUNDLE)
    assert bundle.detector.weights == SHIPPED_BUNDLE / "detector.pt" and bundle.classes
    assert {"dataset", "split", "metrics", "training"} <= set(bundle.record)


def test_loading_the_detector_leaves_pillow_alone(detector):
    from PIL import Image

    from lesionseg.errors import InvalidImageError
    from lesionseg.io.images import decode_image

    assert Image.open.__module__.startswith("PIL")
    with pytest.raises(InvalidImageError, match="not a readable image"):
        decode_image(b"definitely not an image", max_pixels=100)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_detections_do_not_depend_on_the_batch(lits, backend, request):
    detector = request.getfixturevalue("detector" if backend == "torch" else "onnx_detector")
    images = [lits.slice(110).image, lits.slice(120).image[:100, :80], lits.slice(105).image]
    alone = [detector.detect([im], score_threshold=0.05)[0] for im in images]
    together = detector.detect(images, score_threshold=0.05)
    for a, b in zip(alone, together, strict=True):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


# --- the numpy decoding and the runners (lesionseg.models.yolo, lesionseg.models.backends)
# -------------------


class FakeRunner:
    """A DetectorRunner with a hand-made head output: 2 classes, 4 anchors, S = 100."""

    def __init__(self):
        self.names = {0: "tumour", 1: "cyst"}
        self.image_size = 100

    def run(self, batch):
        assert batch.shape[1:] == (3, 100, 100) and batch.dtype == np.float32
        assert batch.min() >= 0.0 and batch.max() <= 1.0
        raw = np.array(  # columns: anchors; rows: cx, cy, w, h, score tumour, score cyst
            [
                [30, 32, 31, 48],
                [30, 31, 30, 80],
                [20, 20, 20, 10],
                [20, 20, 20, 10],
                [0.9, 0.8, 0.1, 0.2],
                [0.1, 0.2, 0.7, 0.05],
            ],
            np.float32,
        )
        return np.repeat(raw[None], len(batch), axis=0)


def test_detector_over_a_runner_decodes_in_original_pixels():
    detector = Detector(FakeRunner(), Path("fake.onnx"), score_threshold=0.25)
    assert detector.image_size == 100 and detector.names == {0: "tumour", 1: "cyst"}
    image = np.zeros((200, 100, 3), np.uint8)  # letterboxed to 50 x 100: boxes scale by 2
    (found,) = detector.detect([image])
    # Anchor 1 overlaps anchor 0 (IoU 0.75) in the same class: it goes. Anchor 2 overlaps
    # anchor 0 in another class: kept. Anchor 3 scores 0.2, below the threshold.
    assert found.labels == ("tumour", "cyst")
    np.testing.assert_array_equal(found.class_ids, [0, 1])
    np.testing.assert_allclose(found.scores, [0.9, 0.7])
    np.testing.assert_allclose(found.boxes, [[40, 40, 80, 80], [42, 40, 82, 80]])
    (low,) = detector.detect([image], score_threshold=0.1)
    assert low.labels == ("tumour", "cyst", "tumour")
    np.testing.assert_allclose(low.boxes[2], [86, 150, 100, 170])  # x1 = 106 clipped
    (one,) = detector.detect([image], score_threshold=0.1, max_detections=1)
    assert one.labels == ("tumour",)


def _random_head(seed: int, classes: int = 3, anchors: int = 400) -> np.ndarray:
    """(1, 4 + K, A) head output with clustered boxes and tied scores, so that NMS and the
    order of equal scores matter."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 236, (anchors // 20, 2)).repeat(20, axis=0)
    xy = centres + rng.normal(0, 3, (anchors, 2))
    wh = rng.uniform(4, 40, (anchors, 2))
    scores = np.round(rng.uniform(0, 1, (anchors, classes)) ** 3, 2)  # ties
    return np.concatenate([xy, wh, scores], axis=1).T[None].astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("conf", "iou", "classes", "max_det"),
    [(0.25, 0.5, None, 50), (0.01, 0.7, None, 300), (0.1, 0.45, [0, 2], 50), (0.05, 0.5, None, 7)],
)
def test_decode_equals_ultralytics_nms(seed, conf, iou, classes, max_det):
    import torch
    import torchvision  # noqa: F401  (ultralytics takes torchvision's nms when it is loaded)

    from lesionseg.models.detector import import_yolo
    from lesionseg.models.yolo import decode

    import_yolo()
    from ultralytics.utils.nms import non_max_suppression

    raw = _random_head(seed)
    (ref,) = non_max_suppression(
        torch.from_numpy(raw), conf, iou, classes=classes, agnostic=False, max_det=max_det
    )
    ref = ref.numpy()
    boxes, scores, class_ids = decode(
        raw[0], score_threshold=conf, iou_threshold=iou, max_detections=max_det, classes=classes
    )
    assert len(ref) > 5  # NMS had something to keep and to drop
    np.testing.assert_array_equal(boxes, ref[:, :4])
    np.testing.assert_array_equal(scores, ref[:, 4])
    np.testing.assert_array_equal(class_ids, ref[:, 5].astype(np.int64))


@pytest.fixture(scope="module")
def onnx_detector(served_export):
    from lesionseg.models.bundle_settings import effective_settings
    from lesionseg.settings import Settings

    settings = Settings(backend="onnxruntime", export_dir=served_export)
    return Detector.from_settings(effective_settings(settings))


@pytest.mark.slow
def test_numpy_decoding_of_the_network_is_ultralytics_own(detector, lits):
    # The same head output, decoded by ultralytics (predict) and by lesionseg.models.yolo:
    # identical.
    ours = Detector(detector, detector.weights, nms_iou_threshold=detector.nms_iou_threshold)
    images = [s.image for s in lits.slices("val")]
    for threshold in (0.3, 0.01):
        ref = detector.detect(images, score_threshold=threshold)
        got = ours.detect(images, score_threshold=threshold)
        assert sum(map(len, ref)) > len(images)
        for r, g in zip(ref, got, strict=True):
            assert r.labels == g.labels
            np.testing.assert_array_equal(r.boxes, g.boxes)
            np.testing.assert_array_equal(r.scores, g.scores)


@pytest.mark.slow
def test_onnx_detector_matches_ultralytics_on_lits_validation(detector, onnx_detector, lits):
    assert type(onnx_detector) is Detector  # onnxruntime + numpy, no ultralytics
    assert_same_detections(detector, onnx_detector, lits, min_iou=0.999, max_score_diff=1e-4)
