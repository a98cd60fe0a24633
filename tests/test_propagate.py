"""Propagation's plan and stopping rules with a stand-in decoder (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from lesionseg.pipeline.propagate import Propagation, propagate
from lesionseg.types import MaskPrediction, MedicalImage

H = W = 48


def disk(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def volume(lesion: dict[int, np.ndarray], organ: float = 30) -> list[MedicalImage]:
    """Frames of grey ``organ`` with the lesion (200) drawn where given."""
    frames = []
    for f in range(12):
        gray = np.full((H, W), organ, np.uint8)
        if f in lesion:
            gray[lesion[f]] = 200
        frames.append(MedicalImage(np.repeat(gray[:, :, None], 3, axis=2)))
    return frames


class StandIn:
    """Segments, inside each box, the lesion when there is one, else whatever ``other`` says;
    records the calls."""

    def __init__(self, lesion, other=None, iou=0.9):
        self.lesion, self.other, self.iou, self.calls = lesion, other or {}, iou, []

    def __call__(self, pending: dict[int, np.ndarray]) -> dict[int, MaskPrediction]:
        self.calls.append({f: len(b) for f, b in pending.items()})
        out = {}
        for f, boxes in pending.items():
            masks = []
            for x0, y0, x1, y1 in boxes:
                inside = np.zeros((H, W), bool)
                inside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
                found = self.lesion.get(f, np.zeros((H, W), bool)) & inside
                masks.append(found if found.any() else self.other.get(f, found))
            iou = np.full(len(boxes), self.iou(f) if callable(self.iou) else self.iou, np.float32)
            out[f] = MaskPrediction(np.array(masks), iou, np.zeros((len(boxes), 4, 4)))
        return out


LESION = {f: disk(20, 24, 9 - abs(f - 6) * 2.0) for f in range(3, 10)}  # frames 3..9


def run(lesion, frames, decode, **kwargs):
    return propagate(Propagation([(6, np.array([14, 10, 34, 30]))], frames, **kwargs), decode)


def test_both_ways_until_the_mask_is_empty():
    decode = StandIn(LESION)
    prop = run(LESION, volume(LESION), decode)
    assert sorted(prop.found[0]) == list(range(3, 10))
    assert prop.stopped[0] == {-1: "empty mask", 1: "empty mask"}
    for f, (_, mask, _) in prop.found[0].items():
        np.testing.assert_array_equal(mask, LESION[f])
    results, ids = prop.results()
    assert [len(r.lesions) for r in results] == [0, 0, 0] + [1] * 7 + [0, 0]
    assert ids[6] == [1] and results[6].lesions[0].label == "lesion"
    assert decode.calls[1] == {5: 1, 7: 1}  # both directions decoded in the same step


def test_stops_on_a_surrounding_organ_by_intensity():
    organ = {f: disk(20, 24, 3) for f in (0, 1, 2, 10, 11)}  # SAM outlines the organ instead
    prop = run(LESION, volume(LESION, organ=170), StandIn(LESION, other=organ))
    assert sorted(prop.found[0]) == list(range(3, 10))
    assert "mean intensity" in prop.stopped[0][-1] and "mean intensity" in prop.stopped[0][1]
    kept = run(LESION, volume(LESION, organ=170), StandIn(LESION, other=organ),
               max_intensity_shift=255)  # fmt: skip
    assert sorted(kept.found[0]) == list(range(0, 12))


@pytest.mark.parametrize(
    ("other", "iou", "why"),
    [
        ({}, lambda f: 0.3 if f == 8 else 0.9, "predicted IoU"),
        ({8: disk(20, 24, 20)}, 0.9, "area jumped"),
        ({8: disk(44, 4, 3)}, 0.9, "no longer overlaps"),
    ],
)
def test_stops_on_low_iou_area_jumps_and_jumps_away(other, iou, why):
    lesion = {f: m for f, m in LESION.items() if f != 8 or not other}  # else `other` on 8
    prop = run(lesion, volume(lesion, organ=200), StandIn(lesion, other, iou))
    assert sorted(prop.found[0]) == list(range(3, 8)) and why in prop.stopped[0][1]


def test_follows_the_spatial_order_and_shares_frames_between_lesions():
    second = {f: disk(36, 36, 5) for f in range(0, 12)}
    both = {f: LESION.get(f, np.zeros((H, W), bool)) | second[f] for f in range(12)}
    order = np.arange(12)[::-1]  # frames stored head to feet: same neighbours, reversed
    decode = StandIn(both)
    prop = propagate(
        Propagation(
            [(6, np.array([14, 10, 34, 30])), (6, np.array([30, 30, 42, 42]))], volume(both), order
        ),
        decode,
    )
    assert sorted(prop.found[0]) == list(range(3, 10)) and sorted(prop.found[1]) == list(range(12))
    assert decode.calls[0] == {6: 2} and decode.calls[1] == {5: 2, 7: 2}
    assert prop.stopped[1] == {-1: "end of volume", 1: "end of volume"}
    _, ids = prop.results()
    assert ids[6] == [1, 2] and ids[0] == [2]


def test_the_engine_propagates_as_the_plan_says_and_embeds_each_frame_once():
    """LesionEngine.propagate (what the CLI and the service run) with stand-in models: the
    lesions of :func:`propagate`, each frame's embedding asked for once."""
    import asyncio

    from lesionseg.pipeline.engine import LesionEngine
    from lesionseg.settings import Settings

    frames = volume(LESION)
    embedded: list[int] = []

    async def embed(images):
        indices = [next(i for i, f in enumerate(frames) if f is im) for im in images]
        embedded.extend(indices)
        return indices  # the stand-in decoder only needs to know the frame

    class Segmenter:
        def predict(self, embeddings, boxes, *, refine_iterations=None):
            masks = StandIn(LESION)(dict(zip(embeddings, boxes, strict=True)))
            return [masks[f] for f in embeddings]

    async def no_detector(images):
        raise AssertionError("propagation runs no detector")

    engine = LesionEngine.from_settings(Settings(), no_detector, embed, Segmenter())
    results, ids = asyncio.run(engine.propagate(frames, [[14, 10, 34, 30, 6]]))
    expected, expected_ids = run(LESION, frames, StandIn(LESION)).results()
    assert ids == expected_ids
    for got, want in zip(results, expected, strict=True):
        assert [x.box for x in got.lesions] == [x.box for x in want.lesions]
        for a, b in zip(got.lesions, want.lesions, strict=True):
            np.testing.assert_array_equal(a.mask, b.mask)
    assert sorted(embedded) == sorted(set(embedded)) == list(range(2, 11))
