"""The HTTP API, ``LesionSeg``; its model runner (``service.runner.ModelRunner``) batches the
detector and the SAM image encoder in a process of its own.

``LesionSeg`` decodes uploads, validates them, filters detections, runs SAM's light
prompt/mask decoder per image and encodes the response. Everything about images and tensors
lives in ``lesionseg``; this file only wires it to HTTP and maps errors: bad input -> 400,
overload -> 503.
"""

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field
from starlette.responses import JSONResponse

from lesionseg.errors import InputError
from lesionseg.io.images import check_upload_size
from lesionseg.io.uploads import Upload, decode_upload, split_boxes
from lesionseg.models.segmenter import Segmenter, validate_boxes
from lesionseg.outputs.overlay import draw_overlay
from lesionseg.pipeline.engine import PROMPT_LABEL, build_result, filter_detections
from lesionseg.types import Detections, MedicalImage, SegmentationResult
from service.admission import QueueWaitEstimator
from service.jobs import Jobs
from service.lesions3d import Lesions3DRoutes
from service.limits import traffic_timeout_s
from service.metrics import ADMISSION_REJECTED, report_models, timed
from service.middleware import install_middleware
from service.retry import RunnerConnectionError
from service.runner import SETTINGS, WARMUP_IMAGE, ModelRunner, StoreModels, runtime_settings
from service.runner_calls import CachedRunnerCalls
from service.schemas import FramesResponse, SegmentResponse
from service.viewer import Viewer, ViewerRoutes
from service.volumes import VolumeOutputs

log = logging.getLogger("lesionseg.service")


def _bad_request(exc: InputError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


def _unavailable(message: str, retry_after_s: int = 5) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=503, headers={"Retry-After": str(retry_after_s)}
    )


# /jobs: persistent async studies; its lifespan runs the job worker and the DICOMweb pusher.
JOBS = Jobs(SETTINGS, bentoml.get_current_service)
# /viewer: the page (and / redirects to it; BentoML's API page moves to /docs).
VIEWER = Viewer(lambda: bentoml.get_current_service().settings)


@bentoml.asgi_app(VIEWER.app, path="/")
@bentoml.asgi_app(JOBS.app, path="/")
@bentoml.service(name="lesionseg", traffic={"timeout": traffic_timeout_s(SETTINGS)})
class LesionSeg(ViewerRoutes, Lesions3DRoutes, VolumeOutputs, CachedRunnerCalls, StoreModels):
    """Automatic lesion segmentation over HTTP: ``/segment``, ``/segment/boxes``,
    ``/segment/overlay``, ``/segment/dicom-seg``, ``/segment/nifti``, ``/segment/propagate``,
    ``/segment/dicom-sr``, async ``/jobs``, the
    ``/viewer`` page and its ``/segment/preview``; health
    at ``/livez`` and ``/readyz``, metrics at ``/metrics``."""

    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.queue = QueueWaitEstimator()
        self._ready = asyncio.Event()

    def __is_ready__(self) -> bool:
        return self._ready.is_set()

    @bentoml.on_startup
    async def _begin_loading(self) -> None:
        # A task, not an await: startup returns at once and /readyz answers 503 until done.
        self._loading = asyncio.create_task(self._load())

    @bentoml.on_shutdown
    async def _release_runner(self) -> None:
        # Runs once every request in flight has been answered: the runner, which deferred its
        # SIGTERM for them, may stop now (service/drain.py).
        try:
            await asyncio.wait_for(self.runner.to_async.api_drained(), timeout=5)
        except Exception as exc:  # the runner may be gone already: it stops by itself then
            log.info("model runner not told of the drain: %s", exc)

    async def _load(self) -> None:
        try:
            settings = runtime_settings(self.store)
            # The embeddings come from the model runner: the prompt encoder and mask decoder only.
            self.segmenter = await asyncio.to_thread(
                Segmenter.from_settings, settings, with_encoder=False
            )
            self.settings = settings  # the stored bundle's thresholds, margin and window
            self.models = await self._describe_runner()
            report_models(self.models)
            self._start_cache()
            if self.settings.warmup:
                embedding = (await self.runner.to_async.embed([WARMUP_IMAGE]))[0]
                await self.runner.to_async.detect([WARMUP_IMAGE])
                emb = self.segmenter.wrap(np.asarray(embedding, np.float32), (64, 64))
                await asyncio.to_thread(self.segmenter.predict, [emb], [[[20, 20, 44, 44]]])
            self._ready.set()
            log.info("lesionseg ready: %s", self.models)
        except Exception:  # a background task has no caller: log, stay unready
            log.exception("loading failed; the service stays unready")

    async def _describe_runner(self) -> dict:
        for attempt in range(900):  # the runner process may still be starting
            try:
                return await self.runner.to_async.describe()
            except Exception as exc:  # connection errors while the runner starts
                if attempt % 30 == 0:
                    log.info("waiting for the model runner: %s", exc)
                await asyncio.sleep(1)
        raise RuntimeError("the model runner never answered")

    # --- the pipeline, split across the two services -----------------------------------------

    def _decode(
        self, path: Path, window: str | None = None, max_total_pixels: int | None = None
    ) -> Upload:
        # Check the size on disk before reading a possibly huge upload into memory.
        check_upload_size(path.stat().st_size, self.settings.max_upload_bytes)
        return decode_upload(
            path.read_bytes(),
            self.settings,
            window=window,
            default_window=self.settings.default_window,
            default_window_modality=self.settings.default_window_modality,
            max_total_pixels=max_total_pixels,
        )

    async def _run(
        self, path: Path, *, window: str | None = None, **options
    ) -> tuple[Upload, list[SegmentationResult]]:
        """Decode an upload (image, DICOM or NIfTI) and segment each of its frames."""
        timings: dict[str, float] = {}
        with timed("decode_image", timings):
            upload = await asyncio.to_thread(self._decode, path, window)
        return upload, await self._segment_frames(upload.frames, timings=timings, **options)

    async def _segment_frames(
        self,
        frames: tuple[MedicalImage, ...],
        *,
        boxes: list | None = None,
        timings: dict[str, float] | None = None,
        **options,
    ) -> list[SegmentationResult]:
        """Frames in order; at most max_batch_size frames in flight, so that a volume does
        not flood the batched runner past its latency budget."""
        if boxes is None:
            per_frame: list = [None] * len(frames)
        else:
            per_frame = [boxes] if len(frames) == 1 else split_boxes(boxes, len(frames))
        gate = asyncio.Semaphore(self.settings.max_batch_size)

        async def one(image: MedicalImage, frame_boxes: list | None) -> SegmentationResult:
            async with gate:
                return await self._segment_one(
                    image,
                    boxes=frame_boxes,
                    timings=dict(timings or {}),
                    frame_of_many=len(frames) > 1,
                    **options,
                )

        return list(await asyncio.gather(*map(one, frames, per_frame)))

    async def _segment_one(
        self,
        image: MedicalImage,
        *,
        boxes: list | None,
        timings: dict[str, float],
        score_threshold: float | None = None,
        max_lesions: int | None = None,
        refine_iterations: int | None = None,
        frame_of_many: bool = False,
    ) -> SegmentationResult:
        hw = (image.height, image.width)
        key = None
        if boxes is not None and frame_of_many and not boxes:
            prompts, labels, scores = np.zeros((0, 4), np.float32), [], np.zeros(0, np.float32)
        elif boxes is not None:
            prompts = validate_boxes(boxes, hw)
            labels, scores = [PROMPT_LABEL] * len(prompts), np.ones(len(prompts), np.float32)
        else:
            threshold = score_threshold
            if threshold is None:
                threshold = self.settings.score_threshold
            if threshold < self.settings.detector_score_floor:
                raise InputError(
                    f"score_threshold {threshold} is below the service's floor of "
                    f"{self.settings.detector_score_floor} (LESIONSEG_DETECTOR_SCORE_FLOOR)"
                )
            key = await self._image_key(image)
            with timed("detect", timings):
                rows = await self._detections(image, key)
            names = self.models["detector"]["classes"]
            classes = rows[:, 5].astype(np.int64)
            detections = Detections(
                rows[:, :4], rows[:, 4], classes, tuple(names[int(c)] for c in classes)
            )
            kept = filter_detections(
                detections,
                hw,
                score_threshold=threshold,
                max_lesions=max_lesions or self.settings.max_lesions,
                box_margin=self.settings.box_margin,
            )
            prompts, labels, scores = kept.boxes, kept.labels, kept.scores
        if len(prompts):
            key = key or await self._image_key(image)
            with timed("embed", timings):
                embedding = await self._embedding(image, key)
            with timed("mask_decode", timings):
                (prediction,) = await asyncio.to_thread(
                    self.segmenter.predict,
                    [embedding],
                    [prompts],
                    refine_iterations=refine_iterations,
                )
        else:
            prediction = self.segmenter.predict_empty(hw)
        return build_result(image, prompts, labels, scores, prediction, timings)

    async def _respond(self, make, **kwargs):
        """Run one request: overload -> 503, bad input -> 400, else ``make(upload, results)``
        (``make`` may be a coroutine function taking the request's options itself)."""
        if not self._ready.is_set():
            return _unavailable("the models are still loading; retry once /readyz answers 200")
        pending = self.queue.in_flight
        if pending >= self.settings.max_pending_requests:
            return _unavailable(f"overloaded: {pending} requests in flight; retry later")
        if (wait := self.queue.expected_wait_s()) > self.settings.max_queue_wait_s:
            ADMISSION_REJECTED.inc()
            return _unavailable(
                f"overloaded: {pending} requests in flight, an expected wait of {wait:.0f} s "
                f"(LESIONSEG_MAX_QUEUE_WAIT_S={self.settings.max_queue_wait_s:g}); retry later",
                self.queue.retry_after_s(self.settings.max_queue_wait_s),
            )
        self.queue.started()
        try:
            if asyncio.iscoroutinefunction(make):
                return await make(**kwargs)
            upload, results = await self._run(**kwargs)
            return await asyncio.to_thread(make, upload, results)
        except InputError as exc:
            # Input messages never quote patient data (tests/service/test_privacy.py).
            log.info("bad request (400): %s", exc)
            return _bad_request(exc)
        except bentoml.exceptions.ServiceUnavailable:
            # The runner sheds calls it cannot batch within max_latency_ms, or while it reloads.
            return _unavailable(
                "the model runner refused: its queue is over the latency budget "
                "(LESIONSEG_MAX_LATENCY_MS), or it restarted and is loading; retry later"
            )
        except RunnerConnectionError as exc:
            return _unavailable(f"{exc}; retry later")
        finally:
            self.queue.finished()

    def _json(
        self, upload: Upload, results: list[SegmentationResult]
    ) -> SegmentResponse | JSONResponse:
        """One image: the SegmentResponse; several frames / a volume: a FramesResponse
        (with the 3-D lesions)."""
        if not upload.multi_frame:
            return SegmentResponse.model_validate(self._frame_dicts(upload, results)[0])
        body, _, _ = self._volume_body([upload], results)
        return JSONResponse(FramesResponse.model_validate(body).model_dump(mode="json"))

    def _single(self, make):
        """``make(image, result)`` of a one-frame upload; a volume gets a 400."""

        def single(upload: Upload, results: list[SegmentationResult]):
            if upload.multi_frame:
                raise InputError(
                    f"this endpoint takes one image, the upload has {len(upload.frames)} "
                    "frames: use /segment (per-frame JSON) or /segment/dicom-seg"
                )
            return make(upload.frames[0], results[0])

        return single

    # --- HTTP API -------------------------------------------------------------------------

    @bentoml.api(route="/segment")
    async def segment(
        self,
        image: Path,
        score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None,
        max_lesions: Annotated[int, Field(ge=1, le=1000)] | None = None,
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
        window: str | None = None,
    ) -> SegmentResponse:
        """Find and outline every lesion: detector boxes -> SAM masks (COCO RLE). DICOM and
        NIfTI volumes answer one result per frame (README: multi-frame response)."""
        return await self._respond(
            self._json,
            path=image,
            score_threshold=score_threshold,
            max_lesions=max_lesions,
            refine_iterations=refine_iterations,
            window=window,
        )

    @bentoml.api(route="/segment/boxes")
    async def segment_boxes(
        self,
        image: Path,
        boxes: list[list[float]],
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
        window: str | None = None,
    ) -> SegmentResponse:
        """One lesion per [x0, y0, x1, y1] box (original pixels), in the order given; for
        several frames [x0, y0, x1, y1, frame] (0-based)."""
        return await self._respond(
            self._json, path=image, boxes=boxes, refine_iterations=refine_iterations, window=window
        )

    @bentoml.api(route="/segment/overlay")
    async def segment_overlay(
        self,
        image: Path,
        score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None,
        max_lesions: Annotated[int, Field(ge=1, le=1000)] | None = None,
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
        window: str | None = None,
    ) -> Annotated[bytes, ContentType("image/png")]:
        """As /segment, drawn on the image as a PNG (masks, outlines, boxes, labels)."""
        return await self._respond(
            self._single(lambda im, res: draw_overlay(im.pixels, res)),
            path=image,
            score_threshold=score_threshold,
            max_lesions=max_lesions,
            refine_iterations=refine_iterations,
            window=window,
        )

    @bentoml.api(route="/segment/dicom-seg")
    async def segment_dicom_seg(
        self,
        image: list[Path],
        boxes: list[list[float]] | None = None,
        propagate: bool = False,
        score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None,
        max_lesions: Annotated[int, Field(ge=1, le=1000)] | None = None,
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
        window: str | None = None,
    ) -> Annotated[bytes, ContentType("application/dicom")]:
        """A DICOM Segmentation of one DICOM object or of the files of one series (repeat
        the `image` field): one multi-frame SEG, one segment per 3-D lesion. `propagate`:
        one box per lesion, carried through the frames as /segment/propagate does."""
        return await self._respond(
            self._dicom_seg_response,
            path=image,
            boxes=boxes,
            propagate=propagate,
            score_threshold=score_threshold,
            max_lesions=max_lesions,
            refine_iterations=refine_iterations,
            window=window,
        )

    @bentoml.api(route="/segment/nifti")
    async def segment_nifti(
        self,
        image: Path,
        boxes: list[list[float]] | None = None,
        score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None,
        max_lesions: Annotated[int, Field(ge=1, le=1000)] | None = None,
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
        window: str | None = None,
    ) -> Annotated[bytes, ContentType("application/gzip")]:
        """A NIfTI volume segmented slice by slice -> a gzipped NIfTI label mask with the
        input's shape and affine (labels in the X-Labels header)."""
        return await self._respond(
            self._nifti_response,
            path=image,
            boxes=boxes,
            score_threshold=score_threshold,
            max_lesions=max_lesions,
            refine_iterations=refine_iterations,
            window=window,
        )


install_middleware(LesionSeg, SETTINGS)  # service/middleware.py: keys, limits, contract
