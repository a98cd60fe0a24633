"""``lesionseg evaluate``: the FROC and lesion measures on hand-made masks (every number worked
out by hand), which frames are scored, and the command end to end with the shipped bundle on a
few LiTS slices (slow tier)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lesionseg.datasets import Case, Dataset, Frame
from lesionseg.errors import DatasetError, InputError
from lesionseg.measure.evaluation import LesionScores, instance_owners
from lesionseg.measure.froc import Froc
from lesionseg.train.evaluate_bundle import CaseScores, Report
from lesionseg.train.held_out import capped, select_parts

H = W = 32


def _rect(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Frame 1: lesions A (36 px), B (36 px) and C (4 px, under the 20 px counted).
A, B, C = _rect(0, 0, 6, 6), _rect(10, 10, 16, 16), _rect(28, 28, 30, 30)
FRAME1_PRED = np.stack(
    [
        _rect(1, 1, 6, 6),  # 0.9: on A
        _rect(0, 20, 5, 25),  # 0.6: 25 px on nothing -> false
        _rect(10, 10, 14, 16),  # 0.4: on B
        _rect(28, 28, 29, 29),  # 0.3: on C only (uncounted lesion): neither hit nor false
        _rect(20, 0, 21, 5),  # 0.2: 5 px on nothing: too small to be false
        _rect(20, 10, 26, 15),  # 0.1: 30 px on nothing -> false
    ]
)
FRAME1_SCORES = np.array([0.9, 0.6, 0.4, 0.3, 0.2, 0.1])
FRAME2_PRED = _rect(0, 0, 5, 5)[None]  # a slice without lesions: 0.5, 25 px -> false
FRAME2_SCORES = np.array([0.5])


def _froc() -> tuple[Froc, Froc]:
    first, second = Froc(), Froc()
    first.add(FRAME1_PRED, FRAME1_SCORES, np.stack([A, B, C]), min_area=20)
    second.add(FRAME2_PRED, FRAME2_SCORES, np.zeros((0, H, W), bool), min_area=20)
    return first, second


def test_each_instance_is_hit_false_or_neither():
    first, second = _froc()
    assert first.hit_scores == [0.9, 0.4] and first.false_scores == [0.6, 0.1]
    assert second.hit_scores == [] and second.false_scores == [0.5]
    both = first + second
    assert (both.lesions, both.frames, sorted(both.false_scores)) == (2, 2, [0.1, 0.5, 0.6])


def test_the_curve_steps_at_every_score():
    froc = sum(_froc(), Froc())
    curve = froc.curve()
    assert curve.thresholds.tolist() == [np.inf, 0.9, 0.6, 0.5, 0.4, 0.1]
    assert curve.false_per_slice.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0, 1.5]
    assert curve.sensitivity.tolist() == [0.0, 0.5, 0.5, 0.5, 1.0, 1.0]
    assert froc.end == (1.5, 1.0)


@pytest.mark.parametrize(
    ("rate", "sensitivity"), [(0.0, 0.5), (0.25, 0.5), (0.5, 0.5), (1.0, 1.0), (4.0, 1.0)]
)
def test_sensitivity_at_a_false_mask_rate(rate, sensitivity):
    assert sum(_froc(), Froc()).sensitivity_at(rate) == sensitivity


@pytest.mark.parametrize(
    ("threshold", "sensitivity", "false_masks", "per_slice"),
    [(0.95, 0.0, 0, 0.0), (0.9, 0.5, 0, 0.0), (0.45, 0.5, 2, 1.0), (0.05, 1.0, 3, 1.5)],
)
def test_one_threshold(threshold, sensitivity, false_masks, per_slice):
    froc = sum(_froc(), Froc())
    assert froc.sensitivity(threshold) == sensitivity
    assert froc.false_masks(threshold) == false_masks
    assert froc.false_per_slice(threshold) == per_slice


def test_without_lesions_sensitivity_is_undefined():
    _, second = _froc()
    assert second.sensitivity(0.1) is None and second.sensitivity_at(1.0) is None
    assert second.end is None and second.false_per_slice(0.1) == 1.0
    assert Froc().false_per_slice(0.5) is None


def test_a_mask_over_two_lesions_hits_the_one_it_overlaps_most():
    wide = _rect(0, 0, 6, 14)  # 36 px on A, 12 on the other lesion
    other = _rect(0, 12, 6, 20)
    assert instance_owners(wide[None], np.stack([other, A])).tolist() == [1]
    froc = Froc()
    froc.add(wide[None], [0.7], np.stack([A, other]), min_area=20)
    assert froc.hit_scores == [0.7, -np.inf] and froc.sensitivity(0.5) == 0.5


def test_the_false_masks_are_lesion_scores_false_positives():
    """The FROC's false masks at a threshold are LesionScores' false positives there."""
    froc, _ = _froc()
    for threshold in (0.05, 0.35, 0.5, 0.95):
        scores = LesionScores()
        kept = threshold <= FRAME1_SCORES
        scores.add(FRAME1_PRED[kept], np.stack([A, B, C]), prompted=False, min_area=20)
        assert scores.false_positives == froc.false_masks(threshold)
        assert len(scores.dices) == froc.lesions


def test_the_report_rows_and_the_pooled_overall():
    first, second = _froc()
    one = CaseScores("one", LesionScores([0.8, 0.4], 1), first)
    two = CaseScores("two", LesionScores([], 1), second)
    report = Report({}, 0.45, 20, None, [one, two])
    rows = report.rows()
    assert [r["case"] for r in rows] == ["one", "two", "overall"]
    assert rows[0] == {
        "case": "one",
        "frames": 1,
        "lesions": 2,
        "lesion_dice": 0.6,
        "fp_penalised_dice": 0.4,  # (0.8 + 0.4) / 3
        "recall": 0.5,
        "false_masks": 1,
        "false_per_slice": 1.0,
        "sens@0.5": 0.5,
        "sens@1": 1.0,
        "sens@2": 1.0,
        "sens@4": 1.0,
    }
    assert rows[1]["lesion_dice"] is None and rows[1]["recall"] is None
    overall = rows[2]
    assert (overall["frames"], overall["lesions"], overall["false_masks"]) == (2, 2, 2)
    assert overall["lesion_dice"] == 0.6 and overall["fp_penalised_dice"] == 0.3  # 1.2 / 4
    assert (overall["false_per_slice"], overall["sens@0.5"], overall["sens@1"]) == (1.0, 0.5, 1.0)
    assert report.frames == 2 and report.curves()["overall"]["end"] == (1.5, 1.0)


# Which frames: a dataset of small fake cases (nothing is read but their names).
def _frame(name: str) -> Frame:
    return Frame(name, np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4, 4), bool), np.zeros(0, int))


def _dataset(*names: str) -> Dataset:
    cases = tuple(Case(n, Path(n), (), load_frame=lambda n=n: _frame(n)) for n in sorted(names))
    return Dataset(Path("/data"), "folders", ("lesion",), cases)


RECORD = {
    "dataset": {"fingerprint": "f" * 64},
    "split": {"method": "case", "train": ["a", "b"], "val": ["c"]},
}


def test_the_training_dataset_gives_its_validation_side():
    selection = select_parts(_dataset("a", "b", "c"), "f" * 64, RECORD)
    assert [p.name for p in selection.parts] == ["c"] and not selection.notes
    assert "validation side" in selection.how


def test_a_slab_split_gives_its_validation_slab():
    record = {"dataset": RECORD["dataset"], "split": {"train": ["v[z0:5]"], "val": ["v[z7:9]"]}}
    (part,) = select_parts(_dataset("v"), "f" * 64, record).parts
    assert (part.case.name, part.z_range, part.name) == ("v", (7, 9), "v[z7:9]")


def test_a_split_that_cannot_be_rebuilt_warns_and_takes_every_case():
    record = {"dataset": RECORD["dataset"], "split": {"train": ["a"], "val": ["gone"]}}
    selection = select_parts(_dataset("a", "b"), "f" * 64, record)
    assert [p.name for p in selection.parts] == ["a", "b"]
    assert "cannot be reconstructed" in selection.notes[0] and "'gone'" in selection.notes[0]


def test_another_dataset_gives_every_case_and_warns_of_shared_names():
    selection = select_parts(_dataset("a", "x"), "0" * 64, RECORD)
    assert [p.name for p in selection.parts] == ["a", "x"] and selection.how == "every case"
    assert selection.notes == (
        "a share names with the bundle's training cases: if they are the same patients, these "
        "numbers are not held out",
    )


def test_cases_asked_for_on_the_training_side_are_said_not_held_out():
    selection = select_parts(_dataset("a", "b", "c"), "f" * 64, RECORD, ["b", "c"])
    assert [p.name for p in selection.parts] == ["b", "c"]
    assert selection.notes[0].startswith("b are (partly) on the bundle's training side")
    with pytest.raises(DatasetError, match=r"--cases names cases not in /data: \['z'\]"):
        select_parts(_dataset("a"), "f" * 64, RECORD, ["a", "z"])


def test_the_frame_cap_is_a_seeded_draw_in_order():
    cases = {c: [_frame(f"{c}/{i}") for i in range(5)] for c in ("p", "q", "r")}
    drawn = capped(cases, 4, seed=3)
    names = [f.name for frames in drawn.values() for f in frames]
    assert len(names) == 4 and len(set(names)) == 4
    everything = [f.name for frames in cases.values() for f in frames]
    assert names == sorted(names, key=everything.index)
    assert [f.name for fs in capped(cases, 4, seed=3).values() for f in fs] == names
    assert capped(cases, None) is cases
    assert sum(len(v) for v in capped(cases, 100).values()) == 15
    with pytest.raises(InputError, match="--max-frames must be at least 1"):
        capped(cases, 0)


# End to end: the shipped bundle on three LiTS slices written as an nnU-Net dataset.
@pytest.fixture(scope="module")
def three_slices(lits, tmp_path_factory) -> Path:
    from .datasets import fixtures

    return fixtures.write_nnunet(
        lits, tmp_path_factory.mktemp("evaluate") / "ds", slabs=((110, 113),)
    )


@pytest.mark.slow
def test_the_command_on_the_bundles_validation_slices(three_slices, lits_volume, tmp_path):
    """The shipped bundle copied with a record saying it was trained on ``three_slices`` with
    slices 1-2 held out: evaluate scores those two, with the bundle's labels and window."""
    from lesionseg.cli import main
    from lesionseg.datasets import open_dataset
    from lesionseg.models.bundle import SHIPPED_BUNDLE, Bundle

    bundle = tmp_path / "bundle"
    Bundle.load(SHIPPED_BUNDLE).copy_to(bundle)
    record = json.loads((bundle / "model.json").read_text())
    fingerprint = open_dataset(three_slices, labels=["tumour"]).fingerprint()
    record["dataset"]["fingerprint"] = fingerprint
    record["split"] = {"train": ["lits117_z110[z0:1]"], "val": ["lits117_z110[z1:3]"]}
    (bundle / "model.json").write_text(json.dumps(record))
    out = tmp_path / "out"

    assert main(["evaluate", str(three_slices), "--model", str(bundle), "--out", str(out)]) == 0

    result = json.loads((out / "evaluation.json").read_text())
    assert (result["dataset"]["classes"], result["dataset"]["window"]) == (["tumour"], "abdomen")
    assert result["dataset"]["fingerprint"] == fingerprint
    assert result["selection"]["parts"] == ["lits117_z110[z1:3]"] and result["frames"] == 2
    assert result["bundle"]["fingerprint"] == Bundle.load(bundle).fingerprint
    assert result["protocol"]["score_threshold"] == record["detector"]["score_threshold"]
    assert result["git_commit"] and result["versions"]["numpy"]
    expected = sum(  # lesions >= 20 px on LiTS slices 111 and 112
        int((m.sum(axis=(1, 2)) >= 20).sum())
        for m in (f.masks for f in lits_volume.frames(0, (111, 113)))
    )
    overall = result["rows"][-1]
    assert overall["case"] == "overall" and overall["lesions"] == expected > 0
    assert 0.3 < overall["lesion_dice"] <= 1 and 0.3 < overall["recall"] <= 1
    if overall["false_per_slice"] <= 4:  # the bundle's point lies under the curve
        assert overall["sens@4"] >= overall["recall"]
    with (out / "evaluation.csv").open(newline="") as handle:
        assert [r["case"] for r in csv.DictReader(handle)] == ["lits117_z110[z1:3]", "overall"]
    assert "`lesionseg evaluate " in (out / "evaluation.md").read_text()
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cases", "nobody"], "--cases names cases not in"),
        (["--model", "/nonexistent"], "model bundle /nonexistent not found"),
        (["--labels", "bone"], "no label named 'bone'"),
        (["--min-lesion-px", "0"], "--min-lesion-px must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_a_message(three_slices, tmp_path, capsys, args, message):
    from lesionseg.cli import main

    assert main(["evaluate", str(three_slices), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_page_says_where_the_curve_ends_before_a_rate():
    from lesionseg.train.evaluate_command import _curve_ends

    record = {"froc": {"overall": {"end": (1.5, 0.9)}}, "protocol": {"score_floor": 0.05}}
    (line,) = _curve_ends(record)
    assert "ends at 1.5 false masks per slice" in line and "at 2, 4 false masks" in line
    record["froc"]["overall"]["end"] = (4.0, 0.9)
    assert _curve_ends(record) == []
    record["froc"]["overall"]["end"] = None  # no lesion
    assert _curve_ends(record) == []


def test_froc_slice_without_any_mask():
    """A slice where the detector found nothing: its lesions are missed, nothing is false."""
    from lesionseg.measure.froc import Froc

    froc = Froc()
    gt = np.zeros((1, 8, 8), bool)
    gt[0, 2:7, 2:7] = True
    froc.add(np.zeros((0, 8, 8), bool), np.zeros(0), gt, min_area=4)
    assert froc.lesions == 1 and froc.sensitivity(0.0) == 0.0 and froc.false_masks(0.0) == 0
