"""nnU-Net v2 and Medical Segmentation Decathlon (MSD) datasets of NIfTI volumes.

Layout::

    dataset.json          labels: {"background": 0, "liver": 1, "tumour": 2} (nnU-Net v2; a list
                          value is a region of several label values) or {"0": "background",
                          "1": "liver", ...} (MSD); channel_names (or MSD "modality"); file_ending
    imagesTr/CASE_0000.nii.gz   channel 0 of each case (MSD: imagesTr/CASE.nii.gz, 4-D when
                                there are several channels, listed in dataset.json "training")
    labelsTr/CASE.nii.gz        integer label volume, same shape and affine as the image

Images are decoded by the service's own :func:`lesionseg.io.nifti.decode_nifti` with the dataset's
window, so training pixels are serving pixels; the label volume is sliced the same way (along
:func:`lesionseg.io.nifti.slice_axis`, slice ``k`` transposed). Only channel 0 is used (a warning
says so when there are more). Every selected label (default: all but background and "ignore")
is a lesion class; unselected labels count as background.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.datasets.base import Case, DatasetError, Volume, read_bytes, select_classes
from lesionseg.errors import LesionSegError
from lesionseg.io.nifti import _UNIT_TO_MM, decode_nifti
from lesionseg.settings import Settings

log = logging.getLogger(__name__)

_NOT_LESIONS = ("background", "ignore")
_AFFINE_TOLERANCE_MM = 1e-3


def looks_like(root: Path) -> bool:
    return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()


def _label_values(spec: dict, where: Path) -> dict[str, tuple[int, ...]]:
    """dataset.json ``labels`` (either form) -> name -> the label values it covers."""
    if not isinstance(spec, dict) or not spec:
        raise DatasetError(f"{where}: 'labels' must be a non-empty object of name -> value")
    try:
        if all(str(key).strip().isdigit() for key in spec):  # MSD: {"0": "background", ...}
            return {str(name): (int(key),) for key, name in spec.items()}
        return {
            str(name): tuple(int(v) for v in (value if isinstance(value, list) else [value]))
            for name, value in spec.items()
        }
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: a 'labels' value is not an integer ({exc})") from exc


def _read_json(path: Path) -> dict:
    try:
        spec = json.loads(read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return spec


def _pairs(root: Path, spec: dict, ending: str) -> list[tuple[str, Path, Path]]:
    """(case, image, label) for every training case."""
    if isinstance(spec.get("training"), list) and spec["training"]:  # MSD lists them
        pairs = []
        for item in spec["training"]:
            image, label = (root / str(item.get(k, "")) for k in ("image", "label"))
            pairs.append((label.name.removesuffix(ending), image, label))
    else:
        labels = sorted((root / "labelsTr").glob(f"*{ending}"))
        pairs = []
        for label in labels:
            case = label.name.removesuffix(ending)
            image = root / "imagesTr" / f"{case}_0000{ending}"
            if not image.exists() and (root / "imagesTr" / label.name).exists():
                image = root / "imagesTr" / label.name  # MSD naming without a training list
            pairs.append((case, image, label))
    pairs = [p for p in pairs if not p[2].name.startswith("._")]  # macOS metadata in MSD tars
    for _, image, label in pairs:
        for path in (image, label):
            if not path.is_file():
                raise DatasetError(
                    f"{path}: file missing (every labelsTr/CASE{ending} needs "
                    f"imagesTr/CASE_0000{ending})"
                )
    return pairs


def _header(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable NIfTI file ({exc})") from exc


def _check_geometry(image_path: Path, label_path: Path) -> None:
    image, label = _header(image_path), _header(label_path)
    if tuple(image.shape[:3]) != tuple(label.shape[:3]) or len(label.shape) > 3:
        raise DatasetError(
            f"{label_path}: label shape {list(label.shape)} does not match the image "
            f"{image_path.name} {list(image.shape)[:3]}"
        )
    if not np.allclose(image.affine, label.affine, atol=_AFFINE_TOLERANCE_MM, rtol=0):
        raise DatasetError(
            f"{label_path}: the label's affine (voxel to mm) differs from the image "
            f"{image_path.name}'s:\n{label.affine.round(3)}\nvs\n{image.affine.round(3)}; "
            "resample the label onto the image grid"
        )


_MR_CHANNELS = {"MR", "MRI", "T1", "T1W", "T2", "T2W", "T1GD", "T1CE", "FLAIR", "ADC", "DWI", "PD"}


def channel_modality(channel: str) -> str | None:
    """The DICOM Modality of an nnU-Net channel name: "CT" -> "CT", "T2"/"FLAIR"/... -> "MR",
    "PET" -> "PT"; None when the name says nothing known."""
    name = channel.strip().upper().replace("-", "").replace(" ", "")
    if name in ("CT", "PT", "US", "MG", "CR", "DX", "XA"):
        return name
    if name in _MR_CHANNELS or name.startswith("MR"):
        return "MR"
    return "PT" if name == "PET" else None


def read(
    root: Path,
    *,
    labels: Sequence[str] | None,
    window: tuple[float, float] | None,
    settings: Settings,
) -> tuple[tuple[str, ...], tuple[Case, ...]]:
    """Classes and cases of an nnU-Net v2 / MSD dataset at ``root``; headers are checked now."""
    spec_path = root / "dataset.json"
    spec = _read_json(spec_path)
    ending = str(spec.get("file_ending", ".nii.gz"))
    if ending not in (".nii.gz", ".nii"):
        raise DatasetError(
            f"{spec_path}: file_ending {ending!r} is not supported; lesionseg reads NIfTI "
            "(.nii.gz, .nii) nnU-Net datasets"
        )
    values = _label_values(spec.get("labels"), spec_path)
    lesions = [n for n, v in values.items() if n.lower() not in _NOT_LESIONS and v != (0,)]
    classes = select_classes(lesions, labels, spec_path)
    chosen = [set(values[name]) for name in classes]
    for i, a in enumerate(chosen):
        for j in range(i):
            if a & chosen[j]:
                raise DatasetError(
                    f"{spec_path}: labels {classes[j]!r} and {classes[i]!r} share values "
                    f"{sorted(a & chosen[j])} (overlapping regions); pick labels that do not "
                    "overlap (--labels)"
                )
    lut = {v: c + 1 for c, name in enumerate(classes) for v in values[name]}
    known = {v for vs in values.values() for v in vs}
    channels = spec.get("channel_names") or spec.get("modality") or {"0": "?"}
    if len(channels) > 1:
        log.warning(
            "%s: %d channels %s; lesionseg trains on channel 0 (%s) only",
            spec_path,
            len(channels),
            list(channels.values()),
            next(iter(channels.values())),
        )
    modality = channel_modality(str(next(iter(channels.values()))))
    cases = []
    for name, image, label in _pairs(root, spec, ending):
        _check_geometry(image, label)
        load = partial(_load, image, label, lut, known, window, settings)
        files = (spec_path, image, label)
        cases.append(Case(name, image, files, load_volume=load, modality=modality))
    return classes, tuple(cases)


def _channel_zero(path: Path, data: bytes) -> bytes:
    """The bytes of a 3-D NIfTI: ``data`` itself, or channel 0 of a 4-D (MSD) volume."""
    image = _header(path)
    if len(image.shape) <= 3 or image.shape[3] == 1:
        return data
    first = image.slicer[..., 0]
    return first.to_bytes()


def _load(
    image_path: Path,
    label_path: Path,
    lut: dict[int, int],
    known: set[int],
    window: tuple[float, float] | None,
    settings: Settings,
) -> Volume:
    data = _channel_zero(image_path, read_bytes(image_path))
    try:
        decoded = decode_nifti(
            data,
            max_pixels=settings.max_image_pixels,
            max_frames=1 << 20,
            max_bytes=1 << 40,
            window=window,
        )
    except LesionSegError as exc:
        raise DatasetError(f"{image_path}: {exc}") from exc
    image = np.stack([f.pixels[:, :, 0] for f in decoded.frames])  # (Z, H, W)
    header = _header(label_path)
    try:
        raw = np.asanyarray(header.dataobj)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{label_path}: the voxel data are unreadable ({exc})") from exc
    raw = raw.reshape(raw.shape[:3] + (1,) * (3 - raw.ndim))
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise DatasetError(f"{label_path}: label values must be integers")
        raw = raw.astype(np.int64)
    found = {int(v) for v in np.unique(raw)}
    if found - known:
        raise DatasetError(
            f"{label_path}: label values {sorted(found - known)} are not in dataset.json's "
            f"labels ({sorted(known)}); add them to dataset.json or fix the label file"
        )
    table = np.zeros(max(found | known) + 1, np.uint16)
    for value, index in lut.items():
        table[value] = index
    slices = np.moveaxis(raw, decoded.axis, 0).transpose(0, 2, 1)  # slice k = data[k-th].T
    labels = np.ascontiguousarray(table[slices])
    spacing = None
    if decoded.frames[0].pixel_spacing_mm is not None:  # known units: mm, m or um
        unit = _UNIT_TO_MM[header.header.get_xyzt_units()[0]]
        zoom = float(header.header.get_zooms()[decoded.axis]) * unit
        spacing = (zoom, *decoded.frames[0].pixel_spacing_mm)
    return Volume(image, labels, spacing)
