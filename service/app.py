"""BentoML services: ``ModelRunner`` batches the models, ``LesionSeg`` serves the HTTP API.

``ModelRunner`` owns the detector and the SAM image encoder, each behind an adaptively batched
API, so concurrent requests share one model call. ``LesionSeg`` decodes uploads, validates
them, filters detections, runs SAM's light prompt/mask decoder per image and encodes the
response. Everything about images and tensors lives in ``lesionseg``; this file only wires it
to HTTP and maps errors: bad input -> 400, overload -> 503.
"""

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field
from starlette.responses import JSONResponse

from lesionseg.detector import Detector
from lesionseg.errors import InputError
from lesionseg.imaging import check_upload_size, decode_image
from lesionseg.pipeline import PROMPT_LABEL, build_result, filter_detections
from lesionseg.report import draw_overlay, result_to_dict
from lesionseg.segmenter import Segmenter, validate_boxes
from lesionseg.settings import Settings
from lesionseg.types import Detections, MedicalImage, SegmentationResult
from service.jobs import Jobs
from service.metrics import STAGE_SECONDS, timed
from service.model_store import DETECTOR_MODEL, EXPORTS_MODEL, SAM_MODEL, sam_path_in_store
from service.schemas import SegmentResponse

log = logging.getLogger("lesionseg.service")

SETTINGS = Settings()  # batching parameters are needed by the decorators below
BATCHING = SETTINGS.max_batch_size > 1  # BentoML wants max_batch_size >= 2; 1 = batching off
BATCH_ARGS = dict(
    batchable=BATCHING,
    **(
        {"max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms}
        if BATCHING
        else {}
    ),
)
WARMUP_IMAGE = np.zeros((64, 64, 3), np.uint8)
WARMUP_IMAGE[24:40, 24:40] = 200


class _StoreModels:
    """Declares the BentoML store models of the configured backend as class attributes (the
    only place BentoML resolves them, and what `bentoml build` packages)."""

    if SETTINGS.backend == "torch":
        sam_model = bentoml.models.BentoModel(f"{SAM_MODEL}:latest")
        detector_model = bentoml.models.BentoModel(f"{DETECTOR_MODEL}:latest")
    else:
        exports_model = bentoml.models.BentoModel(f"{EXPORTS_MODEL}:latest")

    @property
    def store(self) -> dict:
        names = ("sam_model", "detector_model", "exports_model")
        return {n.removesuffix("_model"): getattr(self, n) for n in names if hasattr(self, n)}


def runtime_settings(models: dict) -> Settings:
    """The process settings, with the model paths pointing into the BentoML store."""
    if "exports" in models:
        return Settings(export_dir=Path(models["exports"].path))
    family = models["sam"].info.labels["family"]
    return Settings(
        sam_family=family,
        sam_path=sam_path_in_store(Path(models["sam"].path), family),
        detector_weights=Path(models["detector"].path) / "weights.pt",
    )


def model_info(models: dict, segmenter: Segmenter, detector: Detector) -> dict:
    spec = segmenter.spec
    return {
        "backend": SETTINGS.backend,
        "store": {name: str(model.tag) for name, model in models.items()},
        "sam": {"family": spec.family, "name": spec.name, "sha256": spec.sha256},
        "detector": {"weights": detector.weights.name, "classes": detector.names},
    }


@bentoml.service(name="lesionseg-models", workers=1, traffic={"timeout": 600})
class ModelRunner(_StoreModels):
    """The batched stages: YOLO detection and SAM image encoding."""

    def __init__(self) -> None:
        # Load in a thread so that /readyz answers 503 (not a hang) until the models are warm.
        self._ready = threading.Event()
        threading.Thread(target=self._load_logged, daemon=True, name="model-loader").start()

    def __is_ready__(self) -> bool:
        return self._ready.is_set()

    def _wait_ready(self) -> None:
        if not self._ready.wait(timeout=900):
            raise RuntimeError("models are not loaded (see the service log)")

    def _load_logged(self) -> None:
        try:
            self._load()
            self._ready.set()
        except Exception:  # the thread has no caller to report to: log, stay unready
            log.exception("loading the models failed; the runner stays unready")

    def _load(self) -> None:
        settings = runtime_settings(self.store)
        self.segmenter = Segmenter.from_settings(settings)
        self.detector = Detector.from_settings(settings)
        self.detector.score_threshold = settings.detector_score_floor
        if settings.warmup:
            self.detector.detect([WARMUP_IMAGE])
            self.segmenter.embed([WARMUP_IMAGE])
        log.info("model runner ready: %s", self._models())

    @bentoml.api(**BATCH_ARGS)
    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image (K, 6) float32 rows [x0, y0, x1, y1, score, class_id], scores descending."""
        self._wait_ready()
        return [
            np.concatenate([d.boxes, d.scores[:, None], d.class_ids[:, None]], axis=1)
            .astype(np.float32)
            .reshape(-1, 6)
            for d in self.detector.detect(images)
        ]

    @bentoml.api(**BATCH_ARGS)
    def embed(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image the (C, h, w) float32 SAM embedding; one encoder pass for the batch."""
        self._wait_ready()
        return [e.features for e in self.segmenter.embed(images)]

    @bentoml.api
    def describe(self) -> dict:
        """Models served: store tags, checksums, detector classes."""
        self._wait_ready()
        return self._models()

    def _models(self) -> dict:
        return model_info(self.store, self.segmenter, self.detector)


def _bad_request(exc: InputError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "5"})


# /jobs: persistent async studies; its lifespan runs the job worker and the DICOMweb pusher.
JOBS = Jobs(SETTINGS, bentoml.get_current_service)


@bentoml.asgi_app(JOBS.app, path="/")
@bentoml.service(name="lesionseg", traffic={"timeout": 600})
class LesionSeg(_StoreModels):
    """Automatic lesion segmentation over HTTP: ``/segment``, ``/segment/boxes``,
    ``/segment/overlay``; health at ``/livez`` and ``/readyz``, metrics at ``/metrics``."""

    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.pending = 0
        self._ready = asyncio.Event()

    def __is_ready__(self) -> bool:
        return self._ready.is_set()

    @bentoml.on_startup
    async def _begin_loading(self) -> None:
        # A task, not an await: startup returns at once and /readyz answers 503 until done.
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            settings = runtime_settings(self.store)
            # Only the prompt encoder and mask decoder of this copy are used.
            self.segmenter = await asyncio.to_thread(Segmenter.from_settings, settings)
            self.models = await self._describe_runner()
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

    def _decode(self, path: Path) -> MedicalImage:
        # Check the size on disk before reading a possibly huge upload into memory.
        check_upload_size(path.stat().st_size, self.settings.max_upload_bytes)
        return decode_image(path.read_bytes(), max_pixels=self.settings.max_image_pixels)

    async def _run(
        self,
        path: Path,
        *,
        boxes: list | None = None,
        score_threshold: float | None = None,
        max_lesions: int | None = None,
        refine_iterations: int | None = None,
    ) -> tuple[MedicalImage, SegmentationResult]:
        timings: dict[str, float] = {}
        with timed("decode_image", timings):
            image = await asyncio.to_thread(self._decode, path)
        hw = (image.height, image.width)
        if boxes is not None:
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
            with timed("detect", timings):
                rows = (await self.runner.to_async.detect([image.pixels]))[0]
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
            )
            prompts, labels, scores = kept.boxes, kept.labels, kept.scores
        if len(prompts):
            with timed("embed", timings):
                features = (await self.runner.to_async.embed([image.pixels]))[0]
            with timed("mask_decode", timings):
                (prediction,) = await asyncio.to_thread(
                    self.segmenter.predict,
                    [self.segmenter.wrap(np.asarray(features, np.float32), hw)],
                    [prompts],
                    refine_iterations=refine_iterations,
                )
        else:
            prediction = self.segmenter.predict_empty(hw)
        return image, build_result(image, prompts, labels, scores, prediction, timings)

    async def _respond(self, make, **kwargs):
        """Run one request: overload -> 503, bad input -> 400, else ``make(image, result)``."""
        if not self._ready.is_set():
            return _unavailable("the models are still loading; retry once /readyz answers 200")
        if self.pending >= self.settings.max_pending_requests:
            return _unavailable(f"overloaded: {self.pending} requests in flight; retry later")
        self.pending += 1
        try:
            image, result = await self._run(**kwargs)
            return await asyncio.to_thread(make, image, result)
        except InputError as exc:
            return _bad_request(exc)
        except bentoml.exceptions.ServiceUnavailable:
            # The runner sheds requests it cannot batch within max_latency_ms.
            return _unavailable(
                "overloaded: the model queue is over its latency budget "
                "(LESIONSEG_MAX_LATENCY_MS); retry later"
            )
        finally:
            self.pending -= 1

    def _json(self, image: MedicalImage, result: SegmentationResult) -> SegmentResponse:
        timings = dict(result.timings_ms)
        start = time.perf_counter()
        payload = result_to_dict(result, self.models)
        timings["encode_response"] = (time.perf_counter() - start) * 1000
        STAGE_SECONDS.labels("encode_response").observe(timings["encode_response"] / 1000)
        payload["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
        return SegmentResponse.model_validate(payload)

    # --- HTTP API -------------------------------------------------------------------------

    @bentoml.api(route="/segment")
    async def segment(
        self,
        image: Path,
        score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None,
        max_lesions: Annotated[int, Field(ge=1, le=1000)] | None = None,
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
    ) -> SegmentResponse:
        """Find and outline every lesion: detector boxes -> SAM masks (COCO RLE)."""
        return await self._respond(
            self._json,
            path=image,
            score_threshold=score_threshold,
            max_lesions=max_lesions,
            refine_iterations=refine_iterations,
        )

    @bentoml.api(route="/segment/boxes")
    async def segment_boxes(
        self,
        image: Path,
        boxes: list[list[float]],
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
    ) -> SegmentResponse:
        """One lesion per [x0, y0, x1, y1] box (original pixels), in the order given."""
        return await self._respond(
            self._json, path=image, boxes=boxes, refine_iterations=refine_iterations
        )

    @bentoml.api(route="/segment/overlay")
    async def segment_overlay(
        self,
        image: Path,
        score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None,
        max_lesions: Annotated[int, Field(ge=1, le=1000)] | None = None,
        refine_iterations: Annotated[int, Field(ge=0, le=10)] | None = None,
    ) -> Annotated[bytes, ContentType("image/png")]:
        """As /segment, drawn on the image as a PNG (masks, outlines, boxes, labels)."""
        return await self._respond(
            lambda im, res: draw_overlay(im.pixels, res),
            path=image,
            score_threshold=score_threshold,
            max_lesions=max_lesions,
            refine_iterations=refine_iterations,
        )
