"""A bundle scored as the service runs it, fully automatic: :func:`evaluate_bundle`, behind
``lesionseg evaluate`` (:mod:`lesionseg.train.evaluate_command`) and the end of
``lesionseg train``.

The frames go through the service's own engine on local models
(:func:`lesionseg.pipeline.local.local_engine`, the ``torch`` backend): whatever detector the
bundle holds proposes the boxes, SAM decodes them, the engine filters and grows them as
``/segment`` does. The detector runs at a low floor (:data:`FLOOR`) and every instance keeps its
score, so one pass gives the bundle's own operating point (its ``score_threshold``) and the whole
FROC curve (:mod:`lesionseg.measure.froc`).

Measures, per case (patient) and pooled over every lesion of every case, over the lesions of
>= ``min_area`` px on each slice (2-D lesion instances, as training counts them):
- lesion Dice and FP-penalised lesion Dice at the bundle's threshold
  (:class:`lesionseg.measure.evaluation.LesionScores`, the automatic definition of training);
- recall: the share of lesions hit by a mask (an instance given to the lesion);
- false masks per slice: instances of >= ``min_area`` px overlapping no lesion, per slice;
- FROC: the sensitivity at 0.5, 1, 2 and 4 false masks per slice over the score threshold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesionseg.datasets import Frame
from lesionseg.errors import ModelLoadError
from lesionseg.measure.evaluation import EVAL_MIN_AREA, LesionScores
from lesionseg.measure.froc import FROC_RATES, Froc
from lesionseg.models.bundle_settings import bundle_in_force, effective_settings
from lesionseg.pipeline.local import describe_models, local_engine
from lesionseg.pipeline.prediction import Options
from lesionseg.settings import Settings
from lesionseg.types import MedicalImage

FLOOR = 0.05  # the lowest score threshold of the FROC sweep (the detector runs at it)
CHUNK = 16  # frames handed to the engine at once (it batches them by max_batch_size)


@dataclass
class CaseScores:
    """One case's record: lesion Dice at the bundle's threshold and its FROC."""

    name: str
    scores: LesionScores = field(default_factory=LesionScores)
    froc: Froc = field(default_factory=Froc)

    def row(self, threshold: float) -> dict:
        """The table's row at ``threshold``: None where a measure is undefined (no lesion)."""
        froc = self.froc
        return {
            "case": self.name,
            "frames": froc.frames,
            "lesions": froc.lesions,
            "lesion_dice": _round(self.scores.lesion_dice),
            "fp_penalised_dice": _round(self.scores.fp_penalised_dice),
            "recall": _round(froc.sensitivity(threshold)),
            "false_masks": froc.false_masks(threshold),
            "false_per_slice": _round(froc.false_per_slice(threshold)),
            **{f"sens@{rate:g}": _round(froc.sensitivity_at(rate)) for rate in FROC_RATES},
        }


@dataclass
class Report:
    """What :func:`evaluate_bundle` measured.

    Attributes:
        models: the service's ``models`` block of the bundle run (backend, bundle, SAM, detector).
        score_threshold: the bundle's threshold, at which the Dice, recall and false masks are.
        min_area: px; lesions (and false masks) smaller are not counted.
        counted_labels: the detector classes whose instances were scored; None: every class.
        cases: per case, in order.
        seconds: wall time of the model runs and scoring.
    """

    models: dict
    score_threshold: float
    min_area: int
    counted_labels: tuple[str, ...] | None
    cases: list[CaseScores]
    seconds: float = 0.0

    @property
    def overall(self) -> CaseScores:
        """Every lesion and slice of every case pooled (not a mean of the cases)."""
        pooled = CaseScores("overall")
        for case in self.cases:
            pooled.scores.dices += case.scores.dices
            pooled.scores.false_positives += case.scores.false_positives
            pooled.froc += case.froc
        return pooled

    @property
    def frames(self) -> int:
        return sum(case.froc.frames for case in self.cases)

    def rows(self) -> list[dict]:
        """Per case, then the overall row."""
        return [c.row(self.score_threshold) for c in [*self.cases, self.overall]]

    def curves(self) -> dict[str, dict]:
        """Per case and overall its FROC points (rounded) and where the curve ends."""
        out = {}
        for case in [*self.cases, self.overall]:
            curve = case.froc.curve()
            out[case.name] = {
                "thresholds": [_round(t) for t in curve.thresholds[1:]],
                "false_per_slice": [_round(x) for x in curve.false_per_slice[1:]],
                "sensitivity": [_round(x) for x in curve.sensitivity[1:]],
                "end": case.froc.end,
            }
        return out


def evaluate_bundle(
    cases: Mapping[str, Iterable[Frame]],
    model_dir: Path | None = None,
    *,
    classes: Sequence[str] | None = None,
    min_area: int = EVAL_MIN_AREA,
    device: str | None = None,
    log=print,
) -> Report:
    """Score the bundle in ``model_dir`` (default: the one in force) on ``cases``.

    Args:
        cases: case name -> its frames (read lazily, :data:`CHUNK` at a time), e.g.
            ``{part.name: part.frames() for part in split.val}``.
        classes: the dataset's lesion classes. Detector instances of the bundle's classes among
            them are scored; when the bundle and the dataset share no class name, every
            instance is (a new domain's names need not match).
        min_area: px.
        device: "cpu" or "cuda" (default: the settings').
        log: called with one line per case.

    Raises:
        ModelLoadError: ``model_dir`` is no bundle.
    """
    overrides = {"model_dir": model_dir, "backend": "torch"}
    if device is not None:
        overrides["device"] = device
    settings = effective_settings(Settings(**{k: v for k, v in overrides.items() if v}))
    bundle = bundle_in_force(settings)
    if bundle is None:
        raise ModelLoadError("no model bundle in force: give --model DIR")
    shared = tuple(c for c in bundle.classes if classes is None or c in classes)
    counted = shared or None
    floor = min(FLOOR, settings.score_threshold)
    engine, models = local_engine(settings, score_threshold=floor)
    report = Report(
        describe_models(settings, models.segmenter, models.detector),
        settings.score_threshold,
        min_area,
        counted,
        [],
    )
    started = time.perf_counter()
    for name, frames in cases.items():
        case, t0 = CaseScores(name), time.perf_counter()
        for chunk in _chunks(frames, CHUNK):
            images = [MedicalImage(f.image, f.spacing, source=f.name) for f in chunk]
            results = asyncio.run(engine.segment(images, Options(score_threshold=floor)))
            for frame, result in zip(chunk, results, strict=True):
                lesions = [x for x in result.lesions if counted is None or x.label in counted]
                masks = np.array([x.mask for x in lesions], bool).reshape(
                    -1, *frame.image.shape[:2]
                )  # (P, H, W)
                scores = np.array([x.score for x in lesions], np.float64)  # (P,)
                case.froc.add(masks, scores, frame.masks, min_area=min_area)
                kept = scores >= settings.score_threshold
                case.scores.add(masks[kept], frame.masks, prompted=False, min_area=min_area)
        # One rule for both records (lesionseg.measure.evaluation, .froc): they must agree.
        assert case.scores.false_positives == case.froc.false_masks(settings.score_threshold)
        assert len(case.scores.dices) == case.froc.lesions
        if case.froc.frames:
            report.cases.append(case)
            row = case.row(settings.score_threshold)
            log(
                f"{name}: {row['frames']} frames, {row['lesions']} lesions, lesion Dice "
                f"{row['lesion_dice']}, {time.perf_counter() - t0:.1f} s"
            )
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def _chunks(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    chunk: list[Frame] = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)
