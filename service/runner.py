"""The model runner: a BentoML service of its own that batches the detector and the SAM image
encoder, so that concurrent requests share one model call. ``service.app.LesionSeg`` depends on
it; the store models of the configured backend are declared here for both services.
"""

import logging
import threading
from pathlib import Path

import bentoml
import numpy as np

from lesionseg.errors import ModelLoadError
from lesionseg.models.bundle_settings import effective_settings
from lesionseg.models.detector import Detector
from lesionseg.models.detectors import load_detector
from lesionseg.models.sam_head import SamHeadDetector
from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.local import describe_models
from lesionseg.settings import Settings, check_environment
from service.drain import Drain
from service.limits import traffic_timeout_s
from service.logs import configure_logging
from service.model_store import (
    DETECTOR_MODEL,
    EXPORTS_MODEL,
    SAM_MODEL,
    bundle_in_store,
    sam_path_in_store,
)

log = logging.getLogger("lesionseg.service")

check_environment()  # a mistyped LESIONSEG_* variable stops the start
SETTINGS = Settings()  # batching parameters are needed by the decorators below
configure_logging(SETTINGS)  # both processes import this module first (service/logs.py)
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


class StoreModels:
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
    """The process settings, with the model paths pointing into the BentoML store and the
    stored bundle in force (its thresholds and window, unless set in the environment)."""
    if "exports" in models:
        root = Path(models["exports"].path)
        return effective_settings(Settings(export_dir=root, **_stored_bundle(root)))
    family = models["sam"].info.labels["family"]
    root = Path(models["detector"].path)
    stored = Settings(
        sam_family=family,
        sam_path=sam_path_in_store(Path(models["sam"].path), family),
        detector_weights=root / "weights.pt",
        **_stored_bundle(root),
    )
    return effective_settings(stored)


def _stored_bundle(model_path: Path) -> dict:
    bundle = bundle_in_store(model_path)
    return {} if bundle is None else {"model_dir": bundle}


def model_info(
    models: dict, settings: Settings, segmenter: Segmenter, detector: Detector | SamHeadDetector
) -> dict:
    """The ``models`` block of the service's answers: the CLI's
    (:func:`lesionseg.pipeline.local.describe_models`) and the store tags."""
    store = {name: str(model.tag) for name, model in models.items()}
    return {**describe_models(settings, segmenter, detector), "store": store}


# BentoML 1.4's client of this service opens a new HTTP session every `max_requests` calls (100)
# or `max_age` seconds and closes the old one with calls still in flight on it: under load
# those calls lost their connection or, worse, waited for an answer that never came (measured
# at 8 users: every ~100 runner calls, 3-5 dropped and 2 hung). One session for good: the
# runner is a local process, there is nothing to rebalance.
@bentoml.service(
    name="lesionseg-models",
    workers=1,
    traffic={"timeout": traffic_timeout_s(SETTINGS)},
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class ModelRunner(StoreModels):
    """The batched stages: YOLO detection and SAM image encoding."""

    def __init__(self) -> None:
        # Load in a thread so that /readyz answers 503 (not a hang) until the models are warm.
        self._ready = threading.Event()
        threading.Thread(target=self._load_logged, daemon=True, name="model-loader").start()
        # SIGTERM waits until the API has answered what it has in flight (service/drain.py).
        self._drain = Drain.from_settings(SETTINGS)
        self._drain.install()

    def __is_ready__(self) -> bool:
        return self._ready.is_set()

    def _wait_ready(self) -> None:
        if not self._ready.wait(timeout=900):
            raise RuntimeError("models are not loaded (see the service log)")

    def _require_ready(self) -> None:
        # The API calls detect/embed only once describe() has answered, so a runner that is
        # not ready here was restarted (BentoML respawns a dead worker) and is loading again:
        # refuse at once (503 to the client) instead of holding the call for the whole load.
        if not self._ready.is_set():
            raise bentoml.exceptions.ServiceUnavailable(
                "the model runner restarted and is loading its models; retry shortly"
            )

    def _load_logged(self) -> None:
        try:
            self._load()
            self._ready.set()
        except ModelLoadError as exc:  # says how to fix it (e.g. a setting baked into the export)
            log.error("loading the models failed; the runner stays unready: %s", exc)
        except Exception:  # the thread has no caller to report to: log, stay unready
            log.exception("loading the models failed; the runner stays unready")

    def _load(self) -> None:
        self.settings = settings = runtime_settings(self.store)
        self.segmenter = Segmenter.from_settings(settings)
        # A SAM head is loaded for describe() only: it runs in the API on the embeddings.
        self.detector = load_detector(settings)
        self.detector.score_threshold = settings.detector_score_floor
        if settings.warmup:
            if isinstance(self.detector, Detector):
                self.detector.detect([WARMUP_IMAGE])
            self.segmenter.embed([WARMUP_IMAGE])
        log.info("model runner ready: %s", self._models())

    @bentoml.api(**BATCH_ARGS)
    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image (K, 6) float32 rows [x0, y0, x1, y1, score, class_id], scores descending."""
        self._require_ready()
        if isinstance(self.detector, SamHeadDetector):
            raise RuntimeError("a sam-head bundle detects in the API process, on the embeddings")
        with self._drain.call():
            detections = self.detector.detect(images)
        return [
            np.concatenate([d.boxes, d.scores[:, None], d.class_ids[:, None]], axis=1)
            .astype(np.float32)
            .reshape(-1, 6)
            for d in detections
        ]

    @bentoml.api(**BATCH_ARGS)
    def embed(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image the (C, h, w) float32 SAM embedding; one encoder pass for the batch."""
        self._require_ready()
        with self._drain.call():
            return [e.features for e in self.segmenter.embed(images)]

    @bentoml.api
    def api_drained(self) -> None:
        """The API process has answered its requests and is stopping (a deferred SIGTERM may
        proceed: service/drain.py)."""
        self._drain.api_drained()

    @bentoml.api
    def describe(self) -> dict:
        """Models served: store tags, checksums, detector classes."""
        self._wait_ready()
        return self._models()

    def _models(self) -> dict:
        return model_info(self.store, self.settings, self.segmenter, self.detector)
