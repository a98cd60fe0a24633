import numpy as np
import pytest

from lesionseg.bundle import SHIPPED_BUNDLE, Bundle
from lesionseg.detector import Detector
from lesionseg.errors import ModelLoadError
from lesionseg.settings import DEFAULT_DETECTOR

from .conftest import disk


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
        Detector(tmp_path / "yolov8n.pt")  # a bare ultralytics name would trigger a download


def test_shipped_bundle_has_a_record():
    # Only what the bundle format promises: the shipped bundle is retrained from time to time.
    bundle = Bundle.load(SHIPPED_BUNDLE)
    assert bundle.detector.weights == DEFAULT_DETECTOR and bundle.classes
    assert {"dataset", "split", "metrics", "training"} <= set(bundle.record)


def test_loading_the_detector_leaves_pillow_alone(detector):
    from PIL import Image

    from lesionseg.errors import InvalidImageError
    from lesionseg.imaging import decode_image

    assert Image.open.__module__.startswith("PIL")
    with pytest.raises(InvalidImageError, match="not a readable image"):
        decode_image(b"definitely not an image", max_pixels=100)


def test_detections_do_not_depend_on_the_batch(lits, detector):
    images = [lits.slice(110).image, lits.slice(120).image[:100, :80], lits.slice(105).image]
    alone = [detector.detect([im], score_threshold=0.05)[0] for im in images]
    together = detector.detect(images, score_threshold=0.05)
    for a, b in zip(alone, together, strict=True):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
