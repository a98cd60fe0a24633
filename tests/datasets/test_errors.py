"""Bad data fails early with a DatasetError that names the file and says how to fix it."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from lesionseg.datasets import open_dataset
from lesionseg.errors import DatasetError, InputError

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


# --- 2-D folders, BUSI, COCO ----------------------------------------------------------------


@pytest.fixture
def folders(lits, tmp_path):
    return fixtures.write_folders(lits, tmp_path / "folders", slabs=SLABS)


def test_folders_mask_size_mismatch(folders):
    mask = folders / "masks" / "lits117_z061.png"
    Image.fromarray(np.zeros((100, 128), np.uint8)).save(mask)
    with naming(mask, r": mask is 128x100 but its image .*lits117_z061.png is 128x128"):
        open_dataset(folders)


def test_folders_missing_mask(folders):
    (folders / "masks" / "lits117_z061.png").unlink()
    with naming(folders / "images" / "lits117_z061.png", r": no mask masks/lits117_z061.png"):
        open_dataset(folders)


def test_folders_mask_value_not_in_classes_txt(folders):
    mask = folders / "masks" / "lits117_z111.png"
    Image.fromarray(np.full((128, 128), 3, np.uint8)).save(mask)
    with naming(mask, r": mask value 3 has no name in classes.txt"):
        open_dataset(folders)


@pytest.mark.parametrize("which", ["images", "masks"])
def test_folders_unreadable_file(folders, which):
    path = folders / which / "lits117_z060.png"
    path.write_bytes(b"not a png")
    with naming(path, r": not a readable"):
        open_dataset(folders)


def test_folders_colour_mask(folders):
    mask = folders / "masks" / "lits117_z060.png"
    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[10:20, 10:20] = (255, 0, 0)
    Image.fromarray(rgb).save(mask)
    with naming(mask, r": colour mask; save masks as grayscale"):
        open_dataset(folders)


def test_busi_image_without_mask(lits, tmp_path):
    root = fixtures.write_busi(lits, tmp_path / "busi", slabs=SLABS)
    for mask in (root / "tumour").glob("lits117_z062_mask*.png"):
        mask.unlink()
    with naming(root / "tumour" / "lits117_z062.png", r": no mask lits117_z062_mask.png"):
        open_dataset(root)


def test_busi_mask_size_mismatch(lits, tmp_path):
    root = fixtures.write_busi(lits, tmp_path / "busi", slabs=SLABS)
    mask = root / "tumour" / "lits117_z062_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    with naming(mask, r": mask is 64x64 but its image"):
        open_dataset(root)


@pytest.fixture
def coco(lits, tmp_path):
    root = fixtures.write_coco(lits, tmp_path / "coco", slabs=SLABS)
    return root, json.loads((root / "annotations.json").read_text())


def _rewrite(root, spec):
    (root / "annotations.json").write_text(json.dumps(spec))
    return root / "annotations.json"


def test_coco_unknown_image_id(coco):
    root, spec = coco
    spec["annotations"][3]["image_id"] = 99
    with naming(_rewrite(root, spec), r": annotation 4 names image id 99, which is not"):
        open_dataset(root)


def test_coco_box_only_annotation(coco):
    root, spec = coco
    del spec["annotations"][0]["segmentation"]
    with naming(_rewrite(root, spec), r": annotation 1 has no segmentation"):
        open_dataset(root)


def test_coco_missing_image(coco):
    root, _ = coco
    (root / "images" / "lits117_z061.png").unlink()
    with naming(root / "annotations.json", r": image 'lits117_z061.png' not found"):
        open_dataset(root)


def test_coco_image_size_mismatch(coco):
    root, spec = coco
    spec["images"][1]["height"] = 256
    _rewrite(root, spec)
    with naming(root / "images" / "lits117_z061.png", r": the image is 128x128, .* says 128x256"):
        open_dataset(root)


def test_coco_not_json(coco):
    root, _ = coco
    (root / "annotations.json").write_text('{"images": [], "annotations": [], "categories": [')
    with naming(root / "annotations.json", r": not valid JSON"):
        open_dataset(root)


# --- DICOM ------------------------------------------------------------------------------------


def _dicom(lits, tmp_path, truth):
    return fixtures.write_dicom(lits, tmp_path / truth, slabs=SLABS[:1], truth=truth)


@pytest.mark.parametrize("truth", ["seg", "rtstruct"])
def test_dicom_truth_of_another_series(lits, tmp_path, truth):
    root = _dicom(lits, tmp_path, truth)
    other = _dicom(lits, tmp_path / "other", truth)  # same pixels, another series
    name = f"{truth}.dcm"
    moved = root / "lits117_z060" / name
    moved.write_bytes((other / "lits117_z060" / name).read_bytes())
    what = "SEG" if truth == "seg" else "RTSTRUCT"
    with naming(moved, rf": the {what} references another series \(1\.2\..*\); the images"):
        open_dataset(root)


def test_dicom_two_series_in_a_case(lits, tmp_path):
    root = _dicom(lits, tmp_path, "seg")
    for ds in fixtures.lits_series(lits, 60, 62):
        ds.save_as(
            root / "lits117_z060" / f"extra_{ds.InstanceNumber}.dcm", enforce_file_format=True
        )
    with naming(root / "lits117_z060", r": 2 image series; a case folder holds"):
        open_dataset(root)


def test_dicom_no_ground_truth(lits, tmp_path):
    root = _dicom(lits, tmp_path, "seg")
    (root / "lits117_z060" / "seg.dcm").unlink()
    with naming(root / "lits117_z060", r": 0 SEG/RTSTRUCT files"):
        open_dataset(root)


def test_dicom_truncated_image(lits, tmp_path):
    root = _dicom(lits, tmp_path, "rtstruct")
    path = sorted((root / "lits117_z060" / "ct").iterdir())[1]
    path.write_bytes(path.read_bytes()[:-5000])
    with naming(path, r": cannot decode the DICOM pixel data"):
        _read_all(root)


def test_dicom_unreadable_header(lits, tmp_path):
    root = _dicom(lits, tmp_path, "seg")
    path = sorted((root / "lits117_z060" / "ct").iterdir())[0]
    path.write_bytes(path.read_bytes()[:400])
    with naming(path, r": not a readable DICOM file"):
        open_dataset(root)


def test_dicom_contour_between_slices(lits, tmp_path):
    root = _dicom(lits, tmp_path, "rtstruct")
    path = root / "lits117_z060" / "rtstruct.dcm"
    ds = pydicom.dcmread(path)
    contour = ds.ROIContourSequence[1].ContourSequence[0]
    points = np.array(contour.ContourData, float).reshape(-1, 3)
    points[:, 2] += 1.25  # half a slice gap
    contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    ds.save_as(path)
    with naming(path, r": a contour of ROI 'tumour' lies at .* mm along the slice normal, on no"):
        _read_all(root)


# --- format and options ------------------------------------------------------------------------


def test_unknown_format_name(nnunet):
    with pytest.raises(DatasetError, match=r"unknown format 'voc'; formats: nnunet, folders"):
        open_dataset(nnunet, format="voc")


def test_wrong_format_override(nnunet):
    with naming(nnunet, r": no COCO JSON files"):
        open_dataset(nnunet, format="coco")


def test_window_on_2d_images(folders):
    with naming(folders, r": a window applies to DICOM and NIfTI datasets only"):
        open_dataset(folders, window="abdomen")


def test_bad_window(nnunet):
    with pytest.raises(InputError, match="window must be one of"):
        open_dataset(nnunet, window="soft")
