"""Files -> decoded uploads, within the settings' limits: one file of any kind (image, DICOM
object, NIfTI volume) or the DICOM files of one series. The CLI and the service read their
inputs here (the service off its event loop)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lesionseg.errors import InputError
from lesionseg.io.images import check_frames, check_upload_size
from lesionseg.io.uploads import Upload, decode_upload
from lesionseg.outputs.dicom_seg import source_frames
from lesionseg.settings import Settings


def read_upload(
    settings: Settings, path: Path, window: str | None = None, max_total_pixels: int | None = None
) -> Upload:
    """One file, told apart by content; ``window`` as :func:`decode_upload` (default: the
    settings' ``default_window``)."""
    # Check the size on disk before reading a possibly huge upload into memory.
    check_upload_size(Path(path).stat().st_size, settings.max_upload_bytes)
    return decode_upload(
        Path(path).read_bytes(),
        settings,
        window=window,
        default_window=settings.default_window,
        default_window_modality=settings.default_window_modality,
        max_total_pixels=max_total_pixels,
    )


def read_series(settings: Settings, paths: Sequence[Path], window: str | None) -> list[Upload]:
    """One DICOM object, or the single-frame files of one series, decoded within one pixel
    budget (``LESIONSEG_MAX_TOTAL_PIXELS`` over all the files)."""
    if not paths:
        raise InputError("no DICOM file given (multipart field 'image')")
    uploads, budget = [], settings.max_total_pixels  # pixels, over all the files
    for index, path in enumerate(paths):
        upload = read_upload(settings, path, window, budget)
        budget -= sum(f.height * f.width for f in upload.frames)
        if upload.dicom is None:
            raise InputError(
                f"file {index} is not DICOM: a series (and /segment/dicom-seg) takes DICOM "
                "files only; "
                "use /segment for PNG/JPEG/TIFF and /segment/nifti for NIfTI"
            )
        uploads.append(upload)
    n_frames = source_frames([u.dicom.dataset for u in uploads])  # one series
    check_frames(n_frames, settings.max_frames)
    return uploads


def read_uploads(settings: Settings, paths: Sequence[Path], window: str | None) -> list[Upload]:
    """One file of any kind, or the DICOM files of one series (frame k = the k-th file)."""
    if len(paths) == 1:
        return [read_upload(settings, paths[0], window)]
    return read_series(settings, paths, window)
