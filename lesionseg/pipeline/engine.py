"""The engine: detect -> filter -> embed -> decode -> refine over the frames of an upload (one
image, a DICOM object or series, a NIfTI volume), box prompts, propagation, and the 3-D lesions.

The two model calls that want batching, the detector and SAM's image encoder, are injected as
async callables (:data:`Detect`, :data:`Embed`), so that the same engine runs local models
(:class:`lesionseg.pipeline.local.LocalModels`, the CLI) and a batched model server behind a
per-image cache (``service.runner_calls.RunnerCalls``). SAM's light prompt/mask decoder runs
here, in a thread (:class:`~lesionseg.models.segmenter.Segmenter`, which may be decoder-only).
Async because the service is: requests share the runner calls in flight; the CLI wraps a call
in ``asyncio.run``.

With a SAM-head detector (:class:`~lesionseg.models.sam_head.SamHeadDetector`, a bundle's
``detector: sam-head``) the boxes come from the embeddings: every frame is embedded, the head
runs here in a thread like the mask decoder, on each slice with its neighbours in space for a
volume (2.5-D), and the frames with boxes reuse their embeddings for the masks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from lesionseg.errors import InputError
from lesionseg.io.uploads import Upload, split_boxes, uploads_geometry
from lesionseg.models.sam_head import SamHeadDetector
from lesionseg.models.segmenter import Segmenter, validate_boxes
from lesionseg.pipeline.prediction import Options, Prediction, is_volume, link
from lesionseg.pipeline.propagate import Propagation
from lesionseg.pipeline.results import build_result, filter_detections, prompted
from lesionseg.pipeline.timing import StageHook, timed
from lesionseg.settings import Settings
from lesionseg.types import Detections, ImageEmbedding, MedicalImage, SegmentationResult

Detect = Callable[[Sequence[MedicalImage]], Awaitable[list[Detections]]]
"""Per image every box the detector finds above the engine's score floor, scores descending."""
Embed = Callable[[Sequence[MedicalImage]], Awaitable[list[ImageEmbedding]]]
"""Per image its SAM embedding, with its geometry (:meth:`Segmenter.wrap`)."""


class LesionEngine:
    """Segments frames with injected model calls; stateless between requests.

    Args:
        detect, embed: the batched model calls (see :data:`Detect`, :data:`Embed`).
        segmenter: SAM's prompt encoder and mask decoder (its image encoder is not used).
        score_threshold, max_lesions, box_margin: defaults of the filter stage. No defaults
            here: they are the settings' (:meth:`from_settings`), the one place they live.
        score_floor: the confidence ``detect`` runs at; a lower request threshold is refused.
        frames_in_flight: frames detected and embedded together, so that a volume does not
            flood a batched server past its latency budget.
        propagation: keyword settings of :class:`~lesionseg.pipeline.propagate.Propagation`.
        link_min_overlap: of the smaller mask, for two lesions on neighbouring slices to be
            one 3-D lesion (:func:`~lesionseg.measure.lesions3d.link_lesions`).
        on_stage: ``hook(stage, seconds)`` per timed stage ("detect", "embed", "mask_decode").
        head: a SAM-head detector: boxes from the embeddings (``detect`` is then not called).
            It must run at ``score_floor`` (it returns every box above it).
    """

    def __init__(
        self,
        detect: Detect,
        embed: Embed,
        segmenter: Segmenter,
        *,
        score_threshold: float,
        score_floor: float,
        max_lesions: int,
        box_margin: float,
        frames_in_flight: int,
        link_min_overlap: float,
        propagation: Mapping[str, float] | None = None,
        on_stage: StageHook | None = None,
        head: SamHeadDetector | None = None,
    ) -> None:
        assert frames_in_flight >= 1, frames_in_flight
        self.head = head
        self.detect, self.embed, self.segmenter = detect, embed, segmenter
        self.score_threshold, self.score_floor = score_threshold, score_floor
        self.max_lesions, self.box_margin = max_lesions, box_margin
        self.frames_in_flight = frames_in_flight
        self.propagation = dict(propagation or {})
        self.link_min_overlap = link_min_overlap
        self.on_stage = on_stage

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        detect: Detect,
        embed: Embed,
        segmenter: Segmenter,
        *,
        score_floor: float | None = None,
        on_stage: StageHook | None = None,
        head: SamHeadDetector | None = None,
    ) -> LesionEngine:
        """The engine of ``settings`` (the bundle's threshold and margin, the batch size, the
        propagation and linking thresholds);
        ``score_floor`` defaults to ``settings.detector_score_floor``."""
        return cls(
            detect,
            embed,
            segmenter,
            score_threshold=settings.score_threshold,
            score_floor=settings.detector_score_floor if score_floor is None else score_floor,
            max_lesions=settings.max_lesions,
            box_margin=settings.box_margin,
            frames_in_flight=settings.max_batch_size,
            propagation={
                "margin": settings.propagation_margin,
                "margin_px": settings.propagation_margin_px,
                "min_iou": settings.propagation_min_iou,
                "max_growth": settings.propagation_max_growth,
                "min_overlap": settings.propagation_min_overlap,
                "max_intensity_shift": settings.propagation_max_intensity_shift,
            },
            link_min_overlap=settings.lesion_link_min_overlap,
            on_stage=on_stage,
            head=head,
        )

    async def run(
        self,
        uploads: Sequence[Upload],
        options: Options,
        timings: dict[str, float] | None = None,
        *,
        volume: bool | None = None,
    ) -> Prediction:
        """Segment every frame of ``uploads``; link the lesions in 3-D when the answer is a
        volume's (``volume``; default: :func:`is_volume`, or propagation). ``timings`` (ms,
        e.g. the decode's) start each frame's own."""
        uploads = tuple(uploads)
        frames = tuple(f for u in uploads for f in u.frames)
        ids = None
        if options.propagate:
            if not options.boxes:
                raise InputError(
                    "propagate needs boxes: one [x0, y0, x1, y1, frame] per lesion, on one frame"
                )
            geometry = uploads_geometry(uploads)
            order = None if geometry is None else geometry.order
            results, ids = await self.propagate(
                frames, options.boxes, order, options.refine_iterations, timings
            )
        else:
            results = await self.segment(frames, options, timings, _spatial_order(uploads))
        if volume is None:
            volume = is_volume(uploads) or options.propagate
        if not volume:
            return Prediction(uploads, results)
        ids, lesions = await asyncio.to_thread(link, uploads, results, ids, self.link_min_overlap)
        return Prediction(uploads, results, ids, tuple(lesions))

    async def segment(
        self,
        frames: Sequence[MedicalImage],
        options: Options | None = None,
        timings: dict[str, float] | None = None,
        order: np.ndarray | None = None,
    ) -> list[SegmentationResult]:
        """Per frame its lesions, in frame order: the detector's boxes, or ``options.boxes``
        (validated before any model work).

        Args:
            order: (F,) frame indices in spatial order when the frames are one volume's slices
                (a SAM head then sees each slice's neighbours); None: unrelated images.
        """
        options = options or Options()
        prompts = self._caller_prompts(frames, options.boxes)
        threshold, limit = self._limits(options)
        around = None
        if prompts is None and self.head is not None:
            around = _neighbours(len(frames), order, self.head.context)
        embedded: dict[int, ImageEmbedding] = {}  # a SAM head's, for the masks and neighbours
        results: list[SegmentationResult] = []
        for start in range(0, len(frames), self.frames_in_flight):
            chunk = range(start, min(start + self.frames_in_flight, len(frames)))
            if prompts is not None:
                found = [(prompted(prompts[i]), dict(timings or {})) for i in chunk]
            elif around is None:
                found = await self._detect([frames[i] for i in chunk], threshold, limit, timings)
            else:
                found = await self._head_detect(
                    frames, chunk, around, embedded, threshold, limit, timings
                )
            known = [embedded.get(i) for i in chunk]
            results += await self._decode([frames[i] for i in chunk], found, options, known)
            if around is not None:  # keep what later chunks still need: their neighbours
                later = {j for i in range(chunk.stop, len(frames)) for j in (i, *around[i])}
                embedded = {i: e for i, e in embedded.items() if i in later}
        return results

    def _caller_prompts(
        self, frames: Sequence[MedicalImage], boxes: list | None
    ) -> list[np.ndarray] | None:
        """Per frame (N, 4) float32 clipped boxes, or None to run the detector."""
        if boxes is None:
            return None
        per_frame = [boxes] if len(frames) == 1 else split_boxes(boxes, len(frames))
        return [
            validate_boxes(b, (im.height, im.width))
            for im, b in zip(frames, per_frame, strict=True)
        ]

    def _limits(self, options: Options) -> tuple[float, int]:
        threshold = self.score_threshold
        if options.score_threshold is not None:
            threshold = options.score_threshold
        if threshold < self.score_floor:
            raise InputError(
                f"score_threshold {threshold} is below the service's floor of "
                f"{self.score_floor} (LESIONSEG_DETECTOR_SCORE_FLOOR)"
            )
        return threshold, options.max_lesions or self.max_lesions

    async def _detect(
        self,
        frames: Sequence[MedicalImage],
        threshold: float,
        limit: int,
        timings: dict[str, float] | None,
    ) -> list[tuple[Detections, dict[str, float]]]:
        """Per frame its kept, grown boxes and its timings so far."""
        stage = dict(timings or {})
        with timed("detect", stage, self.on_stage):
            found = await self.detect(frames)
        limits = dict(score_threshold=threshold, max_lesions=limit, box_margin=self.box_margin)
        return [
            (filter_detections(d, (im.height, im.width), **limits), dict(stage))
            for d, im in zip(found, frames, strict=True)
        ]

    async def _head_detect(
        self,
        frames: Sequence[MedicalImage],
        chunk: range,
        around: list[list[int]],
        embedded: dict[int, ImageEmbedding],
        threshold: float,
        limit: int,
        timings: dict[str, float] | None,
    ) -> list[tuple[Detections, dict[str, float]]]:
        """The SAM head's boxes for ``frames[chunk]``: embeds the chunk and the neighbours not
        in ``embedded`` (adding them), then one head call in a thread."""
        stage = dict(timings or {})
        new = sorted({j for i in chunk for j in (i, *around[i])} - embedded.keys())
        with timed("embed", stage, self.on_stage):
            embedded |= zip(new, await self.embed([frames[j] for j in new]), strict=True)
        with timed("detect", stage, self.on_stage):
            found = await asyncio.to_thread(
                self.head.detect,
                [embedded[i] for i in chunk],
                [[embedded[j] for j in around[i]] for i in chunk],
            )
        limits = dict(score_threshold=threshold, max_lesions=limit, box_margin=self.box_margin)
        return [
            (filter_detections(d, (frames[i].height, frames[i].width), **limits), dict(stage))
            for d, i in zip(found, chunk, strict=True)
        ]

    async def _decode(
        self,
        frames: Sequence[MedicalImage],
        found: list[tuple[Detections, dict[str, float]]],
        options: Options,
        known: Sequence[ImageEmbedding | None],
    ) -> list[SegmentationResult]:
        """Embed the frames that have boxes (only those; ``known`` embeddings are reused) and
        decode their masks."""
        refine_iterations = options.refine_iterations
        todo = [i for i, (d, _) in enumerate(found) if len(d)]
        predictions = {}
        if todo:
            stage: dict[str, float] = {}
            missing = [i for i in todo if known[i] is None]
            fresh: dict[int, ImageEmbedding] = {}
            if missing:  # a SAM head's frames were embedded for the detection
                with timed("embed", stage, self.on_stage):
                    new = await self.embed([frames[i] for i in missing])
                fresh = dict(zip(missing, new, strict=True))
            embeddings = [fresh[i] if known[i] is None else known[i] for i in todo]
            with timed("mask_decode", stage, self.on_stage):
                masks = await asyncio.to_thread(
                    self.segmenter.predict,
                    embeddings,
                    [found[i][0].boxes for i in todo],
                    refine_iterations=refine_iterations,
                )
            predictions = dict(zip(todo, masks, strict=True))
            for i in todo:
                found[i][1].update(stage)
        results = []
        for i, (image, (d, times)) in enumerate(zip(frames, found, strict=True)):
            if i in predictions:
                prediction = predictions[i]
            else:
                prediction = self.segmenter.predict_empty((image.height, image.width))
            results.append(build_result(image, d.boxes, d.labels, d.scores, prediction, times))
        return results

    async def propagate(
        self,
        frames: Sequence[MedicalImage],
        boxes: list,
        order: np.ndarray | None = None,
        refine_iterations: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> tuple[list[SegmentationResult], list[list[int]]]:
        """One box per lesion, ``[x0, y0, x1, y1, frame]`` (the frame may be left out for a
        single image), carried through ``frames`` in spatial ``order`` (default: frame
        order) until each lesion ends; per frame its lesions and their 1-based seed ids.
        Each frame is embedded once."""
        if len(frames) == 1:
            boxes = [[*b, 0] if isinstance(b, list | tuple) and len(b) == 4 else b for b in boxes]
        split_boxes(boxes, len(frames))  # the boxes name valid frames
        seeds = []
        for box in boxes:
            image = frames[int(box[4])]
            seeds.append((int(box[4]), validate_boxes([box[:4]], (image.height, image.width))[0]))
        propagation = Propagation(seeds, frames, order, **self.propagation)
        embeddings: dict[int, ImageEmbedding] = {}
        stage: dict[str, float] = dict(timings or {})
        while not propagation.done:
            pending = propagation.pending()
            new = [f for f in pending if f not in embeddings]
            with timed("embed", stage, self.on_stage):
                embeddings |= zip(new, await self.embed([frames[f] for f in new]), strict=True)
            with timed("mask_decode", stage, self.on_stage):
                masks = await asyncio.to_thread(
                    self.segmenter.predict,
                    [embeddings[f] for f in pending],
                    list(pending.values()),
                    refine_iterations=refine_iterations,
                )
            propagation.update(dict(zip(pending, masks, strict=True)))
        results, ids = propagation.results()
        return [replace(r, timings_ms=dict(stage)) for r in results], ids


def _spatial_order(uploads: Sequence[Upload]) -> np.ndarray | None:
    """(F,) frame indices in spatial order for one volume's frames (the geometry's, else the
    frame order of one multi-frame upload); None for unrelated images."""
    geometry = uploads_geometry(uploads)
    if geometry is not None:
        return geometry.order
    if len(uploads) == 1 and uploads[0].multi_frame:
        return np.arange(len(uploads[0].frames))
    return None


def _neighbours(count: int, order: np.ndarray | None, context: int) -> list[list[int]]:
    """Per frame the indices of its ``context`` neighbours on each side in space (k-1, k+1),
    nearest first on each side; the frame itself where the volume ends or for unrelated images
    (``order`` None)."""
    if order is None or context == 0:
        return [[i] * (2 * context) for i in range(count)]
    order = [int(i) for i in order]
    place = {frame: p for p, frame in enumerate(order)}
    out = []
    for i in range(count):
        p = place[i]
        before = [order[max(p - d, 0)] for d in range(1, context + 1)]
        after = [order[min(p + d, count - 1)] for d in range(1, context + 1)]
        out.append(before + after)
    return out
