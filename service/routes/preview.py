"""``/segment/preview``: the frames of an upload as the models see them; no model runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.responses import JSONResponse

from lesionseg.settings import Settings
from service.routes.decode import decode_volume
from service.viewer import preview_body


async def preview(settings: Settings, paths: list[Path], window: str | None) -> JSONResponse:
    """One image, DICOM object or NIfTI volume, or the files of one DICOM series."""
    uploads = await decode_volume(settings, paths, window, {})
    body = await asyncio.to_thread(preview_body, uploads)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True))
