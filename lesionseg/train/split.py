"""Train/validation split of a dataset: by case, so one patient never sits on both sides.

Cases are shuffled with a seed and the validation side takes ``val_fraction`` of them (at least
one), or exactly the named ``val_cases``. A dataset of a single volume cannot be split by case:
it falls back to a *slab* split along the slice axis, with a gap of slices between the two sides
so that neighbouring slices never straddle the split (LiTS case 117: train 0-89, val 100-127),
and says so with a warning. A single 2-D image cannot be split at all.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lesionseg.datasets import Case, Dataset, Frame
from lesionseg.errors import DatasetError

AXES = {"axial": (0,), "all": (0, 1, 2)}


@dataclass(frozen=True)
class Part:
    """One case, or the slab ``z_range`` ([start, stop) along axis 0) of a volume case."""

    case: Case
    z_range: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        if self.z_range is None:
            return self.case.name
        return f"{self.case.name}[z{self.z_range[0]}:{self.z_range[1]}]"

    def frames(self, axes: Sequence[int] = (0,)) -> Iterator[Frame]:
        """The part's frames: axis-0 slices, plus slices along the other ``axes`` of a volume
        (cropped to the slab). 2-D cases ignore ``axes``."""
        volume = self.case.volume()
        if volume is None:
            yield from self.case.frames()
            return
        for axis in axes:
            yield from volume.frames(axis, self.z_range, prefix=self.case.name)


@dataclass(frozen=True)
class Split:
    """The two sides of a split and how it was made (recorded in the bundle's model.json)."""

    train: tuple[Part, ...]
    val: tuple[Part, ...]
    method: str  # "case" or "slab"
    details: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {
            "method": self.method,
            "train": [p.name for p in self.train],
            "val": [p.name for p in self.val],
            **self.details,
        }


def split_cases(
    dataset: Dataset,
    *,
    val_fraction: float = 0.2,
    val_cases: Sequence[str] | None = None,
    seed: int = 0,
    slab_gap: int = 10,
) -> Split:
    """Split ``dataset`` by case (seeded), or a single volume by slab.

    Raises:
        DatasetError: unknown ``val_cases`` names, a split that leaves one side empty, or a
            single 2-D image.
    """
    if not 0 < val_fraction < 1:
        raise DatasetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    cases = list(dataset.cases)
    if len(cases) == 1:
        return _slab_split(dataset, cases[0], val_fraction, slab_gap)
    names = [c.name for c in cases]
    if val_cases:
        check_case_names(dataset, val_cases, "--val-cases")
        val_names = set(val_cases)
    else:
        order = np.random.default_rng(seed).permutation(len(cases))
        n_val = max(1, round(len(cases) * val_fraction))
        val_names = {names[i] for i in order[:n_val]}
    train = tuple(Part(c) for c in cases if c.name not in val_names)
    val = tuple(Part(c) for c in cases if c.name in val_names)
    if not train or not val:
        raise DatasetError(
            f"the split of {len(cases)} cases leaves no {'training' if not train else 'validation'}"
            " case: change --val-fraction or --val-cases"
        )
    details = {"seed": seed, "val_fraction": val_fraction} if not val_cases else {}
    return Split(train, val, "case", details)


def check_case_names(dataset: Dataset, names: Sequence[str], option: str) -> None:
    """DatasetError naming ``option`` unless every name is a case of ``dataset``."""
    known = [c.name for c in dataset.cases]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise DatasetError(
            f"{option} names cases not in {dataset.root}: {unknown[:5]} "
            f"(cases are e.g. {known[:5]})"
        )


def _slab_split(dataset: Dataset, case: Case, val_fraction: float, gap: int) -> Split:
    volume = case.volume()
    if volume is None:
        raise DatasetError(
            f"{dataset.root} holds a single 2-D image ({case.source}): training needs at least "
            "two cases (or one volume, split by slab)"
        )
    depth = volume.image.shape[0]
    n_val = math.floor(depth * val_fraction + 0.5)
    val_start = depth - n_val
    train_stop = val_start - gap
    if n_val < 1 or train_stop < 1:
        raise DatasetError(
            f"{case.source}: {depth} slices are too few to split into a training and a "
            f"validation slab {gap} slices apart; add cases"
        )
    warnings.warn(
        f"{dataset.root} holds one case: splitting it by slab instead of by case (train "
        f"slices 0-{train_stop - 1}, validation {val_start}-{depth - 1}, a {gap}-slice gap); "
        "validation on the same patient overestimates accuracy on new patients",
        stacklevel=2,
    )
    details = {"train_slices": [0, train_stop - 1], "val_slices": [val_start, depth - 1]}
    return Split(
        (Part(case, (0, train_stop)),),
        (Part(case, (val_start, depth)),),
        "slab",
        details | {"gap": gap, "val_fraction": val_fraction},
    )


def require_lesions(split: Split, classes: Sequence[str], count: int) -> None:
    """Refuse a training side with ``count`` = 0 lesions (DatasetError naming its cases)."""
    if not count:
        raise DatasetError(
            f"the training side ({', '.join(p.name for p in split.train[:5])}, ...) holds no "
            f"lesion of the classes {list(classes)}: check --labels and the masks"
        )
