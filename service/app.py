"""The HTTP API, ``LesionSeg``; its model runner (``service.runner.ModelRunner``) batches the
detector and the SAM image encoder in a process of its own.

``LesionSeg`` loads SAM's prompt encoder and mask decoder and builds the engine
(:class:`lesionseg.pipeline.engine.LesionEngine`) on the runner's batched calls behind the
per-image cache (service/runner_calls.py). Each ``@bentoml.api`` method hands its parsed fields
to a route of service/routes/ (decode -> engine -> encode) under admission control and the error
mapping (service/routes/respond.py): bad input -> 400, overload -> 503.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field

from lesionseg.errors import ModelLoadError
from lesionseg.models.detectors import load_sam_head
from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.cache import EmbeddingCache
from lesionseg.pipeline.engine import LesionEngine
from lesionseg.pipeline.prediction import Options
from service.admission import QueueWaitEstimator
from service.doctor import refuse_unsafe_start
from service.jobs import Jobs
from service.limits import traffic_timeout_s
from service.listener import DicomIngest
from service.metrics import observe_stage, report_models
from service.middleware import install_middleware
from service.routes import preview, segment, volumes
from service.routes.respond import respond
from service.routes.served import Served
from service.runner import SETTINGS, WARMUP_IMAGE, ModelRunner, StoreModels, runtime_settings
from service.runner_calls import MIB, RunnerCalls
from service.schemas import FramesResponse, SegmentResponse
from service.viewer import PreviewResponse, Viewer

log = logging.getLogger("lesionseg.service")

Threshold = Annotated[float, Field(ge=0.0, le=1.0)] | None
MaxLesions = Annotated[int, Field(ge=1, le=1000)] | None
RefineIterations = Annotated[int, Field(ge=0, le=10)] | None


# /jobs: persistent async studies; its lifespan runs the job worker and the DICOMweb pusher.
JOBS = Jobs(SETTINGS, bentoml.get_current_service)
# The DICOM listener (LESIONSEG_DICOM_PORT; off without): its series become jobs of JOBS.
DICOM = DicomIngest(SETTINGS)
# /viewer: the page (and / redirects to it; BentoML's API page moves to /docs).
VIEWER = Viewer(lambda: bentoml.get_current_service().settings)


@bentoml.asgi_app(VIEWER.app, path="/")
@bentoml.asgi_app(JOBS.app, path="/")
@bentoml.service(name="lesionseg", traffic={"timeout": traffic_timeout_s(SETTINGS)})
class LesionSeg(StoreModels):
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
        return self._ready.is_set() and DICOM.ready()

    @bentoml.on_startup
    async def _begin_loading(self) -> None:
        # A task, not an await: startup returns at once and /readyz answers 503 until done.
        self._loading = asyncio.create_task(self._load())
        DICOM.start(after=lambda: JOBS.started)  # once the store is recovered

    @bentoml.on_shutdown
    async def _release_runner(self) -> None:
        # Runs once every request in flight has been answered: the runner, which deferred its
        # SIGTERM for them, may stop now (service/drain.py).
        await DICOM.stop()
        try:
            await asyncio.wait_for(self.runner.to_async.api_drained(), timeout=5)
        except Exception as exc:  # the runner may be gone already: it stops by itself then
            log.info("model runner not told of the drain: %s", exc)

    async def _load(self) -> None:
        try:
            settings = runtime_settings(self.store)
            # The embeddings come from the model runner: the prompt encoder and mask decoder only.
            segmenter = await asyncio.to_thread(
                Segmenter.from_settings, settings, with_encoder=False
            )
            self.settings = settings  # the stored bundle's thresholds, margin and window
            self.models = await self._describe_runner()
            report_models(self.models)
            self.image_cache = EmbeddingCache(settings.embedding_cache_mb * MIB)
            # The runner and the cache are looked up per call (tests swap them).
            calls = RunnerCalls(
                lambda: self.runner, lambda: self.image_cache, self.models, segmenter
            )
            head = None
            if settings.detector_kind == "sam-head":  # it runs here, on the runner's embeddings
                head = await asyncio.to_thread(load_sam_head, settings)
                head.score_threshold = settings.detector_score_floor
            self.engine = LesionEngine.from_settings(
                settings, calls.detect, calls.embed, segmenter, on_stage=observe_stage, head=head
            )
            if settings.warmup:
                embedding = (await self.runner.to_async.embed([WARMUP_IMAGE]))[0]
                if head is None:
                    await self.runner.to_async.detect([WARMUP_IMAGE])
                emb = segmenter.wrap(np.asarray(embedding, np.float32), (64, 64))
                await asyncio.to_thread(segmenter.predict, [emb], [[[20, 20, 44, 44]]])
                if head is not None:
                    await asyncio.to_thread(head.detect, [emb])
            self._ready.set()
            log.info("lesionseg ready: %s", self.models)
        except ModelLoadError as exc:  # says how to fix it (e.g. a setting baked into the export)
            log.error("loading failed; the service stays unready: %s", exc)
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

    # --- the routes -----------------------------------------------------------------------

    @property
    def served(self) -> Served:
        return Served(self.settings, self.engine, self.models)

    async def _call(self, route: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``route(self.served, *args)`` under admission control and the error mapping."""
        return await respond(
            self._ready, self.queue, self.settings, lambda: route(self.served, *args)
        )

    async def segment_to_reports(
        self, files: list[Path], *, window: str | None = None, sr: bool = False, **options
    ) -> tuple[bytes, dict, bytes | None]:
        """What a job stores and pushes (service/jobs.py): the DICOM SEG, the summary and the
        SR when ``sr`` (:func:`service.routes.volumes.segment_to_reports`). Waits for the
        models to load; ``options`` as :class:`~lesionseg.pipeline.prediction.Options`."""
        await self._ready.wait()
        return await volumes.segment_to_reports(
            self.served, files, Options(**options), window, sr=sr
        )

    # --- HTTP API: one line each, the work is in service/routes/ ---------------------------

    @bentoml.api(route="/segment")
    async def segment(
        self,
        image: Path,
        score_threshold: Threshold = None,
        max_lesions: MaxLesions = None,
        refine_iterations: RefineIterations = None,
        window: str | None = None,
    ) -> SegmentResponse:
        """Find and outline every lesion: detector boxes -> SAM masks (COCO RLE). DICOM and
        NIfTI volumes answer one result per frame (docs/api.md: the result JSON)."""
        options = Options(None, False, score_threshold, max_lesions, refine_iterations)
        return await self._call(segment.segment_json, image, options, window)

    @bentoml.api(route="/segment/boxes")
    async def segment_boxes(
        self,
        image: Path,
        boxes: list[list[float]],
        refine_iterations: RefineIterations = None,
        window: str | None = None,
    ) -> SegmentResponse:
        """One lesion per [x0, y0, x1, y1] box (original pixels), in the order given; for
        several frames [x0, y0, x1, y1, frame] (0-based)."""
        options = Options(boxes, refine_iterations=refine_iterations)
        return await self._call(segment.segment_json, image, options, window)

    @bentoml.api(route="/segment/overlay")
    async def segment_overlay(
        self,
        image: Path,
        score_threshold: Threshold = None,
        max_lesions: MaxLesions = None,
        refine_iterations: RefineIterations = None,
        window: str | None = None,
    ) -> Annotated[bytes, ContentType("image/png")]:
        """As /segment, drawn on the image as a PNG (masks, outlines, boxes, labels)."""
        options = Options(None, False, score_threshold, max_lesions, refine_iterations)
        return await self._call(segment.segment_overlay, image, options, window)

    @bentoml.api(route="/segment/dicom-seg")
    async def segment_dicom_seg(
        self,
        image: list[Path],
        boxes: list[list[float]] | None = None,
        propagate: bool = False,
        score_threshold: Threshold = None,
        max_lesions: MaxLesions = None,
        refine_iterations: RefineIterations = None,
        window: str | None = None,
    ) -> Annotated[bytes, ContentType("application/dicom")]:
        """A DICOM Segmentation of one DICOM object or of the files of one series (repeat
        the `image` field): one multi-frame SEG, one segment per 3-D lesion. `propagate`:
        one box per lesion, carried through the frames as /segment/propagate does."""
        options = Options(boxes, propagate, score_threshold, max_lesions, refine_iterations)
        return await self._call(volumes.dicom_seg, image, options, window)

    @bentoml.api(route="/segment/nifti")
    async def segment_nifti(
        self,
        image: Path,
        boxes: list[list[float]] | None = None,
        score_threshold: Threshold = None,
        max_lesions: MaxLesions = None,
        refine_iterations: RefineIterations = None,
        window: str | None = None,
    ) -> Annotated[bytes, ContentType("application/gzip")]:
        """A NIfTI volume segmented slice by slice -> a gzipped NIfTI label mask with the
        input's shape and affine (labels in the X-Labels header)."""
        options = Options(boxes, False, score_threshold, max_lesions, refine_iterations)
        return await self._call(volumes.nifti, image, options, window)

    @bentoml.api(route="/segment/propagate")
    async def segment_propagate(
        self,
        image: list[Path],
        boxes: list[list[float]],
        refine_iterations: RefineIterations = None,
        window: str | None = None,
    ) -> FramesResponse:
        """One box per lesion on one frame, [x0, y0, x1, y1, frame], carried through the
        volume both ways until the lesion ends; a NIfTI volume, a DICOM object or the files
        of one series (repeat `image`). The volume JSON with lesions_3d."""
        options = Options(boxes, True, refine_iterations=refine_iterations)
        return await self._call(volumes.propagate, image, options, window)

    @bentoml.api(route="/segment/dicom-sr")
    async def segment_dicom_sr(
        self,
        image: list[Path],
        boxes: list[list[float]] | None = None,
        propagate: bool = False,
        score_threshold: Threshold = None,
        max_lesions: MaxLesions = None,
        refine_iterations: RefineIterations = None,
        window: str | None = None,
    ) -> Annotated[bytes, ContentType("application/zip")]:
        """As /segment/dicom-seg, plus a Comprehensive 3D SR (TID 1500) measuring each 3-D
        lesion (volume, RECIST long and short axes) and referencing its SEG segment and the
        sources: a zip of seg.dcm and sr.dcm."""
        options = Options(boxes, propagate, score_threshold, max_lesions, refine_iterations)
        return await self._call(volumes.dicom_sr, image, options, window)

    @bentoml.api(route="/segment/preview")
    async def segment_preview(
        self, image: list[Path], window: str | None = None
    ) -> PreviewResponse:
        """The frames of an upload as the models see them (PNG, base64), decoded as /segment
        decodes them: one image, DICOM object or NIfTI volume, or the files of one DICOM
        series (repeat `image`; frame k = the k-th file). No model runs."""
        return await self._call(lambda served: preview.preview(served.settings, image, window))


install_middleware(LesionSeg, SETTINGS)  # service/middleware.py: keys, limits, contract
refuse_unsafe_start(SETTINGS)  # service/doctor.py: e.g. no keys, not loopback -> no start
