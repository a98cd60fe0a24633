import numpy as np
import pytest

from lesionseg.errors import InvalidBoxesError
from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.engine import LesionPipeline, area_mm2, filter_detections
from lesionseg.settings import Settings
from lesionseg.types import Detections, MedicalImage

from .conftest import disk


class BrightSpotDetector:
    """Boxes the bright pixels of each image: a detector whose answer we know."""

    def detect(self, images, *, score_threshold=None, max_detections=None):
        out = []
        for image in images:
            ys, xs = np.nonzero(image[:, :, 0] > 128)
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
            out.append(Detections(box, np.array([0.9], np.float32), np.array([0]), ("lesion",)))
        return out


@pytest.fixture(scope="module")
def pipeline(tiny_hf_sam_dir):
    segmenter = Segmenter.from_settings(
        Settings(backend="torch", sam_family="hf", sam_path=tiny_hf_sam_dir)
    )
    return LesionPipeline(BrightSpotDetector(), segmenter)


SPOTS = [(100, 80, 20, 20, 6), (60, 120, 30, 90, 8), (70, 70, 50, 15, 4), (90, 40, 70, 30, 5)]


def test_batch_results_keep_input_order(pipeline):
    images = [MedicalImage(disk(*spot)) for spot in SPOTS]
    results = pipeline.segment(images)
    assert len(results) == len(SPOTS)
    for result, (h, w, cy, cx, _r) in zip(results, SPOTS, strict=True):
        assert (result.height, result.width) == (h, w)
        (lesion,) = result.lesions
        x0, y0, x1, y1 = lesion.box
        assert (x0 + x1) / 2 == pytest.approx(cx + 0.5) and (y0 + y1) / 2 == pytest.approx(cy + 0.5)
        assert lesion.mask.shape == (h, w) and lesion.area_px == int(lesion.mask.sum())
        assert lesion.area_mm2 is None and set(result.timings_ms) == {"detect", "embed", "decode"}


def test_prompted_boxes_keep_their_order_and_spacing_gives_mm2(pipeline):
    image = MedicalImage(disk(64, 64, 32, 32, 8), pixel_spacing_mm=(0.5, 0.8))
    boxes = [[40, 40, 60, 60], [0, 0, 10, 10], [20, 20, 44, 44]]
    (result,) = pipeline.segment_boxes([image], [boxes])
    assert [list(lesion.box) for lesion in result.lesions] == boxes
    assert all(lesion.label == "lesion" and lesion.score == 1.0 for lesion in result.lesions)
    for lesion in result.lesions:
        assert lesion.area_mm2 == pytest.approx(lesion.area_px * 0.4)


def test_images_without_boxes_skip_the_encoder(pipeline):
    images = [MedicalImage(disk(30, 30, 15, 15, 3)), MedicalImage(disk(40, 50, 20, 20, 4))]
    results = pipeline.segment_boxes(images, [[], [[10, 10, 30, 30]]])
    assert [len(r.lesions) for r in results] == [0, 1]
    assert results[0].width == 30 and results[1].lesions[0].mask.shape == (40, 50)


def test_bad_boxes_are_rejected_before_any_model_work(pipeline):
    with pytest.raises(InvalidBoxesError):
        pipeline.segment_boxes([MedicalImage(disk(30, 30, 15, 15, 3))], [[[5, 5, 1, 1]]])


def test_filter_stage():
    det = Detections(
        np.array([[-5, 0, 10, 10], [0, 0, 5, 5], [50, 50, 60, 60], [1, 1, 2, 2]], np.float32),
        np.array([0.9, 0.8, 0.7, 0.1], np.float32),
        np.zeros(4, np.int64),
        ("a", "b", "c", "d"),
    )
    kept = filter_detections(det, (40, 40), score_threshold=0.2, max_lesions=10)
    assert kept.labels == ("a", "b")  # c lies outside the image, d is below the threshold
    np.testing.assert_array_equal(kept.boxes[0], [0, 0, 10, 10])
    assert filter_detections(det, (40, 40), score_threshold=0.0, max_lesions=1).labels == ("a",)
    grown = filter_detections(det, (40, 40), score_threshold=0.2, max_lesions=10, box_margin=0.2)
    assert grown.labels == kept.labels  # the margin applies to the kept boxes only
    np.testing.assert_allclose(grown.boxes, [[0, 0, 12, 12], [0, 0, 6, 6]])
    assert area_mm2(10, None) is None and area_mm2(10, (0.5, 2.0)) == 10.0


def test_box_margin_grows_the_detector_boxes(pipeline):
    image = MedicalImage(disk(100, 80, 20, 20, 6))
    wide = LesionPipeline(pipeline.detector, pipeline.segmenter, box_margin=0.5)
    (plain_result,) = pipeline.segment([image])
    (wide_result,) = wide.segment([image])
    x0, y0, x1, y1 = plain_result.lesions[0].box
    dw, dh = (x1 - x0) / 2, (y1 - y0) / 2
    np.testing.assert_allclose(wide_result.lesions[0].box, [x0 - dw, y0 - dh, x1 + dw, y1 + dh])
