"""Write the LiTS case (lesionseg.data.LitsCase) in every dataset layout lesionseg reads.

Each writer takes the case and a root folder, writes short axial slabs of it (default: 3 cases
of 6 slices, ``SLABS``) and returns the path to open. Labels: 1 liver, 2 tumour, as in LiTS.
Geometry is real: 0.7 mm pixels and 2.5 mm slices (NIfTI affine; DICOM ImagePositionPatient,
PixelSpacing). Names carry the axial index so a test can find the source slice of a frame:
case ``lits117_z010`` is the slab from slice 10; 2-D files ``lits117_z013.png`` are slice 13.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.data import LitsCase, window_ct

SLABS: tuple[tuple[int, int], ...] = ((10, 16), (60, 66), (110, 116))  # [start, stop)
CLASSES = ("liver", "tumour")  # label values 1, 2
PIXEL_MM, SLICE_MM = 0.7, 2.5


def case_name(start: int) -> str:
    return f"lits117_z{start:03d}"


def slice_of(frame_name: str) -> int:
    """The LiTS axial index of a frame read from a fixture: ``lits117_z010/a0_003`` -> 13
    (slabs keep whole-volume indices from their start), ``benign/lits117_z013`` -> 13."""
    match = re.search(r"lits117_z(\d{3})(?:/a0_(\d{3}))?$", frame_name)
    assert match, frame_name
    return int(match[1]) + int(match[2] or 0)


def nifti_affine(start: int) -> np.ndarray:
    """LPS-flipped (RAS+) affine as LiTS NIfTIs have: x, y decreasing, z up, in mm."""
    affine = np.diag([-PIXEL_MM, -PIXEL_MM, SLICE_MM, 1.0])
    affine[:3, 3] = (45.0, 45.0, -100.0 + SLICE_MM * start)
    return affine


def _nifti(volume: np.ndarray, start: int, dtype) -> nib.Nifti1Image:
    """(Z, Y, X) -> NIfTI (X, Y, Z) so that the service's slice k (data[..., k].T) is volume[k]."""
    image = nib.Nifti1Image(volume.transpose(2, 1, 0).astype(dtype), nifti_affine(start))
    image.header.set_xyzt_units("mm")
    return image


def write_nnunet(
    case: LitsCase,
    root: Path,
    *,
    slabs: Sequence[tuple[int, int]] = SLABS,
    msd: bool = False,
    negatives: int = 0,
) -> Path:
    """An nnU-Net v2 dataset (or, ``msd=True``, a Decathlon one: value -> name labels,
    "modality", a "training" list, images without the _0000 suffix). ``negatives``: extra
    cases whose label volume is empty (named ``lits117_z1NN``... from slab 0's pixels)."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    training = []
    items = [(case_name(a), a, b, case.labels[a:b]) for a, b in slabs]
    a, b = slabs[0]
    items += [(f"negative_{n}", a, b, np.zeros_like(case.labels[a:b])) for n in range(negatives)]
    for name, a, b, labels in items:
        image_name = f"{name}.nii.gz" if msd else f"{name}_0000.nii.gz"
        nib.save(_nifti(case.ct[a:b], a, np.float32), root / "imagesTr" / image_name)
        nib.save(_nifti(labels, a, np.uint8), root / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{image_name}", "label": f"./labelsTr/{name}.nii.gz"})
    if msd:
        spec = {
            "name": "LiTS117",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": CLASSES[0], "2": CLASSES[1]},
            "numTraining": len(training),
            "training": training,
        }
    else:
        spec = {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, CLASSES[0]: 1, CLASSES[1]: 2},
            "numTraining": len(training),
            "file_ending": ".nii.gz",
        }
    (root / "dataset.json").write_text(json.dumps(spec, indent=2))
    return root


def windowed(case: LitsCase, index: int) -> np.ndarray:
    """(H, W) uint8: slice ``index`` in the abdomen window, as the 2-D layouts store it."""
    return window_ct(case.ct[index])
