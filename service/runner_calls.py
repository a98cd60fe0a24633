"""The model runner's per-image calls, through the per-image cache: a mixin of ``LesionSeg``.

The same pixels sent again (``/segment/boxes`` re-prompts from the viewer, ``/segment`` with
another threshold, refinement, a series sent again, jobs) skip the SAM encoder and the detector:
both are pure functions of the decoded pixels and of the models in force, which is what the key
(:func:`lesionseg.pipeline.cache.image_key`) digests. The detector runs at the service's score
floor and returns every box above it; each request's own threshold and lesion count are applied
afterwards (:func:`lesionseg.pipeline.engine.filter_detections`), so its cached rows serve any
request.

The host class provides ``runner``, ``segmenter``, ``settings`` and ``models``.
"""

from __future__ import annotations

import asyncio

import numpy as np

from lesionseg.pipeline.cache import EmbeddingCache, image_key, models_identity
from lesionseg.types import ImageEmbedding, MedicalImage
from service.metrics import CACHE_BYTES, CACHE_ENTRIES, CACHE_HITS, CACHE_MISSES
from service.retry import call_runner

MIB = 1024 * 1024


class CachedRunnerCalls:
    """``_detections`` and ``_embedding`` of one image; call ``_start_cache`` once the models
    are described."""

    def _start_cache(self) -> None:
        self.image_cache = EmbeddingCache(self.settings.embedding_cache_mb * MIB)
        self._models_id = models_identity(self.models)
        # (kind, key) -> the runner call in flight for it: concurrent requests for the same new
        # image (a series sent twice, quick re-prompts) share one encoder or detector pass.
        self._pending: dict[tuple[str, str], asyncio.Future] = {}

    async def _image_key(self, image: MedicalImage) -> str | None:
        """The image's cache key (None with the cache off); hashed off the event loop."""
        if not self.image_cache.enabled:
            return None
        return await asyncio.to_thread(image_key, image.pixels, self._models_id)

    async def _detections(self, image: MedicalImage, key: str | None) -> np.ndarray:
        """(K, 6) float32 rows [x0, y0, x1, y1, score, class_id] above the service's floor."""

        async def detect() -> np.ndarray:
            rows = await call_runner(lambda: self.runner.to_async.detect([image.pixels]), "detect")
            return np.asarray(rows[0], np.float32)

        return await self._cached("detections", key, detect)

    async def _embedding(self, image: MedicalImage, key: str | None) -> ImageEmbedding:
        """The SAM embedding of the image, with its geometry."""

        async def embed() -> np.ndarray:
            features = await call_runner(
                lambda: self.runner.to_async.embed([image.pixels]), "embed"
            )
            return np.asarray(features[0], np.float32)

        features = await self._cached("embedding", key, embed)
        return self.segmenter.wrap(features, (image.height, image.width))

    async def _cached(self, kind: str, key: str | None, compute) -> np.ndarray:
        """The cached value, else the call in flight for the same key (counted as a hit), else
        ``compute()`` once, stored. The call runs as a task of its own: a request that gives up
        (its deadline, a client gone) leaves it to the others waiting for it, and its result
        is cached; its error reaches every one of them, and the next request tries again."""
        if key is None:
            return await compute()
        pending = self._pending.get((kind, key))
        if pending is not None:
            CACHE_HITS.labels(kind).inc()
            return await asyncio.shield(pending)
        value = self.image_cache.get((kind, key))
        if value is not None:
            CACHE_HITS.labels(kind).inc()
            return value
        CACHE_MISSES.labels(kind).inc()
        task = asyncio.ensure_future(self._compute_and_store(kind, key, compute))
        self._pending[(kind, key)] = task
        task.add_done_callback(lambda _: self._pending.pop((kind, key), None))
        return await asyncio.shield(task)

    async def _compute_and_store(self, kind: str, key: str, compute) -> np.ndarray:
        value = await compute()
        self.image_cache.put((kind, key), value)
        CACHE_BYTES.set(self.image_cache.nbytes)
        CACHE_ENTRIES.set(len(self.image_cache))
        return value
