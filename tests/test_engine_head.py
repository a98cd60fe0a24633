"""The engine with a SAM head: every frame embedded once (chunks, neighbours and masks share
the embeddings), each slice's neighbours taken in spatial order, single images alone, and the
request's threshold and lesion limit applied to the head's boxes; and, for contrast, an image
detector (YOLO) as the slice filter: only the frames it boxes are embedded."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.engine import LesionEngine, _neighbours
from lesionseg.pipeline.prediction import Options
from lesionseg.settings import Settings
from lesionseg.types import Detections, MedicalImage


class RecordingHead:
    """A head that boxes the bright pixels of each slice (score = the slice's brightness / 255)
    and records, per call, each slice's own value and its neighbours' values."""

    context = 1

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, list[int]]]] = []

    def detect(self, embeddings, neighbours=None):
        value = lambda e: int(e.features[0, 0, 0])  # noqa: E731 - the fake embedding's id
        pairs = zip(embeddings, neighbours, strict=True)
        self.calls.append([(value(e), [value(n) for n in ns]) for e, ns in pairs])
        out = []
        for e in embeddings:
            score = np.float32(value(e) / 255)
            box = np.array([[2, 2, 12, 12]], np.float32)
            out.append(Detections(box, np.array([score]), np.array([0]), ("lesion",)))
        return out


@pytest.fixture(scope="module")
def segmenter(tiny_hf_sam_dir):
    return Segmenter.from_settings(
        Settings(backend="torch", sam_family="hf", sam_path=tiny_hf_sam_dir)
    )


def _engine(segmenter, head, embedded: list[int], **settings) -> LesionEngine:
    async def embed(images):
        embedded.extend(int(im.pixels[0, 0, 0]) for im in images)
        real = await asyncio.to_thread(segmenter.embed, [im.pixels for im in images])
        for e, im in zip(real, images, strict=True):  # the frame's id in a corner of its embedding
            e.features[0, 0, 0] = im.pixels[0, 0, 0]
        return real

    async def detect(images):
        raise AssertionError("with a head, the image detector is never called")

    return LesionEngine.from_settings(
        Settings(**settings), detect, embed, segmenter, head=head, score_floor=0.0
    )


def _frames(values) -> list[MedicalImage]:
    frames = []
    for v in values:
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[0, 0] = v  # the frame's id
        pixels[4:10, 4:10] = 200
        frames.append(MedicalImage(pixels))
    return frames


def test_every_frame_is_embedded_once_and_sees_its_spatial_neighbours(segmenter):
    head, embedded = RecordingHead(), []
    engine = _engine(segmenter, head, embedded, max_batch_size=2, score_threshold=0.0)
    frames = _frames([10, 20, 30, 40, 50])
    order = np.array([2, 0, 1, 4, 3])  # frame 2 lies first in space, then 0, 1, 4, 3
    results = asyncio.run(engine.segment(frames, Options(), order=order))
    assert sorted(embedded) == [10, 20, 30, 40, 50]  # once each, masks included
    seen = dict(pair for call in head.calls for pair in call)
    # neighbours (before, after) in space; a volume's end stands in for itself
    assert seen == {
        30: [30, 10],
        10: [30, 20],
        20: [10, 50],
        50: [20, 40],
        40: [50, 40],
    }
    assert [len(c) for c in head.calls] == [2, 2, 1]  # frames_in_flight chunks
    assert all(len(r.lesions) == 1 for r in results)


def test_unrelated_images_are_their_own_neighbours(segmenter):
    head, embedded = RecordingHead(), []
    engine = _engine(segmenter, head, embedded, max_batch_size=4, score_threshold=0.0)
    asyncio.run(engine.segment(_frames([10, 20]), Options()))
    assert dict(head.calls[0]) == {10: [10, 10], 20: [20, 20]}


def test_the_request_threshold_filters_the_heads_boxes(segmenter):
    head, embedded = RecordingHead(), []
    engine = _engine(segmenter, head, embedded, max_batch_size=4, score_threshold=0.0)
    frames = _frames([51, 153])  # scores 0.2 and 0.6
    results = asyncio.run(engine.segment(frames, Options(score_threshold=0.5)))
    assert [len(r.lesions) for r in results] == [0, 1]
    assert sorted(embedded) == [51, 153]  # the frame without boxes is not embedded again


def test_with_an_image_detector_only_the_frames_it_boxes_are_embedded(segmenter):
    """The YOLO bundle's slice filter: a frame without a box costs the detector only."""
    embedded, detected = [], []
    engine = _engine(segmenter, None, embedded, max_batch_size=3, score_threshold=0.3)

    async def detect(images):  # boxes the frames whose id is over 100, at score 0.9
        detected.extend(int(im.pixels[0, 0, 0]) for im in images)
        out = []
        for im in images:
            hit = int(im.pixels[0, 0, 0]) > 100
            boxes = np.array([[2, 2, 12, 12]] if hit else np.zeros((0, 4)), np.float32)
            scores = np.array([0.9] if hit else [], np.float32)
            labels = ("lesion",) * len(scores)
            out.append(Detections(boxes, scores, np.zeros(len(scores), np.int64), labels))
        return out

    engine.detect = detect
    frames = _frames([10, 120, 20, 130, 30])
    results = asyncio.run(engine.segment(frames, Options(), order=np.arange(5)))
    assert sorted(detected) == [10, 20, 30, 120, 130]
    assert sorted(embedded) == [120, 130]
    assert [len(r.lesions) for r in results] == [0, 1, 0, 1, 0]


def test_neighbours_of_a_volume_and_of_unrelated_images():
    assert _neighbours(3, np.array([0, 1, 2]), 1) == [[0, 1], [0, 2], [1, 2]]
    assert _neighbours(2, None, 1) == [[0, 0], [1, 1]]
    assert _neighbours(2, np.array([1, 0]), 0) == [[], []]
