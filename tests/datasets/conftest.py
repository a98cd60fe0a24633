"""Session fixtures: the LiTS case written once in every layout."""

from __future__ import annotations

import pytest

from . import fixtures

# layout -> (writer, its keyword arguments, the tumour's class name in that layout)
LAYOUTS = {
    "nnunet": (fixtures.write_nnunet, {}, "tumour"),
    "msd": (fixtures.write_nnunet, {"msd": True}, "tumour"),
    "dicom-seg": (fixtures.write_dicom, {}, "tumour"),
    "dicom-rtstruct": (fixtures.write_dicom, {"truth": "rtstruct"}, "tumour"),
    "dicom-rtstruct-centers": (
        fixtures.write_dicom,
        {"truth": "rtstruct", "style": "centers"},
        "tumour",
    ),
    "folders": (fixtures.write_folders, {}, "tumour"),
    "folders-binary": (fixtures.write_folders, {"binary": True}, "lesion"),
    "busi": (fixtures.write_busi, {}, "tumour"),
    "coco": (fixtures.write_coco, {}, "tumour"),
    "coco-polygons": (fixtures.write_coco, {"rle": False}, "tumour"),
}


@pytest.fixture(scope="session")
def layouts(lits, tmp_path_factory) -> dict:
    """layout name -> (path to open, the tumour's class name) of the LiTS slabs."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        name: (writer(lits, root / name, **options), tumour)
        for name, (writer, options, tumour) in LAYOUTS.items()
    }
