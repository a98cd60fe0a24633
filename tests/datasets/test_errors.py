"""Bad data fails early with a DatasetError that names the file and says how to fix it."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from lesionseg.datasets import open_dataset
from lesionseg.errors import DatasetError

from . import fixtures

SLABS = ((60, 63), (110, 113))


def naming(path, pattern: str):
    """pytest.raises(DatasetError) whose message starts with ``path`` then matches ``pattern``."""
    return pytest.raises(DatasetError, match=re.escape(str(path)) + pattern)


def _read_all(path, **options):
    dataset = open_dataset(path, **options)
    for case in dataset.cases:
        list(case.frames())
    return dataset


@pytest.fixture
def nnunet(lits, tmp_path):
    return fixtures.write_nnunet(lits, tmp_path / "nnunet", slabs=SLABS)


def test_nnunet_label_value_missing_from_dataset_json(nnunet):
    spec = json.loads((nnunet / "dataset.json").read_text())
    del spec["labels"]["tumour"]
    (nnunet / "dataset.json").write_text(json.dumps(spec))
    label = nnunet / "labelsTr" / "lits117_z060.nii.gz"
    with naming(label, r": label values \[2\] are not in dataset"):
        _read_all(nnunet)


def test_nnunet_shape_mismatch(nnunet):
    label = nnunet / "labelsTr" / "lits117_z110.nii.gz"
    image = nib.load(label)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :100], image.affine), label)
    with naming(label, r": label shape \[128, 100, 3\] does not"):
        open_dataset(nnunet)


def test_nnunet_geometry_mismatch(nnunet):
    label = nnunet / "labelsTr" / "lits117_z110.nii.gz"
    image = nib.load(label)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine * 1.1), label)
    with naming(label, r": the label's affine .* differs"):
        open_dataset(nnunet)


@pytest.mark.parametrize(
    "which", ["imagesTr/lits117_z060_0000.nii.gz", "labelsTr/lits117_z060.nii.gz"]
)
def test_nnunet_unreadable_file(nnunet, which):
    path = nnunet / which
    path.write_bytes(path.read_bytes()[:50])
    with naming(path, r": not a readable NIfTI"):
        _read_all(nnunet)


def test_nnunet_missing_image(nnunet):
    image = nnunet / "imagesTr" / "lits117_z060_0000.nii.gz"
    image.unlink()
    with naming(image, r": file missing"):
        open_dataset(nnunet)


def test_nnunet_unknown_label_name(nnunet):
    with pytest.raises(DatasetError, match=r"dataset.json: no label named 'lesion'; .*'liver'"):
        open_dataset(nnunet, labels=["lesion"])


def test_nnunet_empty_dataset(nnunet):
    for path in (nnunet / "labelsTr").iterdir():
        path.unlink()
    with naming(nnunet, r": the nnunet dataset holds no case"):
        open_dataset(nnunet)


def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with naming(tmp_path, r": unknown dataset layout. .*nnunet"):
        open_dataset(tmp_path)
