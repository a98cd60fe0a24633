"""3-D routes of the ``LesionSeg`` service, as a mixin of its class: ``/segment/propagate``
(one box per lesion carried through a volume) and ``/segment/dicom-sr`` (SEG + TID 1500 SR).

The host class provides ``settings``, ``models``, ``segmenter``, ``_embedding``,
``_image_key``, ``_decode``, ``_decode_dicom_files``, ``_segment_frames``,
``segment_to_reports``, ``_volume_body`` and ``_respond``. Propagation itself is
:mod:`lesionseg.pipeline.propagate`; this file embeds the frames it asks for through the batched
runner
and the per-image cache (each frame once per request) and decodes the boxes.
"""

import asyncio
import io
import zipfile
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field
from starlette.responses import JSONResponse, Response

from lesionseg.errors import InputError
from lesionseg.io.uploads import Upload, split_boxes, uploads_geometry
from lesionseg.models.segmenter import validate_boxes
from lesionseg.pipeline.propagate import Propagation
from lesionseg.types import ImageEmbedding, MedicalImage, SegmentationResult
from service.metrics import timed
from service.schemas import FramesResponse


class Lesions3DRoutes:
    """Propagation and the DICOM SR."""

    async def _segment_volume(
        self,
        uploads: list[Upload],
        *,
        boxes: list | None,
        propagate: bool,
        timings: dict[str, float],
        refine_iterations: int | None = None,
        **options,
    ) -> tuple[list[SegmentationResult], list[list[int]] | None]:
        """Per frame the lesions, and their 3-D ids when propagation gave them (else None:
        the caller links them by overlap)."""
        frames = tuple(f for u in uploads for f in u.frames)
        if not propagate:
            results = await self._segment_frames(
                frames, boxes=boxes, timings=timings, refine_iterations=refine_iterations,
                **options,
            )  # fmt: skip
            return results, None
        if not boxes:
            raise InputError(
                "propagate needs boxes: one [x0, y0, x1, y1, frame] per lesion, on one frame"
            )
        geometry = uploads_geometry(uploads)
        order = None if geometry is None else geometry.order
        return await self._propagate(frames, boxes, order, refine_iterations, timings)

    async def _propagate(
        self,
        frames: tuple[MedicalImage, ...],
        boxes: list,
        order: np.ndarray | None,
        refine_iterations: int | None,
        timings: dict[str, float],
    ) -> tuple[list[SegmentationResult], list[list[int]]]:
        if len(frames) == 1:
            boxes = [[*b, 0] if len(b) == 4 else b for b in boxes]
        split_boxes(boxes, len(frames))  # the frames are valid
        seeds = []
        for box in boxes:
            image = frames[int(box[4])]
            seeds.append((int(box[4]), validate_boxes([box[:4]], (image.height, image.width))[0]))
        propagation = Propagation(seeds, frames, order)
        embeddings: dict[int, ImageEmbedding] = {}  # this request's: each frame embedded once

        async def embed(frame: int) -> None:
            image = frames[frame]
            embeddings[frame] = await self._embedding(image, await self._image_key(image))

        def decode(pending: dict[int, np.ndarray]) -> dict:
            return {
                f: self.segmenter.predict(
                    [embeddings[f]], [b], refine_iterations=refine_iterations
                )[0]
                for f, b in pending.items()
            }

        while not propagation.done:
            pending = propagation.pending()
            with timed("embed", timings):
                await asyncio.gather(*(embed(f) for f in pending if f not in embeddings))
            with timed("mask_decode", timings):
                propagation.update(await asyncio.to_thread(decode, pending))
        results, ids = propagation.results()
        results = [
            SegmentationResult(r.width, r.height, r.lesions, r.pixel_spacing_mm, dict(timings),
                               r.pixel_spacing_source)
            for r in results
        ]  # fmt: skip
        return results, ids

    async def _decode_volume(self, path: list[Path], window: str | None) -> list[Upload]:
        """One upload (image, DICOM object, NIfTI volume) or the DICOM files of one series."""
        timings: dict[str, float] = {}
        if len(path) == 1:
            with timed("decode_image", timings):
                return [await asyncio.to_thread(self._decode, path[0], window)]
        return await self._decode_dicom_files(path, window, timings)

    async def _propagate_response(
        self, path: list[Path], boxes: list, window: str | None, refine_iterations: int | None
    ) -> JSONResponse:
        uploads = await self._decode_volume(path, window)
        timings: dict[str, float] = {}
        results, ids = await self._segment_volume(
            uploads, boxes=boxes, propagate=True, timings=timings,
            refine_iterations=refine_iterations,
        )  # fmt: skip
        body, _, _ = await asyncio.to_thread(self._volume_body, uploads, results, ids)
        return JSONResponse(FramesResponse.model_validate(body).model_dump(mode="json"))

    async def _dicom_sr_response(self, path: list[Path], **options) -> Response:
        seg, summary, sr = await self.segment_to_reports(path, sr=True, **options)
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("seg.dcm", seg)
            z.writestr("sr.dcm", sr)
        return Response(
            archive.getvalue(),
            media_type="application/zip",
            headers={
                "X-SOP-Instance-UID": summary["sr"]["sop_instance_uid"],
                "X-SEG-SOP-Instance-UID": summary["seg"]["sop_instance_uid"],
            },
        )

    @bentoml.api(route="/segment/propagate")
    async def segment_propagate(
        self,
        image: list[Path],
        boxes: list[list[float]],
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
        window: str | None = None,
    ) -> FramesResponse:
        """One box per lesion on one frame, [x0, y0, x1, y1, frame], carried through the
        volume both ways until the lesion ends; a NIfTI volume, a DICOM object or the files
        of one series (repeat `image`). The volume JSON with lesions_3d."""
        return await self._respond(
            self._propagate_response,
            path=image,
            boxes=boxes,
            window=window,
            refine_iterations=refine_iterations,
        )

    @bentoml.api(route="/segment/dicom-sr")
    async def segment_dicom_sr(
        self,
        image: list[Path],
        boxes: list[list[float]] | None = None,
        propagate: bool = False,
        score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None,
        max_lesions: Annotated[int, Field(ge=1, le=1000)] | None = None,
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
        window: str | None = None,
    ) -> Annotated[bytes, ContentType("application/zip")]:
        """As /segment/dicom-seg, plus a Comprehensive 3D SR (TID 1500) measuring each 3-D
        lesion (volume, RECIST long and short axes) and referencing its SEG segment and the
        sources: a zip of seg.dcm and sr.dcm."""
        return await self._respond(
            self._dicom_sr_response,
            path=image,
            boxes=boxes,
            propagate=propagate,
            score_threshold=score_threshold,
            max_lesions=max_lesions,
            refine_iterations=refine_iterations,
            window=window,
        )
