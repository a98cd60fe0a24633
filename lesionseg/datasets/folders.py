"""2-D image/mask folders, and the shared reading of 2-D images and masks (BUSI, COCO).

Layout::

    images/NAME.png       any image the service reads (PNG, JPEG, TIFF, ...); subfolders too
    masks/NAME.png        same stem (or NAME_mask), same size; lossless, one integer per pixel
    classes.txt           optional: line k names mask value k (value 0 is background)

A mask whose only non-zero value is the same everywhere (0/1 or 0/255) is class "lesion" (or
the single name in classes.txt); otherwise each value is a class, named by classes.txt or
``label_<v>``. JPEG masks are thresholded at 128 (binary only). Each image is its own case,
named by its path under images/ without the extension; an all-zero mask is a negative.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lesionseg.datasets.base import Case, DatasetError, Frame, instances, read_bytes, select_classes
from lesionseg.errors import LesionSegError
from lesionseg.io.images import decode_image
from lesionseg.settings import Settings
from lesionseg.types import MedicalImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
_LOSSY = (".jpg", ".jpeg")
_MAX_VALUES = 50  # more distinct mask values than this: not a class map


def looks_like(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; hidden files skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def read_mask(path: Path) -> np.ndarray:
    """(H, W) integer mask of a lossless mask file (palette indices for palette PNGs); a JPEG
    mask is thresholded at 128 to 0/1. Colour masks with unequal channels are refused."""
    try:
        with Image.open(io.BytesIO(read_bytes(path))) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image.convert("L") if mode == "LA" else image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable mask image ({exc})") from exc
    if array.ndim == 3:
        if not (array[:, :, :3] == array[:, :, :1]).all():
            raise DatasetError(
                f"{path}: colour mask; save masks as grayscale images holding one integer "
                "per class (0 = background)"
            )
        array = array[:, :, 0]
    if path.suffix.lower() in _LOSSY:
        return (array >= 128).astype(np.uint8)
    return array.astype(np.int64) if array.dtype == np.bool_ else array


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header, or DatasetError."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from exc


def check_size(image: Path, mask: Path, shape: tuple[int, ...]) -> None:
    height, width = image_size(image)
    if tuple(shape[:2]) != (height, width):
        raise DatasetError(
            f"{mask}: mask is {shape[1]}x{shape[0]} but its image {image} is "
            f"{width}x{height}; a mask must have its image's size"
        )


def decode(image: Path, settings: Settings) -> MedicalImage:
    """A 2-D image file decoded as the service decodes an upload (min-max for > 8 bits)."""
    try:
        return decode_image(read_bytes(image), max_pixels=settings.max_image_pixels)
    except LesionSegError as exc:
        raise DatasetError(f"{image}: {exc}") from exc


def load_frame(
    name: str,
    image: Path,
    class_map: Callable[[], np.ndarray],
    settings: Settings,
) -> Frame:
    """A 2-D case's frame: the image decoded as the service does, instances of the class map."""
    decoded = decode(image, settings)
    labels = class_map()
    if labels.shape != (decoded.height, decoded.width):  # e.g. EXIF rotation of a JPEG
        raise DatasetError(
            f"{image}: decoded to {decoded.width}x{decoded.height}, its mask is "
            f"{labels.shape[1]}x{labels.shape[0]} (an EXIF-rotated JPEG?)"
        )
    masks, ids = instances(labels)
    return Frame(name, decoded.pixels, masks, ids, None)


def _classes_txt(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in read_bytes(path).decode("utf-8").splitlines()]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"{path}: expected one distinct class name per line (value 1, 2, ...)")
    return names


def _mask_for(root: Path, image: Path) -> Path:
    relative = image.relative_to(root / "images").with_suffix("")
    for stem in (relative.name, relative.name + "_mask"):
        for suffix in (image.suffix, *IMAGE_SUFFIXES):
            candidate = root / "masks" / relative.parent / (stem + suffix)
            if candidate.is_file():
                return candidate
    raise DatasetError(
        f"{image}: no mask masks/{relative}.png; an image without lesions needs an all-zero mask"
    )


def _mapped(path: Path, table: np.ndarray) -> np.ndarray:
    return table[read_mask(path)]


def read(
    root: Path, *, labels: Sequence[str] | None, window, settings: Settings
) -> tuple[tuple[str, ...], tuple[Case, ...]]:
    """Classes and cases of an images/ + masks/ dataset; every mask is read now for its values."""
    if window is not None:
        raise DatasetError(f"{root}: a window applies to DICOM and NIfTI datasets only")
    images = image_files(root / "images")
    pairs = [(image, _mask_for(root, image)) for image in images]
    used = {mask.resolve() for _, mask in pairs}
    for mask in image_files(root / "masks"):
        if mask.resolve() not in used:
            raise DatasetError(f"{mask}: mask without an image in images/ (same name expected)")
    values: dict[int, Path] = {}
    for image, mask in pairs:
        array = read_mask(mask)
        check_size(image, mask, array.shape)
        if array.min() < 0:
            raise DatasetError(f"{mask}: negative mask values")
        for v in np.unique(array):
            values.setdefault(int(v), mask)
    values.pop(0, None)
    names = _classes_txt(root)
    if len(values) > _MAX_VALUES and names is None:
        raise DatasetError(
            f"{root / 'masks'}: masks hold {len(values)} distinct values; save them losslessly "
            "with one integer per class, and name the classes in classes.txt"
        )
    if len(values) <= 1 and (names is None or len(names) == 1):  # binary masks
        names = names or ["lesion"]
        lut = {v: 1 for v in values}
    elif names is None:
        names = [f"label_{v}" for v in sorted(values)]
        lut = {v: i + 1 for i, v in enumerate(sorted(values))}
    else:
        for v, mask in values.items():
            if v > len(names):
                raise DatasetError(
                    f"{mask}: mask value {v} has no name in classes.txt ({len(names)} names "
                    f"for values 1..{len(names)})"
                )
        lut = {v: v for v in values}
    classes = select_classes(names, labels, root / ("classes.txt" if names else "masks"))
    table = np.zeros(max(values, default=0) + 1, np.uint16)
    for v, index in lut.items():
        if names[index - 1] in classes:
            table[v] = classes.index(names[index - 1]) + 1
    extra = (root / "classes.txt",) if (root / "classes.txt").is_file() else ()
    cases = []
    for image, mask in pairs:
        name = image.relative_to(root / "images").with_suffix("").as_posix()
        load = partial(load_frame, name, image, partial(_mapped, mask, table), settings)
        cases.append(Case(name, image, (image, mask, *extra), load_frame=load))
    return classes, tuple(cases)
