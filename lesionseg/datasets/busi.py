"""Breast-ultrasound (BUSI) style folders: one folder per class, masks next to their images.

Layout::

    benign/NAME.png              the image (any format the service reads)
    benign/NAME_mask.png         its lesion mask (non-zero = lesion), same size
    benign/NAME_mask_1.png, ...  more masks of the same image: the union is taken
    malignant/...                another class
    normal/...                   a folder whose masks are all empty: negative images, not a class

Each image is its own case, named ``<folder>/<NAME>``; its lesions are the 8-connected
components of the union of its masks, of the folder's class.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from lesionseg.datasets.base import Case, DatasetError, select_classes
from lesionseg.datasets.folders import check_size, image_files, load_frame, read_mask
from lesionseg.settings import Settings

_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")


def _groups(folder: Path) -> dict[Path, list[Path]]:
    """image -> its mask files, for the images of one class folder."""
    files = image_files(folder)
    images = [p for p in files if not _MASK.match(p.stem)]
    groups: dict[Path, list[Path]] = {image: [] for image in images}
    by_stem = {image.with_suffix(""): image for image in images}
    for path in files:
        match = _MASK.match(path.stem)
        if match is None:
            continue
        image = by_stem.get(path.with_name(match["stem"]))
        if image is None:
            raise DatasetError(f"{path}: mask without an image {match['stem']}.* next to it")
        groups[image].append(path)
    for image, masks in groups.items():
        if not masks:
            raise DatasetError(
                f"{image}: no mask {image.stem}_mask.png next to it; an image without "
                "lesions needs an all-zero mask"
            )
    return groups


def looks_like(root: Path) -> bool:
    return root.is_dir() and any(
        folder.is_dir() and any(_MASK.match(p.stem) for p in image_files(folder))
        for folder in root.iterdir()
    )


def _union(masks: Sequence[Path], value: int) -> np.ndarray:
    union = np.zeros(read_mask(masks[0]).shape, bool)
    for path in masks:
        mask = read_mask(path)
        if mask.shape != union.shape:
            raise DatasetError(f"{path}: mask size differs from {masks[0].name}'s")
        union |= mask > 0
    return union.astype(np.uint16) * value


def read(
    root: Path, *, labels: Sequence[str] | None, window, settings: Settings
) -> tuple[tuple[str, ...], tuple[Case, ...]]:
    """Classes (folders with a lesion) and cases; every mask is read now to find negatives."""
    if window is not None:
        raise DatasetError(f"{root}: a window applies to DICOM and NIfTI datasets only")
    folders = {f.name: _groups(f) for f in sorted(root.iterdir()) if f.is_dir() and image_files(f)}
    positive = []
    for name, groups in folders.items():
        found = False
        for image, masks in groups.items():
            for mask in masks:
                array = read_mask(mask)
                check_size(image, mask, array.shape)
                found = found or bool(array.any())
        if found:
            positive.append(name)
    classes = select_classes(positive, labels, root)
    cases = []
    for folder, groups in folders.items():
        value = classes.index(folder) + 1 if folder in classes else 0
        for image, masks in groups.items():
            name = f"{folder}/{image.stem}"
            load = partial(load_frame, name, image, partial(_union, masks, value), settings)
            cases.append(Case(name, image, (image, *masks), load_frame=load))
    return classes, tuple(cases)
