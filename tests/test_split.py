"""lesionseg.train.split: train/validation by case (seeded), or a single volume by slab with a
gap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionseg.datasets import Case, Dataset, Frame, Volume
from lesionseg.errors import DatasetError
from lesionseg.train.split import AXES, split_cases


def _image_case(name: str) -> Case:
    frame = Frame(name, np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 8), bool), np.zeros(0, int))
    return Case(name, Path(f"/data/{name}.png"), [], load_frame=lambda: frame)


def _dataset(*cases: Case) -> Dataset:
    return Dataset(Path("/data"), "folders", ("lesion",), cases)


def _volume_case(depth: int) -> Case:
    """A (depth, 6, 5) volume whose every voxel holds its slice index, so a frame tells which
    slices it was cut from; a one-voxel lesion on every slice."""
    image = np.repeat(np.arange(depth, dtype=np.uint8), 30).reshape(depth, 6, 5)
    labels = np.zeros(image.shape, np.uint16)
    labels[:, 3, 2] = 1
    volume = Volume(image, labels, (2.5, 0.7, 0.7))
    return Case("vol", Path("/data/vol.nii.gz"), [], load_volume=lambda: volume)


CASES = [_image_case(f"img{i:02d}") for i in range(20)]


def _names(parts) -> list[str]:
    return [p.name for p in parts]


def test_split_by_case_is_seeded_disjoint_and_complete():
    split = split_cases(_dataset(*CASES), val_fraction=0.2, seed=3)
    assert split.method == "case"
    train, val = _names(split.train), _names(split.val)
    assert len(val) == 4 and not set(train) & set(val)
    assert sorted(train + val) == [c.name for c in CASES]
    assert split_cases(_dataset(*CASES), val_fraction=0.2, seed=3).val == split.val
    others = {tuple(_names(split_cases(_dataset(*CASES), seed=s).val)) for s in range(4, 8)}
    assert others - {tuple(val)}, "the seed does not change the split"
    assert split.record() == {"method": "case", "train": train, "val": val, "seed": 3} | {
        "val_fraction": 0.2
    }


def test_two_cases_split_one_each():
    split = split_cases(_dataset(*CASES[:2]), val_fraction=0.01)
    assert len(split.train) == len(split.val) == 1


def test_val_cases_are_honoured():
    split = split_cases(_dataset(*CASES), val_cases=["img03", "img17"])
    assert _names(split.val) == ["img03", "img17"]
    assert len(split.train) == 18 and "img03" not in _names(split.train)


def test_unknown_val_cases_are_named():
    with pytest.raises(DatasetError, match=r"not in /data: \['nope'\]"):
        split_cases(_dataset(*CASES), val_cases=["img03", "nope"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"val_cases": [c.name for c in CASES]}, "no training case"),
        ({"val_fraction": 1.0}, "between 0 and 1"),
        ({"val_fraction": 0.0}, "between 0 and 1"),
    ],
)
def test_impossible_splits_are_refused(options, message):
    with pytest.raises(DatasetError, match=message):
        split_cases(_dataset(*CASES), **options)


def test_one_volume_falls_back_to_a_slab_split_with_a_gap():
    with pytest.warns(UserWarning, match="one case: splitting it by slab"):
        split = split_cases(_dataset(_volume_case(40)), val_fraction=0.25, slab_gap=5)
    assert split.method == "slab"
    (train,), (val,) = split.train, split.val
    assert (train.z_range, val.z_range) == ((0, 25), (30, 40))
    assert split.record()["train_slices"] == [0, 24] and split.record()["val_slices"] == [30, 39]
    assert split.record()["gap"] == 5
    # Every axis: the training side sees only slices 0-24, the validation side only 30-39.
    train_z = {int(v) for f in train.frames(AXES["all"]) for v in np.unique(f.image)}
    val_z = {int(v) for f in val.frames(AXES["all"]) for v in np.unique(f.image)}
    assert train_z == set(range(25)) and val_z == set(range(30, 40))
    axial = [f.name for f in val.frames()]
    assert axial == [f"vol/a0_{z:03d}" for z in range(30, 40)]
    assert all(len(f.masks) == 1 for f in val.frames())


def test_a_volume_too_thin_for_two_slabs_is_refused():
    with pytest.raises(DatasetError, match="too few"):
        split_cases(_dataset(_volume_case(12)), val_fraction=0.2, slab_gap=10)


def test_a_single_2d_image_cannot_be_split():
    with pytest.raises(DatasetError, match=r"single 2-D image \(/data/img00.png\)"):
        split_cases(_dataset(CASES[0]))
