"""Write the LiTS case (lesionseg.data.LitsCase) in every dataset layout lesionseg reads.

Each writer takes the case and a root folder, writes short axial slabs of it (default: 3 cases
of 6 slices, ``SLABS``) and returns the path to open. Labels: 1 liver, 2 tumour, as in LiTS.
Geometry is real: 0.7 mm pixels and 2.5 mm slices (NIfTI affine; DICOM ImagePositionPatient,
PixelSpacing). Names carry the axial index so a test can find the source slice of a frame:
case ``lits117_z010`` is the slab from slice 10; 2-D files ``lits117_z013.png`` are slice 13.
"""

from __future__ import annotations

import io
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


def _png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _slices(slabs: Sequence[tuple[int, int]]) -> list[int]:
    return [z for a, b in slabs for z in range(a, b)]


def _file(z: int) -> str:
    return f"lits117_z{z:03d}"


def write_folders(
    case: LitsCase, root: Path, *, slabs: Sequence[tuple[int, int]] = SLABS, binary: bool = False
) -> Path:
    """images/ + masks/ PNGs, one per slice (abdomen window). Masks hold the LiTS labels with
    classes.txt naming them (liver, tumour), or with ``binary`` 0/255 tumour masks ("lesion")."""
    root = Path(root)
    for z in _slices(slabs):
        _png(windowed(case, z), root / "images" / f"{_file(z)}.png")
        labels = case.labels[z].astype(np.uint8)
        mask = np.where(labels == 2, 255, 0).astype(np.uint8) if binary else labels
        _png(mask, root / "masks" / f"{_file(z)}.png")
    if not binary:
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def write_busi(
    case: LitsCase, root: Path, *, slabs: Sequence[tuple[int, int]] = SLABS, normal: int = 0
) -> Path:
    """BUSI layout: tumour/NAME.png with one mask file per tumour outline (NAME_mask.png,
    NAME_mask_1.png, ...), as BUSI splits lesions; ``normal`` images with an empty mask in
    normal/ (slab 0's pixels, named normal_N)."""
    from scipy import ndimage

    root = Path(root)
    for z in _slices(slabs):
        folder = root / CLASSES[1]
        _png(windowed(case, z), folder / f"{_file(z)}.png")
        outlines, k = ndimage.label(case.labels[z] == 2, structure=np.ones((3, 3)))
        for i in range(1, k + 1):
            suffix = "_mask" if i == 1 else f"_mask_{i - 1}"
            _png(
                np.where(outlines == i, 255, 0).astype(np.uint8), folder / f"{_file(z)}{suffix}.png"
            )
    for n, z in enumerate(_slices(slabs)[:normal]):
        _png(windowed(case, z), root / "normal" / f"normal_{n}.png")
        _png(np.zeros(case.labels[z].shape, np.uint8), root / "normal" / f"normal_{n}_mask.png")
    return root


def outline(mask: np.ndarray) -> list[np.ndarray]:
    """Closed loops along the pixel edges of a (H, W) bool mask, as (N, 2) float (x, y) corner
    coordinates (pixel (r, c) covers [c, c+1) x [r, r+1)); foreground on the right (clockwise
    on screen). Holes are loops too: filled even-odd, the loops give back the mask exactly."""
    m = np.pad(mask.astype(bool), 1)
    core = m[1:-1, 1:-1]
    nxt = {}
    sides = (
        (-1, 0, (0, 0), (1, 0)),
        (0, 1, (1, 0), (1, 1)),
        (1, 0, (1, 1), (0, 1)),
        (0, -1, (0, 1), (0, 0)),
    )
    for dr, dc, a, b in sides:  # neighbour offset, the edge's corners (x, y) from the pixel's
        border = core & ~m[1 + dr : m.shape[0] - 1 + dr, 1 + dc : m.shape[1] - 1 + dc]
        for r, c in zip(*np.nonzero(border), strict=True):
            start, end = (c + a[0], r + a[1]), (c + b[0], r + b[1])
            nxt.setdefault(start, []).append(end)
    loops = []
    while nxt:
        start = next(iter(nxt))
        loop, point = [start], start
        while True:
            ends = nxt[point]
            end = ends.pop()
            if not ends:
                del nxt[point]
            point = end
            if point == start:
                break
            loop.append(point)
        pts = np.array(loop, float)
        d_in, d_out = pts - np.roll(pts, 1, 0), np.roll(pts, -1, 0) - pts
        turns = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
        loops.append(pts[turns != 0])  # corners only
    return loops


def write_coco(
    case: LitsCase, root: Path, *, slabs: Sequence[tuple[int, int]] = SLABS, rle: bool = True
) -> Path:
    """images/NAME.png + annotations.json: one annotation per 8-connected outline of liver and
    tumour on each slice, as compressed RLE or, with ``rle=False``, polygons along the pixel
    edges (pycocotools fills them back exactly; COCO polygons have no holes, so they are
    filled)."""
    from pycocotools import mask as coco_mask
    from scipy import ndimage

    root = Path(root)
    spec = {
        "images": [],
        "annotations": [],
        "categories": [{"id": c + 1, "name": name} for c, name in enumerate(CLASSES)],
    }
    for image_id, z in enumerate(_slices(slabs), start=1):
        _png(windowed(case, z), root / "images" / f"{_file(z)}.png")
        spec["images"].append(
            {"id": image_id, "file_name": f"{_file(z)}.png", "height": 128, "width": 128}
        )
        for category in (1, 2):
            outlines, k = ndimage.label(case.labels[z] == category, structure=np.ones((3, 3)))
            for i in range(1, k + 1):
                mask = outlines == i
                encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = (
                    {"size": encoded["size"], "counts": encoded["counts"].decode()}
                    if rle
                    else [p.ravel().tolist() for p in outline(ndimage.binary_fill_holes(mask))]
                )
                x0, y0, w, h = coco_mask.toBbox(encoded).tolist()
                spec["annotations"].append(
                    {
                        "id": len(spec["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "segmentation": segmentation,
                        "area": int(mask.sum()),
                        "bbox": [x0, y0, w, h],
                        "iscrowd": 0,
                    }
                )
    (root / "annotations.json").write_text(json.dumps(spec))
    return root


def lits_series(case: LitsCase, start: int, stop: int) -> list:
    """The CT series of slices start..stop-1 as pydicom datasets (lesionseg.examples.lits_ct),
    with 0.7 mm pixels and a study and frame of reference of its own."""
    import pydicom
    from pydicom.uid import generate_uid

    from lesionseg.examples import lits_ct

    study, frame = generate_uid(), generate_uid()
    series = []
    for data in lits_ct(case, range(start, stop), patient=("Lits^Slab", case_name(start))):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.SliceThickness = SLICE_MM
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame
        series.append(ds)
    return series


def _seg(series: list, labels: np.ndarray):
    """A highdicom BINARY SEG of ``labels`` (Z, H, W) on ``series``: segment "liver" (labels
    >= 1, tumours inside it as drawn in practice) and "tumour" (labels == 2)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    masks = np.stack([labels >= 1, labels == 2], axis=-1)  # (Z, H, W, S)
    types = (codes.SCT.Liver, codes.SCT.Tumor)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ
            if i == 0
            else codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=types[i],
            algorithm_type="MANUAL",
        )
        for i, name in enumerate(CLASSES)
    ]
    return hd.seg.Segmentation(
        source_images=series,
        pixel_array=masks,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lesionseg tests",
        manufacturer_model_name="fixtures",
        software_versions="1",
        device_serial_number="1",
    )


def _contours(mask: np.ndarray, style: str) -> list[np.ndarray]:
    """(N, 2) x, y pixel-centre coordinates of contours of a (H, W) bool mask: along the pixel
    edges ("edges") or through the boundary pixels' centres ("centers", OpenCV's)."""
    import cv2

    if style == "edges":
        return [loop - 0.5 for loop in outline(mask)]
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1, 2).astype(float) for c in found]


def _item(**elements):
    """A pydicom sequence item with these keyword elements."""
    from pydicom.dataset import Dataset

    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def rtstruct(series: list, labels: np.ndarray, *, style: str = "edges", names=CLASSES):
    """An RT Structure Set (pydicom) of ``labels`` on ``series`` (in slice order): ROI "liver"
    (labels >= 1) and "tumour" (labels == 2), contours in patient mm on each slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    first = series[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RTStructureSetStorage
    ds.Modality = "RTSTRUCT"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyID"):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 301
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "LiTS", "20240101", "120000"
    images = [
        _item(ReferencedSOPClassUID=s.SOPClassUID, ReferencedSOPInstanceUID=s.SOPInstanceUID)
        for s in series
    ]
    ds.ReferencedFrameOfReferenceSequence = [
        _item(
            FrameOfReferenceUID=first.FrameOfReferenceUID,
            RTReferencedStudySequence=[
                _item(
                    ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                    ReferencedSOPInstanceUID=first.StudyInstanceUID,
                    RTReferencedSeriesSequence=[
                        _item(
                            SeriesInstanceUID=first.SeriesInstanceUID, ContourImageSequence=images
                        )
                    ],
                )
            ],
        )
    ]
    masks = (labels >= 1, labels == 2)
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, mask) in enumerate(zip(names, masks, strict=True), start=1):
        ds.StructureSetROISequence.append(
            _item(
                ROINumber=number,
                ReferencedFrameOfReferenceUID=first.FrameOfReferenceUID,
                ROIName=name,
                ROIGenerationAlgorithm="MANUAL",
            )
        )
        contours = []
        for k, source in enumerate(series):
            origin = np.array([float(v) for v in source.ImagePositionPatient])
            row_mm, col_mm = (float(v) for v in source.PixelSpacing)
            for xy in _contours(mask[k], style):
                points = origin + np.stack([xy[:, 0] * col_mm, xy[:, 1] * row_mm, 0 * xy[:, 0]], 1)
                contours.append(
                    _item(
                        ContourImageSequence=[images[k]],
                        ContourGeometricType="CLOSED_PLANAR",
                        NumberOfContourPoints=len(points),
                        ContourData=[f"{v:.4f}" for v in points.ravel()],
                    )
                )
        ds.ROIContourSequence.append(
            _item(ReferencedROINumber=number, ROIDisplayColor=[255, 0, 0], ContourSequence=contours)
        )
        ds.RTROIObservationsSequence.append(
            _item(
                ObservationNumber=number,
                ReferencedROINumber=number,
                RTROIInterpretedType="ORGAN" if number == 1 else "GTV",
                ROIInterpreter="",
            )
        )
    return ds


def write_dicom(
    case: LitsCase,
    root: Path,
    *,
    slabs: Sequence[tuple[int, int]] = SLABS,
    truth: str = "seg",
    style: str = "edges",
) -> Path:
    """One folder per slab as a PACS exports it: ``CASE/ct/<SOP UID>.dcm`` (file names in no
    slice order) and ``CASE/seg.dcm`` (highdicom SEG) or, with ``truth="rtstruct"``,
    ``CASE/rtstruct.dcm`` with contours of the given ``style`` ("edges" or "centers")."""
    assert truth in ("seg", "rtstruct"), truth
    root = Path(root)
    for a, b in slabs:
        folder = root / case_name(a)
        (folder / "ct").mkdir(parents=True, exist_ok=True)
        series = lits_series(case, a, b)
        for ds in series:
            ds.save_as(folder / "ct" / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        if truth == "seg":
            _seg(series, case.labels[a:b]).save_as(folder / "seg.dcm")
        else:
            ds = rtstruct(series, case.labels[a:b], style=style)
            ds.save_as(folder / "rtstruct.dcm", enforce_file_format=True)
    return root
