"""The engine (lesionseg.pipeline.engine) with a stand-in detector and a tiny SAM."""

import asyncio

import numpy as np
import pytest

from lesionseg.errors import InputError, InvalidBoxesError
from lesionseg.io.uploads import Upload
from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.engine import LesionEngine
from lesionseg.pipeline.local import LocalModels
from lesionseg.pipeline.prediction import Options
from lesionseg.pipeline.results import area_mm2, filter_detections
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
def models(tiny_hf_sam_dir):
    segmenter = Segmenter.from_settings(
        Settings(backend="torch", sam_family="hf", sam_path=tiny_hf_sam_dir)
    )
    return LocalModels(BrightSpotDetector(), segmenter)


def engine_of(models: LocalModels, **settings) -> LesionEngine:
    return LesionEngine.from_settings(
        Settings(**settings), models.detect, models.embed, models.segmenter
    )


@pytest.fixture(scope="module")
def pipeline(models):
    """Synchronous calls of the engine, as a test reads them."""

    class Sync:
        def __init__(self, engine):
            self.engine = engine

        def segment(self, images, options=None):
            return asyncio.run(self.engine.segment(images, options or Options()))

        def run(self, uploads, options=None):
            return asyncio.run(self.engine.run(uploads, options or Options()))

    return Sync(engine_of(models, max_batch_size=3))


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
        assert lesion.area_mm2 is None
        assert set(result.timings_ms) == {"detect", "embed", "mask_decode"}


def test_prompted_boxes_keep_their_order_and_spacing_gives_mm2(pipeline):
    image = MedicalImage(disk(64, 64, 32, 32, 8), pixel_spacing_mm=(0.5, 0.8))
    boxes = [[40, 40, 60, 60], [0, 0, 10, 10], [20, 20, 44, 44]]
    (result,) = pipeline.segment([image], Options(boxes))
    assert [list(lesion.box) for lesion in result.lesions] == boxes
    assert all(lesion.label == "lesion" and lesion.score == 1.0 for lesion in result.lesions)
    for lesion in result.lesions:
        assert lesion.area_mm2 == pytest.approx(lesion.area_px * 0.4)


def test_images_without_boxes_skip_the_encoder(pipeline):
    images = [MedicalImage(disk(30, 30, 15, 15, 3)), MedicalImage(disk(40, 50, 20, 20, 4))]
    results = pipeline.segment(images, Options([[10, 10, 30, 30, 1]]))
    assert [len(r.lesions) for r in results] == [0, 1]
    assert "embed" not in results[0].timings_ms and "embed" in results[1].timings_ms
    assert results[0].width == 30 and results[1].lesions[0].mask.shape == (40, 50)


def test_bad_input_is_rejected_before_any_model_work(models):
    async def no_model(images):
        raise AssertionError("a model was called")

    engine = LesionEngine.from_settings(
        Settings(), no_model, no_model, models.segmenter, score_floor=0.1
    )
    images = [MedicalImage(disk(30, 30, 15, 15, 3)), MedicalImage(disk(30, 30, 15, 15, 3))]
    bad = [
        (images[:1], [[5, 5, 1, 1]]),  # empty
        (images, [[1, 1, 5, 5, 0], [5, 5, 1, 1, 1]]),  # the second is empty
        (images, [[1, 1, 5, 5]]),  # which frame?
        (images, [[1, 1, 5, 5, 2]]),  # no frame 2
    ]
    for frames, boxes in bad:
        with pytest.raises(InvalidBoxesError):
            asyncio.run(engine.segment(frames, Options(boxes)))
    with pytest.raises(InputError, match=r"below the service's floor of 0\.1"):
        asyncio.run(engine.segment(images, Options(score_threshold=0.05)))
    with pytest.raises(InputError, match="propagate needs boxes"):
        asyncio.run(engine.run([Upload(tuple(images))], Options(propagate=True)))


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


def test_box_margin_grows_the_detector_boxes(pipeline, models):
    image = MedicalImage(disk(100, 80, 20, 20, 6))
    wide = engine_of(models, box_margin=0.5)
    (plain_result,) = pipeline.segment([image])
    (wide_result,) = asyncio.run(wide.segment([image]))
    x0, y0, x1, y1 = plain_result.lesions[0].box
    dw, dh = (x1 - x0) / 2, (y1 - y0) / 2
    np.testing.assert_allclose(wide_result.lesions[0].box, [x0 - dw, y0 - dh, x1 + dw, y1 + dh])


def test_threshold_and_lesion_count_of_a_request(models):
    class TwoBoxes:
        async def __call__(self, images):
            boxes = np.array([[10, 10, 30, 30], [40, 40, 60, 60]], np.float32)
            scores = np.array([0.9, 0.4], np.float32)
            return [Detections(boxes, scores, np.zeros(2, np.int64), ("a", "b")) for _ in images]

    engine = LesionEngine.from_settings(
        Settings(score_threshold=0.25), TwoBoxes(), models.embed, models.segmenter
    )
    image = MedicalImage(disk(80, 80, 20, 20, 6))
    count = lambda options: len(asyncio.run(engine.segment([image], options))[0].lesions)  # noqa: E731
    assert count(Options()) == 2
    assert count(Options(score_threshold=0.5)) == 1
    assert count(Options(max_lesions=1)) == 1


def test_a_volume_links_its_frames_and_a_single_image_does_not(pipeline):
    frames = tuple(MedicalImage(disk(64, 64, 32, 32, r)) for r in (5, 6, 5))
    single = pipeline.run([Upload(frames[:1])])
    assert not single.volume and single.lesion_ids is None and single.lesions_3d == ()
    volume = pipeline.run([Upload(frames)])
    assert volume.volume and volume.lesion_ids == [[1], [1], [1]]  # one disk through 3 frames
    (lesion,) = volume.lesions_3d
    assert lesion.frames == (0, 1, 2) or list(lesion.frames) == [0, 1, 2]
    assert lesion.voxels == sum(r.lesions[0].area_px for r in volume.results)
