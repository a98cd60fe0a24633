"""Dataset-level behaviour: Volume.frames, instances, fingerprint, negatives, label selection,
format override, and training pixels equal to the service's."""

from __future__ import annotations

import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from lesionseg.datasets import Volume, instances, open_dataset
from lesionseg.io.uploads import decode_upload
from lesionseg.settings import Settings

from . import fixtures


def test_instances_are_8_connected_per_class():
    class_map = np.zeros((6, 6), np.uint16)
    class_map[0, 0] = class_map[1, 1] = 1  # diagonal neighbours: one lesion
    class_map[4, 4] = 1
    class_map[0, 5] = class_map[1, 5] = 2  # touching lesions of two classes stay apart
    class_map[0, 4] = 1  # touches class 2 only
    masks, labels = instances(class_map)
    assert labels.tolist() == [0, 0, 0, 1]  # by class, then in raster order
    assert [m.sum() for m in masks] == [2, 1, 1, 2]
    assert masks[0][0, 0] and masks[0][1, 1] and masks[1][0, 4] and masks[3][1, 5]


def test_volume_frames_along_every_axis():
    labels = np.zeros((4, 5, 6), np.uint16)
    labels[1:3, 2, 3] = 1
    image = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    volume = Volume(image, labels, (2.5, 0.7, 0.8))
    axial = list(volume.frames(prefix="c"))
    assert [f.name for f in axial] == [f"c/a0_{i:03d}" for i in range(4)]
    assert [len(f.masks) for f in axial] == [0, 1, 1, 0]
    assert axial[2].spacing == (0.7, 0.8) and axial[2].image.shape == (5, 6, 3)
    cropped = list(volume.frames(z_range=(1, 3), prefix="c"))
    assert [f.name for f in cropped] == ["c/a0_001", "c/a0_002"]
    coronal = list(volume.frames(axis=1, z_range=(1, 4), prefix="c"))
    assert len(coronal) == 5 and coronal[2].image.shape == (3, 6, 3)
    assert coronal[2].spacing == (2.5, 0.8) and coronal[2].masks[0].sum() == 2
    np.testing.assert_array_equal(coronal[2].image[:, :, 0], image[1:4, 2, :])
    sagittal = list(volume.frames(axis=2, prefix="c"))
    assert sagittal[3].name == "c/a2_003" and sagittal[3].spacing == (2.5, 0.7)
    assert sagittal[3].masks.shape == (1, 4, 5)


def test_fingerprint_follows_the_files(lits, tmp_path):
    root = fixtures.write_nnunet(lits, tmp_path / "a", slabs=((60, 62),))
    first = open_dataset(root).fingerprint()
    (root / "notes.txt").write_text("not part of the dataset")
    assert open_dataset(root).fingerprint() == first
    copy = shutil.copytree(root, tmp_path / "b")
    assert open_dataset(copy).fingerprint() == first  # relative paths: the location is no part
    label = copy / "labelsTr" / "lits117_z060.nii.gz"
    image = nib.load(label)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(data, image.affine, image.header), label)
    assert open_dataset(copy).fingerprint() != first


def test_negatives_are_cases_without_lesions(lits, tmp_path):
    busi = fixtures.write_busi(lits, tmp_path / "busi", slabs=((60, 62),), normal=2)
    dataset = open_dataset(busi)
    assert dataset.classes == ("tumour",)  # normal/ has only empty masks: not a class
    normal = [c for c in dataset.cases if c.name.startswith("normal/")]
    assert [c.name for c in normal] == ["normal/normal_0", "normal/normal_1"]
    assert all(len(next(c.frames()).masks) == 0 for c in normal)
    nnunet = fixtures.write_nnunet(lits, tmp_path / "nnunet", slabs=((60, 62),), negatives=1)
    negative = {c.name: c for c in open_dataset(nnunet).cases}["negative_0"]
    assert negative.volume().labels.max() == 0
    assert all(len(f.masks) == 0 for f in negative.frames())


def test_nnunet_labels_pick_classes_in_dataset_order(layouts):
    path, _ = layouts["nnunet"]
    assert open_dataset(path, labels=["tumour", "liver"]).classes == ("liver", "tumour")
    liver = open_dataset(path, labels=["liver"])
    volume = liver.cases[0].volume()
    assert volume.labels.max() == 1  # tumour is background now


def test_integer_masks_without_classes_txt(lits, tmp_path):
    root = fixtures.write_folders(lits, tmp_path / "folders", slabs=((60, 61),))
    (root / "classes.txt").unlink()
    assert open_dataset(root).classes == ("label_1", "label_2")


def test_format_override_picks_the_reader(lits, tmp_path):
    root = fixtures.write_folders(lits, tmp_path / "both", slabs=((60, 62),))
    fixtures.write_coco(lits, root, slabs=((60, 61),))  # annotations.json next to images/
    assert open_dataset(root).format == "coco"
    assert len(open_dataset(root).cases) == 1
    dataset = open_dataset(root, format="folders")
    assert dataset.format == "folders" and len(dataset.cases) == 2


def test_msd_four_dimensional_image_uses_channel_0(lits, tmp_path, caplog):
    root = fixtures.write_nnunet(lits, tmp_path / "msd", slabs=((60, 62),), msd=True)
    path = root / "imagesTr" / "lits117_z060.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, -data], -1), image.affine, image.header), path)
    spec = (root / "dataset.json").read_text().replace('"0": "CT"', '"0": "CT", "1": "NEG"')
    (root / "dataset.json").write_text(spec)
    with caplog.at_level(logging.WARNING):
        dataset = open_dataset(root, window="abdomen")
    assert "2 channels ['CT', 'NEG']; lesionseg trains on channel 0 (CT)" in caplog.text
    expected = fixtures.windowed(lits, 60)
    np.testing.assert_array_equal(dataset.cases[0].volume().image[0], expected)


@pytest.mark.parametrize("layout", ["nnunet", "dicom-seg"])
@pytest.mark.parametrize("window", [None, "abdomen"])
def test_pixels_are_the_service_pixels(layouts, layout, window):
    """Each volume slice equals what /segment decodes from the same file with the window as
    the bundle's default (DICOM without a window: the file's own window or min-max per file)."""
    path, _ = layouts[layout]
    settings = Settings(default_window=None)
    case = open_dataset(path, window=window, settings=settings).cases[0]
    volume = case.volume()
    files = [f for f in case.files if f.suffix in (".gz", ".dcm") and f.parent.name != case.name]
    if layout == "nnunet":
        files = [f for f in files if f.parent.name == "imagesTr"]
    served = [
        frame.pixels
        for f in files
        for frame in decode_upload(f.read_bytes(), settings, default_window=window).frames
    ]
    assert len(served) == len(volume.image)
    for k, pixels in enumerate(served):
        np.testing.assert_array_equal(pixels[:, :, 0], volume.image[k])


def test_2d_pixels_are_the_service_pixels(layouts):
    path, _ = layouts["busi"]
    case = open_dataset(path).cases[0]
    served = decode_upload(case.source.read_bytes(), Settings()).frames[0].pixels
    np.testing.assert_array_equal(next(case.frames()).image, served)
    assert np.asarray(Image.open(case.source)).shape == (128, 128)


@pytest.mark.parametrize(
    ("channel", "modality"),
    [("CT", "CT"), ("T2", "MR"), ("FLAIR", "MR"), ("MRI", "MR"), ("PET", "PT"), ("noNorm", None)],
)
def test_nnunet_channel_names_give_the_dicom_modality(channel, modality):
    from lesionseg.datasets.nnunet import channel_modality

    assert channel_modality(channel) == modality


@pytest.mark.parametrize(
    ("layout", "modality"),
    [
        ("nnunet", "CT"),
        ("msd", "CT"),
        ("dicom-seg", "CT"),
        ("dicom-rtstruct", "CT"),
        ("folders", None),
        ("coco", None),
    ],
)
def test_dataset_modality_is_what_the_bundle_records(layouts, layout, modality):
    path, _ = layouts[layout]
    assert open_dataset(path).modality == modality
