"""One entry point for uploaded bytes: DICOM, NIfTI or an ordinary image, told apart by content.

An ordinary image (PNG, JPEG, TIFF, ...) is one frame; a DICOM object has one frame per DICOM
frame; a NIfTI volume one frame per axial slice (:mod:`lesionseg.io.nifti`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionseg.errors import InputError, InvalidBoxesError
from lesionseg.io import dicom, nifti
from lesionseg.io.dicom import DicomImage, decode_dicom, is_dicom
from lesionseg.io.images import check_upload_size, decode_image
from lesionseg.io.nifti import NiftiVolume, decode_nifti, is_nifti
from lesionseg.measure.geometry import VolumeGeometry
from lesionseg.settings import Settings
from lesionseg.types import MedicalImage
from lesionseg.windows import parse_window


@dataclass(frozen=True)
class Upload:
    """A decoded upload.

    Attributes:
        frames: the 2-D images to segment, in frame (or slice) order.
        dicom: the DICOM object when the upload was DICOM, else None.
        nifti: the NIfTI volume when the upload was NIfTI, else None.
    """

    frames: tuple[MedicalImage, ...]
    dicom: DicomImage | None = None
    nifti: NiftiVolume | None = None

    @property
    def multi_frame(self) -> bool:
        """True when the upload is a volume or multi-frame object (the `frames` response)."""
        return len(self.frames) > 1 or self.nifti is not None


def decode_upload(
    data: bytes,
    settings: Settings,
    *,
    window: str | None = None,
    default_window: str | None = None,
    default_window_modality: str | None = None,
    max_total_pixels: int | None = None,
) -> Upload:
    """Decode by content; ``window`` (a preset or "center,width") applies to DICOM and NIfTI.
    ``default_window`` (the service passes ``settings.default_window``, the bundle's) is used
    when ``window`` names none, on grayscale DICOM (of ``default_window_modality`` when given:
    a CT window means nothing to an MR) and NIfTI only: 2-D images and colour DICOM ignore it.
    ``max_total_pixels`` (default: the setting) bounds all frames together."""
    if not data:
        raise InputError("the uploaded image is empty (0 bytes)")
    check_upload_size(len(data), settings.max_upload_bytes)
    chosen = parse_window(window, settings.window_presets)
    fallback = parse_window(default_window, settings.window_presets) if chosen is None else None
    limits = {
        "max_pixels": settings.max_image_pixels,
        "max_frames": settings.max_frames,
        "max_total_pixels": (
            settings.max_total_pixels if max_total_pixels is None else max_total_pixels
        ),
    }
    if is_dicom(data):
        dicom = decode_dicom(
            data,
            window=chosen,
            default_window=fallback,
            default_window_modality=default_window_modality,
            **limits,
        )
        return Upload(dicom.frames, dicom=dicom)
    if is_nifti(data):
        volume = decode_nifti(
            data, window=chosen or fallback, max_bytes=settings.max_upload_bytes, **limits
        )
        return Upload(volume.frames, nifti=volume)
    if chosen is not None:
        raise InputError("window applies to DICOM and NIfTI input only; send this image as is")
    return Upload((decode_image(data, max_pixels=settings.max_image_pixels),))


def split_boxes(boxes: object, n_frames: int) -> list[list[list[float]]]:
    """Caller boxes -> one list of [x0, y0, x1, y1] per frame.

    A box is ``[x0, y0, x1, y1]`` (single-frame input only) or ``[x0, y0, x1, y1, frame]``
    with a 0-based frame (slice) index. Frames without a box get an empty list.
    """
    if not isinstance(boxes, Sequence) or isinstance(boxes, str | bytes):
        raise InvalidBoxesError("boxes must be a JSON list of [x0, y0, x1, y1(, frame)] lists")
    per_frame: list[list[list[float]]] = [[] for _ in range(n_frames)]
    for box in boxes:
        if not isinstance(box, Sequence) or len(box) not in (4, 5):
            raise InvalidBoxesError(
                f"each box is [x0, y0, x1, y1] or [x0, y0, x1, y1, frame], got {str(box)[:60]}"
            )
        if len(box) == 4 and n_frames > 1:
            raise InvalidBoxesError(
                f"the input has {n_frames} frames: give each box its 0-based frame as a "
                "fifth value, [x0, y0, x1, y1, frame]"
            )
        frame = box[4] if len(box) == 5 else 0
        if not isinstance(frame, int | float) or frame != int(frame) or not 0 <= frame < n_frames:
            raise InvalidBoxesError(f"box frame {frame!r} is not a frame index 0..{n_frames - 1}")
        per_frame[int(frame)].append(list(box[:4]))
    return per_frame


def empty_boxes() -> np.ndarray:
    """(0, 4) float32: the prompts of a frame with nothing to segment."""
    return np.zeros((0, 4), np.float32)


def uploads_geometry(uploads: Sequence[Upload]) -> VolumeGeometry | None:
    """Where the frames of one volume lie (:mod:`lesionseg.measure.geometry`): a NIfTI volume,
    a DICOM object or the DICOM files of one series; None for ordinary images, or when the
    headers do not tell."""
    if len(uploads) == 1 and uploads[0].nifti is not None:
        return nifti.volume_geometry(uploads[0].nifti)
    if uploads and all(u.dicom is not None for u in uploads):
        return dicom.volume_geometry([u.dicom.dataset for u in uploads])
    return None
