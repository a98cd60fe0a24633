"""The engine's model calls in the service: the model runner's batched ``detect`` and ``embed``,
one call per image (the runner batches concurrent calls), through the per-image cache.

The same pixels sent again (``/segment/boxes`` re-prompts from the viewer, ``/segment`` with
another threshold, refinement, a series sent again, jobs) skip the SAM encoder and the detector:
both are pure functions of the decoded pixels and of the models in force, which is what the key
(:func:`lesionseg.pipeline.cache.image_key`) digests. The detector runs at the service's score
floor and returns every box above it; each request's own threshold and lesion count are applied
afterwards by the engine (:func:`lesionseg.pipeline.results.filter_detections`), so its cached
rows serve any request.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.cache import EmbeddingCache, image_key, models_identity
from lesionseg.types import Detections, ImageEmbedding, MedicalImage
from service.metrics import CACHE_BYTES, CACHE_ENTRIES, CACHE_HITS, CACHE_MISSES
from service.retry import call_runner

MIB = 1024 * 1024


class RunnerCalls:
    """``detect`` and ``embed`` for :class:`lesionseg.pipeline.engine.LesionEngine`.

    Args:
        runner: returns the model runner's client (looked up per call: tests swap it).
        cache: returns the per-image cache in force (likewise).
        models: the runner's ``describe()``: the cache key's model identity, class names.
        segmenter: wraps an embedding with its image's geometry.
    """

    def __init__(
        self,
        runner: Callable[[], Any],
        cache: Callable[[], EmbeddingCache],
        models: dict,
        segmenter: Segmenter,
    ) -> None:
        self._runner, self._cache = runner, cache
        self._models_id = models_identity(models)
        self._names = models["detector"]["classes"]
        self._segmenter = segmenter
        # (kind, key) -> the runner call in flight for it: concurrent requests for the same new
        # image (a series sent twice, quick re-prompts) share one encoder or detector pass.
        self._pending: dict[tuple[str, str], asyncio.Future] = {}
        # id(pixels) -> (a weak reference to them, their key): a request's detect and embed
        # hash the same frame once (the digest of a large image costs tens of ms).
        self._keys: dict[int, tuple[weakref.ref, str]] = {}

    async def detect(self, images: Sequence[MedicalImage]) -> list[Detections]:
        """Per image the boxes above the service's floor, scores descending."""
        return list(await asyncio.gather(*map(self._detect_one, images)))

    async def embed(self, images: Sequence[MedicalImage]) -> list[ImageEmbedding]:
        """Per image its SAM embedding with the image's geometry."""
        return list(await asyncio.gather(*map(self._embed_one, images)))

    async def _key(self, image: MedicalImage) -> str | None:
        """The image's cache key (None with the cache off); hashed off the event loop."""
        if not self._cache().enabled:
            return None
        pixels = image.pixels
        known = self._keys.get(id(pixels))
        if known is not None and known[0]() is pixels:
            return known[1]
        key = await asyncio.to_thread(image_key, pixels, self._models_id)
        ident = id(pixels)  # dropped when the pixels are, before the id can be reused
        self._keys[ident] = (weakref.ref(pixels, lambda _: self._keys.pop(ident, None)), key)
        return key

    async def _detect_one(self, image: MedicalImage) -> Detections:
        async def detect() -> np.ndarray:
            rows = await call_runner(
                lambda: self._runner().to_async.detect([image.pixels]), "detect"
            )
            return np.asarray(rows[0], np.float32)

        # (K, 6) float32 rows [x0, y0, x1, y1, score, class_id]
        rows = await self._cached("detections", await self._key(image), detect)
        classes = rows[:, 5].astype(np.int64)
        labels = tuple(self._names[int(c)] for c in classes)
        return Detections(rows[:, :4], rows[:, 4], classes, labels)

    async def _embed_one(self, image: MedicalImage) -> ImageEmbedding:
        async def embed() -> np.ndarray:
            features = await call_runner(
                lambda: self._runner().to_async.embed([image.pixels]), "embed"
            )
            return np.asarray(features[0], np.float32)

        features = await self._cached("embedding", await self._key(image), embed)
        return self._segmenter.wrap(features, (image.height, image.width))

    async def _cached(
        self, kind: str, key: str | None, compute: Callable[[], Awaitable[np.ndarray]]
    ) -> np.ndarray:
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
        value = self._cache().get((kind, key))
        if value is not None:
            CACHE_HITS.labels(kind).inc()
            return value
        CACHE_MISSES.labels(kind).inc()
        task = asyncio.ensure_future(self._compute_and_store(kind, key, compute))
        self._pending[(kind, key)] = task
        task.add_done_callback(lambda _: self._pending.pop((kind, key), None))
        return await asyncio.shield(task)

    async def _compute_and_store(
        self, kind: str, key: str, compute: Callable[[], Awaitable[np.ndarray]]
    ) -> np.ndarray:
        value = await compute()
        cache = self._cache()
        cache.put((kind, key), value)
        CACHE_BYTES.set(cache.nbytes)
        CACHE_ENTRIES.set(len(cache))
        return value
