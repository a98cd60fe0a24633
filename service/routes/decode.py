"""Uploads -> decoded frames (:mod:`lesionseg.pipeline.inputs`), off the event loop and timed
as the ``decode_image`` stage."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lesionseg.io.uploads import Upload
from lesionseg.pipeline.inputs import read_series, read_upload, read_uploads
from lesionseg.settings import Settings
from service.metrics import timed


async def decode_one(
    settings: Settings, path: Path, window: str | None, timings: dict[str, float]
) -> Upload:
    """One file: an image, a DICOM object or a NIfTI volume."""
    with timed("decode_image", timings):
        return await asyncio.to_thread(read_upload, settings, path, window)


async def decode_dicom_files(
    settings: Settings, paths: list[Path], window: str | None, timings: dict[str, float]
) -> list[Upload]:
    """One DICOM object, or the files of one DICOM series."""
    with timed("decode_image", timings):
        return await asyncio.to_thread(read_series, settings, paths, window)


async def decode_volume(
    settings: Settings, paths: list[Path], window: str | None, timings: dict[str, float]
) -> list[Upload]:
    """One upload (image, DICOM object, NIfTI volume) or the DICOM files of one series."""
    with timed("decode_image", timings):
        return await asyncio.to_thread(read_uploads, settings, paths, window)
