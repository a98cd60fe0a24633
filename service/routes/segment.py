"""``/segment``, ``/segment/boxes`` (the JSON of one image, or of every frame of a volume) and
``/segment/overlay`` (one image drawn as a PNG)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.responses import JSONResponse

from lesionseg.errors import InputError
from lesionseg.outputs.overlay import draw_overlay
from lesionseg.outputs.result_json import response_body
from lesionseg.pipeline.prediction import Options, Prediction
from service.metrics import observe_stage
from service.routes.decode import decode_one
from service.routes.served import Served
from service.schemas import FramesResponse, SegmentResponse


def body(served: Served, prediction: Prediction) -> dict:
    """The answer's JSON (:func:`lesionseg.outputs.result_json.response_body`), as the CLI
    writes it."""
    return response_body(
        prediction.uploads,
        prediction.results,
        served.models,
        lesion_ids=prediction.lesion_ids,
        lesions_3d=prediction.lesions_3d,
        on_stage=observe_stage,
    )


def encode(served: Served, prediction: Prediction) -> SegmentResponse | JSONResponse:
    """One image: the SegmentResponse; several frames / a volume: a FramesResponse (with the
    3-D lesions)."""
    if not prediction.volume:
        return SegmentResponse.model_validate(body(served, prediction))
    frames = FramesResponse.model_validate(body(served, prediction))
    return JSONResponse(frames.model_dump(mode="json"))


async def segment_json(
    served: Served, path: Path, options: Options, window: str | None
) -> SegmentResponse | JSONResponse:
    """``/segment`` and ``/segment/boxes``: one upload (image, DICOM object, NIfTI volume)."""
    timings: dict[str, float] = {}
    upload = await decode_one(served.settings, path, window, timings)
    prediction = await served.engine.run([upload], options, timings)
    return await asyncio.to_thread(encode, served, prediction)


async def segment_overlay(
    served: Served, path: Path, options: Options, window: str | None
) -> bytes:
    """``/segment/overlay``: the masks, outlines, boxes and labels drawn on one image (PNG)."""
    timings: dict[str, float] = {}
    upload = await decode_one(served.settings, path, window, timings)
    if upload.multi_frame:
        raise InputError(
            f"this endpoint takes one image, the upload has {len(upload.frames)} "
            "frames: use /segment (per-frame JSON) or /segment/dicom-seg"
        )
    prediction = await served.engine.run([upload], options, timings, volume=False)
    return await asyncio.to_thread(draw_overlay, upload.frames[0].pixels, prediction.results[0])
