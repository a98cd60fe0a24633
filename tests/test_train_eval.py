"""The measuring and bookkeeping parts of ``lesionseg train`` on hand-made inputs (no models):
lesion scores, threshold/margin tuning, the YOLO dataset writer, the Stopper."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lesionseg.datasets import Frame
from lesionseg.measure.evaluation import LesionScores, assign_instances
from lesionseg.train import evaluate
from lesionseg.train.common import Stopper
from lesionseg.train.train_detector import write_yolo_dataset
from lesionseg.types import Detections
from service.launcher import REPO_ROOT

HW = (64, 64)


def _rect(r0: int, c0: int, r1: int, c1: int, hw: tuple[int, int] = HW) -> np.ndarray:
    mask = np.zeros(hw, bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _frame(name: str, masks: list[np.ndarray], labels=None, hw=HW) -> Frame:
    stack = np.array(masks, bool).reshape(len(masks), *hw)
    ids = np.zeros(len(masks), np.int64) if labels is None else np.array(labels, np.int64)
    return Frame(name, np.zeros((*hw, 3), np.uint8), stack, ids)


A, C = _rect(5, 5, 15, 15), _rect(30, 30, 40, 40)  # 100 px lesions
SMALL = _rect(50, 50, 53, 53)  # 9 px: below the counted size


def test_prompted_scores_one_dice_per_counted_lesion():
    scores = LesionScores()
    half_a = _rect(5, 5, 15, 10)  # 50 of A's 100 px
    scores.add(np.stack([half_a, SMALL]), np.stack([A, SMALL]), prompted=True, min_area=20)
    assert scores.dices == pytest.approx([2 * 50 / 150])
    assert scores.false_positives == 0


def test_automatic_scores_union_per_lesion_and_false_positives():
    scores = LesionScores()
    pred = [
        A,  # Dice 1
        _rect(30, 30, 40, 35),  # two instances on C: their union, 80 of 100 px
        _rect(30, 35, 40, 38),
        _rect(50, 5, 56, 11),  # 36 px on no lesion: a false positive
        _rect(0, 60, 2, 62),  # 4 px on no lesion: too small to count
        _rect(50, 50, 60, 60),  # on the small lesion: neither scored nor a false positive
    ]
    scores.add(np.stack(pred), np.stack([A, C, SMALL]), prompted=False, min_area=20)
    assert scores.dices == pytest.approx([1.0, 2 * 80 / 180])
    assert scores.false_positives == 1
    assert scores.lesion_dice == pytest.approx((1 + 160 / 180) / 2)
    assert scores.fp_penalised_dice == pytest.approx((1 + 160 / 180) / 3)
    scores.add(_rect(0, 0, 10, 10)[None], np.zeros((0, *HW), bool), prompted=False, min_area=20)
    assert scores.false_positives == 2 and len(scores.dices) == 2
    missed = LesionScores()
    missed.add(np.zeros((0, *HW), bool), np.stack([A]), prompted=False, min_area=20)
    assert missed.dices == [0.0]
    assert LesionScores().lesion_dice is None and LesionScores().fp_penalised_dice is None


def test_an_instance_goes_to_the_lesion_it_overlaps_most():
    bar = _rect(12, 5, 34, 15) | _rect(30, 10, 34, 40)  # 30 px of A, 40 px of C
    assert (bar & A).sum() == 30 and (bar & C).sum() == 40
    per_lesion = assign_instances(np.stack([bar, _rect(50, 0, 60, 4)]), np.stack([A, C]))
    assert not per_lesion[0].any()
    np.testing.assert_array_equal(per_lesion[1], bar)


class _BoxSam:
    """A stand-in for evaluate.SamEvaluator: every box prompt's mask is the box itself."""

    def __init__(self, frames):
        self.frames = frames
        self.prompts = []

    def masks(self, boxes):
        self.prompts.append([np.asarray(b).copy() for b in boxes])
        return [
            np.array([_rect(round(y0), round(x0), round(y1), round(x1)) for x0, y0, x1, y1 in b])
            .reshape(-1, *HW)
            .astype(bool)
            for b in boxes
        ]


def _detections(boxes, scores, classes=None) -> Detections:
    classes = [0] * len(boxes) if classes is None else classes
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(classes, np.int64),
        tuple(f"c{c}" for c in classes),
    )


LESION = _rect(20, 20, 40, 40)  # 400 px, box (20, 20, 40, 40)


def test_tune_picks_the_best_threshold_and_margin():
    frames = [_frame("f/lesion", [LESION]), _frame("f/empty", [])]
    detections = [
        _detections([[20, 20, 40, 40], [0, 0, 10, 10]], [0.6, 0.2]),  # the lesion; a 100 px FP
        _detections([[50, 50, 60, 60]], [0.25]),  # a FP on a frame without lesion
    ]
    sam = _BoxSam(frames)
    best, grid = evaluate.tune(
        sam, detections, min_area=20, thresholds=(0.1, 0.3, 0.7), margins=(0.0, 0.1)
    )
    assert len(grid) == 6 and len(sam.prompts) == 2  # one SAM pass per margin
    np.testing.assert_allclose(sam.prompts[1][0][0], [18, 18, 42, 42])  # grown by 10 % a side
    cells = {(r["score_threshold"], r["box_margin"]): r for r in grid}
    assert cells[0.1, 0.0]["fp_penalised_dice"] == pytest.approx(1 / 3, abs=1e-4)
    assert cells[0.1, 0.0]["det_recall"] == 1.0
    assert cells[0.1, 0.0]["det_precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert cells[0.7, 0.0]["lesion_dice"] == 0.0 and cells[0.7, 0.0]["det_recall"] == 0.0
    assert cells[0.3, 0.1]["lesion_dice"] == pytest.approx(800 / (400 + 576), abs=1e-4)
    assert (best["score_threshold"], best["box_margin"]) == (0.3, 0.0)
    assert best["fp_penalised_dice"] == 1.0 and best["det_precision"] == 1.0
    by_dice, _ = evaluate.tune(
        sam, detections, min_area=20, objective="lesion_dice", thresholds=(0.7, 0.1)
    )
    assert (by_dice["score_threshold"], by_dice["lesion_dice"]) == (0.1, 1.0)


def test_automatic_row_per_class():
    frame = _frame("f/two", [A, C], labels=[0, 1])
    boxes = [[5, 5, 15, 15], [30, 30, 40, 40]]
    sam = _BoxSam([frame])
    dets = [_detections(boxes, [0.9, 0.8], classes=[0, 0])]  # C found, but as class 0
    row0 = evaluate.automatic_row(sam, dets, threshold=0.5, margin=0.0, min_area=20, class_id=0)
    row1 = evaluate.automatic_row(sam, dets, threshold=0.5, margin=0.0, min_area=20, class_id=1)
    assert (row0["lesions"], row0["lesion_dice"], row0["false_positives"]) == (1, 1.0, 1)
    assert row0["det_recall"] == 1.0 and row0["det_precision"] == 0.5
    assert (row1["lesions"], row1["lesion_dice"], row1["det_recall"]) == (1, 0.0, 0.0)
    assert row1["det_precision"] == ""  # nothing predicted for class 1


def _yolo_lines(path) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()]


def test_write_yolo_dataset_normalised_boxes_and_capped_negatives(tmp_path):
    hw = (40, 100)  # not square: x is divided by the width, y by the height
    two = _frame("case/a0_001", [_rect(10, 30, 20, 50, hw), _rect(0, 90, 5, 100, hw)], [0, 1], hw)
    one = _frame("case/a0_002", [_rect(1, 1, 3, 3, hw)], [1], hw)
    negatives = [_frame(f"case/a0_{i:03d}", [], hw=hw) for i in range(10, 15)]
    classes = ("tumour", "cyst: simple")
    data = write_yolo_dataset(
        {"train": iter([two, *negatives, one]), "val": iter(negatives[:3])},
        classes,
        tmp_path / "yolo",
        negative_ratio=1.0,
        seed=0,
    )
    assert data.frames == {"train": 4, "val": 3}  # 2 positives + 2 of 5 negatives; val: all
    assert data.lesions == {"train": 3, "val": 0}
    assert data.negatives == {"train": 2, "val": 3}
    spec = yaml.safe_load(data.yaml.read_text())
    assert spec["names"] == {0: "tumour", 1: "cyst: simple"}
    assert Path(spec["path"]) == (tmp_path / "yolo").resolve()
    labels = tmp_path / "yolo" / "labels" / "train"
    (two_txt,) = labels.glob("0_*a0_001.txt")
    np.testing.assert_allclose(
        _yolo_lines(two_txt),
        [[0, 40 / 100, 15 / 40, 20 / 100, 10 / 40], [1, 95 / 100, 2.5 / 40, 10 / 100, 5 / 40]],
    )
    assert _yolo_lines(next(labels.glob("*a0_002.txt")))[0][0] == 1
    negs = sorted(labels.glob("neg*.txt"))
    assert len(negs) == 2 and all(p.read_text() == "" for p in negs)
    images = sorted((tmp_path / "yolo" / "images" / "train").glob("*.png"))
    assert [p.stem for p in images] == sorted(p.stem for p in labels.glob("*.txt"))
    assert np.asarray(Image.open(images[0])).shape == (40, 100, 3)

    def drawn(ratio: float, seed: int) -> list[str]:
        frames = iter([two, *negatives])
        write_yolo_dataset(
            {"train": frames}, classes, tmp_path / "y2", negative_ratio=ratio, seed=seed
        )
        return sorted(p.name for p in (tmp_path / "y2" / "labels" / "train").glob("neg*"))

    assert drawn(2.0, 5) == drawn(2.0, 5) and len(drawn(2.0, 5)) == 2
    assert len({tuple(drawn(2.0, s)) for s in range(6)}) > 1, "the seed does not change the draw"
    assert drawn(0.0, 0) == []


def test_stopper_deadline():
    assert not Stopper().stop
    assert not Stopper(time.time() + 60).stop
    assert Stopper(time.time() - 1).stop


def test_stopper_keeps_and_restores_the_best_trainable_state():
    net = torch.nn.Linear(2, 2)
    net.bias.requires_grad_(False)
    stopper = Stopper()
    stopper.restore(net)  # nothing offered: a no-op
    for score, value in ((0.5, 1.0), (0.7, 2.0), (0.3, 3.0)):
        with torch.no_grad():
            net.weight.fill_(value)
            net.bias.fill_(value)
        stopper.offer(net, score)
    assert list(stopper.best[1]) == ["weight"]  # frozen tensors are not kept
    stopper.restore(net)
    assert (net.weight == 2.0).all() and (net.bias == 3.0).all()
    latest = Stopper()
    for value in (1.0, 4.0):
        with torch.no_grad():
            net.weight.fill_(value)
        latest.offer(net, None)  # no validation score: the latest state
    with torch.no_grad():
        net.weight.fill_(0.0)
    latest.restore(net)
    assert (net.weight == 4.0).all()


CTRL_C_CHECK = """
import os, signal, time
import pytest
from lesionseg.train.common import Stopper

def check():
    before = signal.getsignal(signal.SIGINT)
    stopper = Stopper()
    with stopper:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):  # the handler runs between bytecodes of the main thread
            if stopper.stop:
                break
            time.sleep(0.01)
        assert stopper.interrupted and stopper.stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before

check()
print("ok")
"""


def test_stopper_turns_the_first_ctrl_c_into_stop_and_the_second_into_an_abort():
    # In a fresh interpreter: with OpenVINO's bf16 SAM having run earlier in the pytest process
    # (tests/test_openvino.py), these SIGINTs ended that process with a segmentation fault
    # (not reproduced outside pytest; see the closing note of issue 13's session).
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_CHECK], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
