"""Example inputs built from the fetched LiTS case: a PNG slice, a CT DICOM series, a NIfTI.

LiTS ships as MRC volumes without DICOM headers, so the DICOM examples borrow the header of
pydicom-data's real ``CT_small.dcm`` (128 x 128, 0.66 mm pixels, rescale slope 1, intercept
-1024) and carry the LiTS Hounsfield units as pixels; the patient fields are placeholders.
``make data`` writes them into ``data/examples/`` for the README's curl lines; the tests build
the same inputs in memory.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lesionseg.datasets.lits import LitsCase


def dicom_bytes(dataset) -> bytes:
    """A pydicom dataset as DICOM Part-10 bytes."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def lits_ct(
    case: LitsCase, indices: Sequence[int], *, patient: tuple[str, str] = ("Anon^Lits", "LITS117")
) -> list[bytes]:
    """LiTS axial slices as the CT files of one new series (one file per slice, 2.5 mm apart)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    series = generate_uid()
    files = []
    for n, index in enumerate(indices):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientName, ds.PatientID = patient
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [-80.0, -80.0, -100.0 + 2.5 * index]
        stored = np.round(case.ct[index] + 1024).clip(-2000, 30000).astype(np.int16)  # (H, W)
        ds.PixelData = stored.tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue"):
            if keyword in ds:
                delattr(ds, keyword)
        files.append(dicom_bytes(ds))
    return files


def lits_nifti(
    case: LitsCase, first: int, count: int, zooms: tuple[float, float, float] = (0.7, 0.8, 2.5)
) -> bytes:
    """Slices first..first+count-1 as a gzipped NIfTI-1 (X, Y, Z) float32 HU, spacing in mm,
    so that ``data[..., k].T`` is LiTS axial slice ``first + k``."""
    import nibabel as nib

    data = case.ct[first : first + count].transpose(2, 1, 0).astype(np.float32)  # (X, Y, Z)
    image = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes())


def write_lits_nnunet(case: LitsCase, root: Path) -> Path:
    """The whole LiTS case as an nnU-Net v2 dataset: one case ``lits117`` (labels background 0,
    liver 1, tumour 2), images in HU. The voxel spacing of LiTS 117 is unknown, so the NIfTI
    says nothing of units (no mm). ``lesionseg train`` rebuilds the shipped bundle from it
    (``make train-default``)."""
    import json

    import nibabel as nib

    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for folder, name, volume, dtype in (
        ("imagesTr", "lits117_0000", case.ct, np.float32),
        ("labelsTr", "lits117", case.labels, np.uint8),
    ):
        # (Z, Y, X) -> NIfTI (X, Y, Z): the service's axial slice k is volume[k].
        image = nib.Nifti1Image(volume.transpose(2, 1, 0).astype(dtype), np.eye(4))
        nib.save(image, root / folder / f"{name}.nii.gz")
    spec = {
        "name": "LiTS case 117 (liver-ct-segmentation-package==1.6.0)",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n")
    return root


def write_examples(case: LitsCase, out: Path, index: int = 110) -> list[Path]:
    """Write ``lits117-z<i>.png``, ``lits117-ct/z<i-1,i,i+1>.dcm`` and ``lits117.nii.gz``."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    png = out / f"lits117-z{index}.png"
    Image.fromarray(case.slice(index).image).save(png)
    series = out / "lits117-ct"
    series.mkdir(exist_ok=True)
    indices = [index - 1, index, index + 1]
    written = [png]
    for i, data in zip(indices, lits_ct(case, indices), strict=True):
        written.append(series / f"z{i}.dcm")
        written[-1].write_bytes(data)
    written.append(out / "lits117.nii.gz")
    written[-1].write_bytes(lits_nifti(case, index - 1, 3))
    return written
