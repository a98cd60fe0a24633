"""Which frames ``lesionseg evaluate`` scores: the cases asked for, else the bundle's own
validation side when the dataset is the one it was trained on, else every case; and a seeded
cap on the number of frames."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lesionseg.datasets import Dataset, Frame
from lesionseg.errors import InputError
from lesionseg.train.split import Part, check_case_names

_SLAB = re.compile(r"^(?P<case>.+)\[z(?P<start>\d+):(?P<stop>\d+)\]$")  # Part.name of a slab


@dataclass(frozen=True)
class Selection:
    """The parts to score, how they were chosen (for the record) and warnings for the user."""

    parts: tuple[Part, ...]
    how: str
    notes: tuple[str, ...] = ()


def select_parts(
    dataset: Dataset, fingerprint: str, record: Mapping, cases: Sequence[str] | None = None
) -> Selection:
    """The parts of ``dataset`` to evaluate a bundle on.

    Args:
        fingerprint: ``dataset.fingerprint()`` (hashed once by the caller).
        record: the bundle's model.json; its ``dataset.fingerprint`` and ``split`` say whether
            ``dataset`` is its training dataset and which parts it held out.
        cases: case names asked for (``--cases``); None: the held-out side of the training
            dataset, else every case.

    Raises:
        lesionseg.errors.DatasetError: ``cases`` names a case the dataset does not hold.
    """
    trained_on = fingerprint == (record.get("dataset") or {}).get("fingerprint")
    split = record.get("split") or {}
    train_cases = {_case_name(name) for name in split.get("train", [])}
    if cases:
        check_case_names(dataset, cases, "--cases")
        chosen = [case for case in dataset.cases if case.name in set(cases)]
        return Selection(
            tuple(Part(case) for case in chosen),
            "the cases asked for (--cases)",
            _overlap(chosen, train_cases, trained_on),
        )
    if trained_on:
        try:
            parts = tuple(_part(dataset, name) for name in split.get("val") or ())
        except KeyError as exc:
            parts, missing = (), f"its validation part {exc} is not in the dataset"
        else:
            missing = "" if parts else "model.json records no split"
        if parts:
            return Selection(parts, "the bundle's validation side (the dataset it was trained on)")
        note = (
            f"{dataset.root} is the bundle's training dataset (same fingerprint) but its split "
            f"cannot be reconstructed ({missing}): every case is evaluated, training cases "
            "included, so these numbers are not held out"
        )
        return Selection(tuple(Part(c) for c in dataset.cases), "every case", (note,))
    return Selection(
        tuple(Part(c) for c in dataset.cases),
        "every case",
        _overlap(dataset.cases, train_cases, trained_on),
    )


def capped(
    cases: Mapping[str, Iterable[Frame]], max_frames: int | None, seed: int = 0
) -> Mapping[str, Iterable[Frame]]:
    """At most ``max_frames`` frames, drawn uniformly (seeded) over every case's frames and
    kept in order; at most that many are in memory at once (reservoir sampling). A case none of
    whose frames is drawn is left out. None: every frame, read lazily."""
    if max_frames is None:
        return cases
    if max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {max_frames}")
    rng = np.random.default_rng(seed)
    kept: list[tuple[int, str, Frame]] = []
    seen = 0
    for name, frames in cases.items():
        for frame in frames:
            if len(kept) < max_frames:
                kept.append((seen, name, frame))
            else:
                j = int(rng.integers(0, seen + 1))
                if j < max_frames:
                    kept[j] = (seen, name, frame)
            seen += 1
    out: dict[str, list[Frame]] = {}
    for _, name, frame in sorted(kept, key=lambda item: item[0]):
        out.setdefault(name, []).append(frame)
    return out


def _part(dataset: Dataset, name: str) -> Part:
    """The :class:`Part` that :attr:`Part.name` ``name`` names; KeyError when its case is not
    in ``dataset``."""
    by_name = {case.name: case for case in dataset.cases}
    slab = _SLAB.match(name)
    case = slab["case"] if slab else name
    if case not in by_name:
        raise KeyError(name)
    return Part(by_name[case], (int(slab["start"]), int(slab["stop"])) if slab else None)


def _case_name(part_name: str) -> str:
    slab = _SLAB.match(part_name)
    return slab["case"] if slab else part_name


def _overlap(cases: Iterable, train_cases: set[str], trained_on: bool) -> tuple[str, ...]:
    shared = sorted(case.name for case in cases if case.name in train_cases)
    if not shared:
        return ()
    if trained_on:
        return (
            f"{', '.join(shared[:5])} are (partly) on the bundle's training side: these numbers "
            "are not held out",
        )
    return (
        f"{', '.join(shared[:5])} share names with the bundle's training cases: if they are the "
        "same patients, these numbers are not held out",
    )
