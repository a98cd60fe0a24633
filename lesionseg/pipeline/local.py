"""The engine's model calls run in this process (the CLI): the detector and SAM's image encoder
of the settings, as :data:`~lesionseg.pipeline.engine.Detect` and
:data:`~lesionseg.pipeline.engine.Embed`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from lesionseg.models.bundle_settings import served_bundle
from lesionseg.models.detector import Detector
from lesionseg.models.detectors import load_detector
from lesionseg.models.sam_head import SamHeadDetector
from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.engine import LesionEngine
from lesionseg.settings import Settings
from lesionseg.types import Detections, ImageEmbedding, MedicalImage


class LocalModels:
    """A detector (None for box prompts only) and a whole SAM, called in a worker thread.

    The detector runs at a score floor and returns every box above it, as the service's model
    runner does; the engine then applies each request's threshold. A SAM-head detector is the
    engine's ``head`` (it works on embeddings); :meth:`detect` is then not called.
    """

    def __init__(self, detector: Detector | SamHeadDetector | None, segmenter: Segmenter) -> None:
        self.detector, self.segmenter = detector, segmenter

    @property
    def head(self) -> SamHeadDetector | None:
        """The SAM-head detector, when that is the detector."""
        return self.detector if isinstance(self.detector, SamHeadDetector) else None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, score_floor: float, with_detector: bool = True
    ) -> LocalModels:
        detector = None
        if with_detector:
            detector = load_detector(settings)
            detector.score_threshold = score_floor
        return cls(detector, Segmenter.from_settings(settings))

    async def detect(self, images: Sequence[MedicalImage]) -> list[Detections]:
        """Per image (K, 4) XYXY boxes in original pixels, scores descending; one model call."""
        if self.detector is None or self.head is not None:
            raise RuntimeError("these models have no image detector: give boxes, or a head")
        return await asyncio.to_thread(self.detector.detect, [im.pixels for im in images])

    async def embed(self, images: Sequence[MedicalImage]) -> list[ImageEmbedding]:
        """Per image its (C, h, w) float32 SAM embedding; one encoder pass."""
        return await asyncio.to_thread(self.segmenter.embed, [im.pixels for im in images])


def local_engine(
    settings: Settings, *, score_threshold: float | None = None, with_detector: bool = True
) -> tuple[LesionEngine, LocalModels]:
    """The engine of ``settings`` on local models. The detector's floor is the service's
    (``detector_score_floor``), or ``score_threshold`` where that is lower: the CLI honours
    any threshold it is given."""
    floor = settings.detector_score_floor
    if score_threshold is not None:
        floor = min(floor, score_threshold)
    models = LocalModels.from_settings(settings, score_floor=floor, with_detector=with_detector)
    engine = LesionEngine.from_settings(
        settings, models.detect, models.embed, models.segmenter, score_floor=floor, head=models.head
    )
    return engine, models


def describe_models(
    settings: Settings, segmenter: Segmenter, detector: Detector | SamHeadDetector | None
) -> dict:
    """The ``models`` block of a response: backend, bundle, SAM and detector with their
    precisions (the service adds its store tags)."""
    spec = segmenter.spec
    models = {
        "backend": settings.backend,
        "bundle": served_bundle(settings),
        "sam": {
            "family": spec.family,
            "name": spec.name,
            "sha256": spec.sha256,
            "precision": segmenter.runner.precision,
        },
    }
    if detector is not None:
        models["detector"] = {
            "kind": settings.detector_kind,
            "weights": detector.weights.name,
            "classes": detector.names,
            "precision": detector.runner.precision,
        }
    return models
