"""NIfTI-1/2 volumes (.nii, .nii.gz, told apart by content): axial slices in, a label mask out.

Slices are taken along the voxel axis closest to the patient's superior-inferior direction
(from the affine, ``nibabel.aff2axcodes``): CT and MR volumes are usually read and annotated
axially, and the LiTS slices the detector was trained on are axial. When the affine gives no
orientation, the third voxel axis (NIfTI's slice axis by convention) is used. Slice ``k`` is
shown to the models as ``data[..., k].T`` for the usual axes order (rows = the second in-plane
voxel axis, columns = the first), and masks go back through the same transpose.

Intensities: ``scl_slope``/``scl_inter`` applied (nibabel), then the caller's window in those
units (e.g. HU), else a linear min-max stretch over the whole volume. In-plane spacing comes
from the header's zooms when its spatial unit is mm, m or um (unknown units: no mm²).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from lesionseg.errors import ImageTooLargeError, InputError, InvalidImageError
from lesionseg.io.images import check_frames, check_pixels, check_total_pixels, window_ct
from lesionseg.measure.geometry import VolumeGeometry
from lesionseg.types import MedicalImage, SegmentationResult

_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001}
_GZIP = b"\x1f\x8b"


@dataclass(frozen=True)
class NiftiVolume:
    """A decoded NIfTI volume.

    Attributes:
        image: the nibabel image (header and affine of the output mask).
        axis: the voxel axis slices were taken along (0, 1 or 2).
        frames: one image per slice, in index order along ``axis``.
    """

    image: nib.Nifti1Image | nib.Nifti2Image
    axis: int
    frames: tuple[MedicalImage, ...]


def _header_bytes(data: bytes, size: int = 544) -> bytes:
    if not data.startswith(_GZIP):
        return data[:size]
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, size)
    except zlib.error:
        return b""


def is_nifti(data: bytes) -> bool:
    """True for single-file NIfTI-1 (``n+1``) or NIfTI-2 (``n+2``), gzipped or not."""
    head = _header_bytes(data)
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return head[344:348] == b"n+1\x00"
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return head[4:8] == b"n+2\x00"
    return False


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    if not data.startswith(_GZIP):
        return data
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidImageError(f"the gzipped NIfTI is corrupt: {exc}") from exc
    if len(raw) > max_bytes:
        raise ImageTooLargeError(
            f"the NIfTI volume is over {max_bytes} bytes uncompressed (LESIONSEG_MAX_UPLOAD_BYTES)"
        )
    return raw


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to superior-inferior, else 2."""
    codes = nib.aff2axcodes(affine)
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    return 2


def decode_nifti(
    data: bytes,
    *,
    max_pixels: int,
    max_frames: int,
    max_bytes: int,
    window: tuple[float, float] | None = None,
    max_total_pixels: int | None = None,
) -> NiftiVolume:
    """Decode a NIfTI volume into axial slices; the shape is checked before the voxels."""
    raw = _gunzip(data, max_bytes)
    klass = nib.Nifti2Image if raw[4:8] == b"n+2\x00" else nib.Nifti1Image
    try:
        image = klass.from_bytes(raw)
    except (nib.filebasedimages.ImageFileError, ValueError, struct.error, EOFError) as exc:
        raise InvalidImageError(f"cannot read the NIfTI header: {exc}") from exc
    shape = tuple(int(s) for s in image.shape)
    spatial = shape[:3] + (1,) * (3 - len(shape[:3]))
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise InputError(f"the NIfTI image is {len(shape)}-D {list(shape)}; send one 3-D volume")
    axis = slice_axis(image.affine)
    plane = [s for i, s in enumerate(spatial) if i != axis]
    check_pixels(plane[1], plane[0], max_pixels)  # rows = second in-plane axis
    check_frames(spatial[axis], max_frames, "NIfTI slices")
    check_total_pixels(spatial[axis], plane[1], plane[0], max_total_pixels)
    try:
        values = np.asarray(image.get_fdata(dtype=np.float32)).reshape(spatial)
    except (ValueError, EOFError, OSError) as exc:
        raise InvalidImageError(f"the NIfTI voxel data are truncated or unreadable: {exc}") from exc
    if not np.isfinite(values).all():
        raise InvalidImageError("the NIfTI volume contains NaN or infinite values")
    if window is None:
        lo, hi = float(values.min()), float(values.max())
        window = ((lo + hi) / 2, max(hi - lo, 1e-6))
    spacing = _in_plane_spacing(image, axis)
    frames = []
    for k in range(spatial[axis]):
        gray = window_ct(np.take(values, k, axis=axis).T, *window)
        frames.append(
            MedicalImage(
                np.repeat(gray[:, :, None], 3, axis=2),
                spacing,
                "NIfTI",
                None if spacing is None else "nifti_header",
            )
        )
    return NiftiVolume(image, axis, tuple(frames))


def _in_plane_spacing(image, axis: int) -> tuple[float, float] | None:
    unit = image.header.get_xyzt_units()[0]
    if unit not in _UNIT_TO_MM:
        return None
    zooms = [float(z) * _UNIT_TO_MM[unit] for z in image.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    columns, rows = (z for i, z in enumerate(zooms) if i != axis)
    return (rows, columns) if rows > 0 and columns > 0 else None


def label_mask(
    volume: NiftiVolume, results: Sequence[SegmentationResult], labels: Sequence[str]
) -> bytes:
    """Gzipped NIfTI label volume (uint8, the input's shape and affine): voxel value
    ``labels.index(lesion.label) + 1`` inside each lesion, 0 elsewhere."""
    assert len(results) == len(volume.frames)
    assert len(labels) < 256
    spatial = tuple(int(s) for s in volume.image.shape[:3])
    spatial += (1,) * (3 - len(spatial))
    mask = np.zeros(spatial, np.uint8)
    for k, result in enumerate(results):
        index = [slice(None)] * 3
        index[volume.axis] = k
        plane = mask[tuple(index)].T  # a view: rows x columns as segmented
        for lesion in result.lesions:
            plane[lesion.mask] = labels.index(lesion.label) + 1
    header = volume.image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    header["descrip"] = ("lesionseg " + " ".join(f"{i + 1}={n}" for i, n in enumerate(labels)))[:79]
    out = type(volume.image)(mask.reshape(volume.image.shape), volume.image.affine, header)
    return gzip.compress(out.to_bytes(), compresslevel=6)


def volume_geometry(volume: NiftiVolume) -> VolumeGeometry | None:
    """Where each slice lies in the patient, from the affine (RAS, converted to DICOM's LPS)
    in the header's spatial unit; None when that unit is unknown. Slice ``k``'s pixel
    ``(r, c)`` is voxel index ``c`` along the first in-plane axis, ``r`` along the second."""
    unit = volume.image.header.get_xyzt_units()[0]
    if unit not in _UNIT_TO_MM:
        return None
    affine = np.diag([-1.0, -1.0, 1.0]) @ volume.image.affine[:3] * _UNIT_TO_MM[unit]  # (3, 4)
    col_axis, row_axis = (i for i in range(3) if i != volume.axis)
    steps = {i: affine[:, i] for i in range(3)}
    spacing = (float(np.linalg.norm(steps[row_axis])), float(np.linalg.norm(steps[col_axis])))
    if min(spacing) <= 0:
        return None
    origins = np.array([affine[:, 3] + k * steps[volume.axis] for k in range(len(volume.frames))])
    return VolumeGeometry(
        origins,
        steps[col_axis] / spacing[1],
        steps[row_axis] / spacing[0],
        np.tile(spacing, (len(origins), 1)),
        "nifti_affine",
        slice_step=float(np.linalg.norm(steps[volume.axis])) if len(origins) == 1 else None,
    )
