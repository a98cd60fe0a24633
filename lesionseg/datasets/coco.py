"""COCO instance-segmentation JSON (polygons or RLE), categories as classes.

Layout: a JSON with ``images`` (id, file_name, height, width), ``annotations`` (image_id,
category_id, segmentation as polygons or RLE, iscrowd) and ``categories`` (id, name); open the
JSON itself, or a folder holding one (at its top or in ``annotations/``). ``file_name`` is
resolved next to the JSON, in its ``images/`` folder, or in the dataset folder's ``images/``.

Classes are the categories in id order. Each annotation is one lesion instance (a crowd
annotation is split into its 8-connected components); an image without annotations is a
negative. Each image is its own case, named by its file_name without the extension.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from lesionseg.datasets.base import Case, DatasetError, Frame, instances, read_bytes, select_classes
from lesionseg.datasets.folders import decode, image_size
from lesionseg.settings import Settings

_KEYS = ("images", "annotations", "categories")


def _is_coco(path: Path) -> bool:
    try:
        head = path.read_bytes()[: 1 << 20].decode("utf-8", "replace")
    except OSError:
        return False
    return all(f'"{key}"' in head for key in _KEYS)


def _jsons(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    candidates = sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json"))
    return [p for p in candidates if _is_coco(p)]


def looks_like(root: Path) -> bool:
    return (root.is_file() and root.suffix.lower() == ".json") or bool(_jsons(root))


def _find_json(root: Path) -> tuple[Path, dict]:
    found = _jsons(root)
    if len(found) != 1:
        raise DatasetError(
            f"{root}: {'no' if not found else len(found)} COCO JSON files "
            f"({', '.join(p.name for p in found)}); open the one to train on, e.g. "
            "`lesionseg train path/to/instances_train.json`"
        )
    try:
        spec = json.loads(read_bytes(found[0]))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{found[0]}: not valid JSON ({exc})") from exc
    if not isinstance(spec, dict) or any(not isinstance(spec.get(k), list) for k in _KEYS):
        raise DatasetError(f"{found[0]}: a COCO JSON needs the lists {', '.join(_KEYS)}")
    return found[0], spec


def _image_path(root: Path, source: Path, file_name: str) -> Path:
    base = root if root.is_dir() else root.parent
    for folder in (
        source.parent,
        source.parent / "images",
        base / "images",
        base.parent / "images",
    ):
        if (folder / file_name).is_file():
            return folder / file_name
    raise DatasetError(
        f"{source}: image {file_name!r} not found next to the JSON or in an images/ folder"
    )


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of one COCO segmentation (polygons, RLE or compressed RLE)."""
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    return coco_mask.decode(rle).astype(bool)


def _load(
    name: str,
    image: Path,
    source: Path,
    annotations: list[dict],
    to_class: dict[int, int],
    settings: Settings,
) -> Frame:
    decoded = decode(image, settings)
    height, width = decoded.height, decoded.width
    masks, labels = [], []
    for annotation in annotations:
        if annotation["category_id"] not in to_class:
            continue
        label = to_class[annotation["category_id"]]
        try:
            mask = _decode(annotation["segmentation"], height, width)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise DatasetError(
                f"{source}: annotation {annotation.get('id')} has an unreadable segmentation "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if mask.shape != (height, width):
            raise DatasetError(
                f"{source}: annotation {annotation.get('id')} is not {width}x{height}"
            )
        if annotation.get("iscrowd"):
            parts, _ = instances(mask.astype(np.uint16))
            masks += list(parts)
            labels += [label] * len(parts)
        elif mask.any():
            masks.append(mask)
            labels.append(label)
    stacked = np.array(masks, bool).reshape(len(masks), height, width)
    return Frame(name, decoded.pixels, stacked, np.array(labels, np.int64), None)


def read(
    root: Path, *, labels: Sequence[str] | None, window, settings: Settings
) -> tuple[tuple[str, ...], tuple[Case, ...]]:
    """Classes and cases of a COCO JSON; ids, categories and image sizes are checked now."""
    if window is not None:
        raise DatasetError(f"{root}: a window applies to DICOM and NIfTI datasets only")
    source, spec = _find_json(root)
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in spec["categories"])
        images = {int(i["id"]): i for i in spec["images"]}
        by_image: dict[int, list[dict]] = {i: [] for i in images}
        for annotation in spec["annotations"]:
            image_id, category = int(annotation["image_id"]), int(annotation["category_id"])
            if image_id not in images:
                raise DatasetError(
                    f"{source}: annotation {annotation.get('id')} names image "
                    f"id {image_id}, which is not in 'images'"
                )
            if category not in dict(categories):
                raise DatasetError(
                    f"{source}: annotation {annotation.get('id')} names category "
                    f"id {category}, which is not in 'categories'"
                )
            if not annotation.get("segmentation"):
                raise DatasetError(
                    f"{source}: annotation {annotation.get('id')} has no "
                    "segmentation (lesionseg trains on masks, not boxes only)"
                )
            by_image[image_id].append(annotation)
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{source}: malformed COCO record ({type(exc).__name__}: {exc})"
        ) from exc
    classes = select_classes([name for _, name in categories], labels, source)
    to_class = {i: classes.index(name) for i, name in categories if name in classes}
    cases, seen = [], set()
    for image_id, record in sorted(images.items()):
        file_name = str(record.get("file_name", ""))
        path = _image_path(root, source, file_name)
        height, width = image_size(path)
        if (record.get("height"), record.get("width")) not in ((height, width), (None, None)):
            raise DatasetError(
                f"{path}: the image is {width}x{height}, {source.name} says "
                f"{record.get('width')}x{record.get('height')}"
            )
        name = Path(file_name).with_suffix("").as_posix()
        if name in seen:
            raise DatasetError(f"{source}: two images are named {name!r}")
        seen.add(name)
        load = partial(_load, name, path, source, by_image[image_id], to_class, settings)
        cases.append(Case(name, path, (source, path), load_frame=load))
    return classes, tuple(cases)
