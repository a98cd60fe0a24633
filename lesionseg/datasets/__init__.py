"""Readers of users' labelled datasets for ``lesionseg train``: :func:`open_dataset`.

Layouts, told apart by the folder (``format=`` / ``--format`` overrides):

* ``nnunet`` — nnU-Net v2 / Medical Segmentation Decathlon: ``dataset.json`` (``labels``,
  ``channel_names``, ``file_ending``), ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``.
  Axial slices as the service's NIfTI path takes them; ``labels`` picks the lesion labels
  (default: all but background), each a class. One case per volume; channel 0 only.
* ``folders`` — 2-D images and masks: ``images/NAME.png`` + ``masks/NAME.png`` (any image
  format the service reads; masks lossless). A binary mask is class "lesion"; integer masks
  give one class per value, named by ``classes.txt`` (line k names value k) or ``label_<v>``.
* ``busi`` — breast-ultrasound (BUSI) style: one folder per class, ``NAME.png`` with
  ``NAME_mask.png``, ``NAME_mask_1.png``, ... (their union). A folder whose masks are all empty
  (BUSI's ``normal``) gives negative images, not a class.
* ``dicom`` — as a PACS exports it: one folder per case holding the files of one series and
  its ground truth, a DICOM SEG (segment labels are the classes) or an RTSTRUCT (ROI names are
  the classes; contours filled on the slice they lie on, even-odd). Single-frame files; slices
  in order along the normal. A folder of DICOM files without case subfolders is one case.
* ``coco`` — a COCO instance JSON (polygons or RLE; categories are the classes, in id order),
  images found next to the JSON or in an ``images/`` folder; each annotation is one instance.

Every 2-D image is its own case; a volume (nnU-Net, DICOM) is one case. Lesion instances are
the 8-connected components of each class on each slice (COCO: the annotations); the
``labels`` option picks lesion classes by name in every layout (the others count as
background). Intensities: NIfTI and DICOM images are decoded by the service's own code with
``window`` (a preset or "center,width"; None = the file's window, else min-max), as the service
decodes an upload under a bundle with that window; 2-D images by
:func:`lesionseg.io.images.decode_image` (a window is refused). So training pixels equal serving
pixels. Bad data raises :class:`lesionseg.errors.DatasetError` naming the file: headers and
masks are checked by :func:`open_dataset`, voxel data when a case is read; a case without
lesions is a negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lesionseg.datasets import busi, coco, dicom, folders, nnunet
from lesionseg.datasets.base import FORMATS, Case, Dataset, Frame, Volume, instances
from lesionseg.errors import DatasetError
from lesionseg.settings import Settings
from lesionseg.windows import parse_window

__all__ = [
    "FORMATS",
    "Case",
    "Dataset",
    "Frame",
    "Volume",
    "detect_format",
    "instances",
    "open_dataset",
]

_READERS = {
    "nnunet": nnunet,
    "coco": coco,
    "folders": folders,
    "busi": busi,
    "dicom": dicom,
}
_HINTS = {
    "nnunet": "dataset.json + imagesTr/ + labelsTr/",
    "folders": "images/ + masks/",
    "busi": "one folder per class with NAME.png + NAME_mask.png",
    "dicom": "one folder per case: a DICOM series + a SEG or RTSTRUCT",
    "coco": "a COCO instances JSON (images, annotations, categories)",
}


def detect_format(path: Path) -> str:
    """The layout of ``path`` (one of :data:`FORMATS`), or DatasetError listing the layouts."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    for name, reader in _READERS.items():
        if reader.looks_like(path):
            return name
    layouts = "; ".join(f"{name}: {hint}" for name, hint in _HINTS.items())
    raise DatasetError(f"{path}: unknown dataset layout. Layouts read: {layouts}")


def open_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    labels: Sequence[str] | None = None,
    window: str | None = None,
    settings: Settings | None = None,
) -> Dataset:
    """Open the dataset at ``path`` (its layout detected unless ``format`` names one).

    Args:
        labels: the label names (classes) that count as lesions; default all but background.
        window: a preset of ``Settings.window_presets`` or "center,width" for NIfTI/DICOM.

    Raises:
        DatasetError: naming the file, when the data are unreadable or inconsistent, or the
            dataset holds no case. Files' headers are checked here; pixel data when a case is read.
        InputError: ``window`` is not a preset or "center,width".
    """
    settings = settings or Settings()
    root = Path(path)
    if format is None:
        format = detect_format(root)
    elif format not in _READERS:
        raise DatasetError(f"unknown format {format!r}; formats: {', '.join(FORMATS)}")
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    chosen = parse_window(window, settings.window_presets)
    classes, cases = _READERS[format].read(root, labels=labels, window=chosen, settings=settings)
    if not cases:
        raise DatasetError(f"{root}: the {format} dataset holds no case ({_HINTS[format]})")
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), "readers name cases uniquely"
    cases = tuple(sorted(cases, key=lambda case: case.name))
    return Dataset(root, format, tuple(classes), cases, window)
