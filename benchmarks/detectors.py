"""Detector cost: a YOLO bundle against a sam-head bundle, through the engine as the service
runs it (local models, ``engine.run`` on decoded uploads, the service's default backend unless
``--backend`` names another), in one run with the two interleaved round by round:

1. single image (``/segment``): each of N LiTS validation slices, decoded from PNG, alone;
   wall time per image and per engine stage (detect, embed, mask_decode);
2. a CT series (``/segment/dicom-seg``): the LiTS volume's consecutive axial slices as the
   DICOM files of one series (order from their positions), one call; seconds, slices/s,
   frames embedded (encoder passes) and boxes found.

Round 0 is warm-up and not counted; the bundle that goes first alternates between rounds. The
openvino and onnxruntime backends run the bundles' ONNX exports, made now when missing or
stale. Writes results/detectors_cpu.csv and .md with the verdicts against issue 24's targets.

    python -m benchmarks.detectors --sam-head DIR [--yolo DIR] [--rounds 3] [--slices 10]
    python -m benchmarks.detectors --head-of lesionseg/models/lits117  # its not-selected head
    python -m benchmarks.detectors --fixture   # an untrained head: cost only, boxes arbitrary
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import RESULTS, provenance
from benchmarks.detectors_report import Sample, write_report
from benchmarks.payloads import png_bytes
from benchmarks.trained_head import write_trained_head_bundle
from benchmarks.untrained_head import write_untrained_head_bundle
from lesionseg.datasets.examples import lits_ct
from lesionseg.datasets.lits import SPLITS, LitsCase
from lesionseg.export.onnx import ensure_onnx
from lesionseg.io.uploads import Upload, decode_upload
from lesionseg.models.bundle import SHIPPED_BUNDLE, Bundle
from lesionseg.models.bundle_settings import effective_settings
from lesionseg.pipeline.engine import LesionEngine
from lesionseg.pipeline.local import LocalModels, local_engine
from lesionseg.pipeline.prediction import Options
from lesionseg.settings import Settings

FIXTURE_HEAD = (
    "fixture: an untrained, seeded head (benchmarks.untrained_head); its box counts, "
    "and so its mask-decode work, are arbitrary"
)


@dataclass
class Contender:
    """One bundle's engine on local models, counting the frames its last run embedded and
    summing that run's stage times (the engine's ``on_stage`` hook: the values of its
    ``timings_ms``, once per stage call)."""

    role: str  # "yolo" or "sam-head"
    settings: Settings
    bundle: Bundle
    engine: LesionEngine
    models: LocalModels
    head: str  # where the head came from (sam-head only)
    embedded: int = 0
    stage_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        embed = self.engine.embed

        async def counted(images):
            self.embedded += len(images)
            return await embed(images)

        self.engine.embed = counted
        self.engine.on_stage = self._stage

    def _stage(self, stage: str, seconds: float) -> None:
        self.stage_s[stage] = self.stage_s.get(stage, 0.0) + seconds

    def describe(self) -> dict:
        """What is measured: bundle, fingerprint, detector, head, backend, precisions."""
        return {
            "bundle": self.bundle.name,
            "fingerprint": self.bundle.fingerprint,
            "detector_kind": self.settings.detector_kind,
            "detector_weights": Path(self.models.detector.weights).name,
            "head": self.head,
            "backend": self.settings.backend,
            "sam": self.models.segmenter.spec.name,
            "sam_precision": self.models.segmenter.runner.precision,
            "detector_precision": self.models.detector.runner.precision,
        }

    def decode(self, data: bytes) -> Upload:
        """Bytes -> an upload, as the service decodes them for this bundle (its window)."""
        return decode_upload(
            data,
            self.settings,
            default_window=self.settings.default_window,
            default_window_modality=self.settings.default_window_modality,
        )

    async def run(self, uploads: Sequence[Upload]) -> Sample:
        """One request's worth: the engine on ``uploads`` with default options."""
        self.embedded, self.stage_s = 0, {}
        start = time.perf_counter()
        prediction = await self.engine.run(uploads, Options())
        seconds = time.perf_counter() - start
        return Sample(
            seconds=seconds,
            frames=len(prediction.results),
            embedded=self.embedded,
            boxes=sum(len(r.lesions) for r in prediction.results),
            stage_ms={k: v * 1000 for k, v in self.stage_s.items()},
        )


def load_contender(role: str, directory: Path, backend: str, head: str = "") -> Contender:
    """The engine of the bundle in ``directory`` on ``backend`` (CPU), its export made first
    where the backend runs one.

    Raises:
        SystemExit: the bundle's detector is not ``role``.
    """
    settings = effective_settings(Settings(model_dir=directory, backend=backend, device="cpu"))
    if settings.detector_kind != role:
        raise SystemExit(
            f"{directory}: its detector is {settings.detector_kind!r}; --{role} takes a {role} "
            "bundle"
        )
    if backend in ("openvino", "onnxruntime"):
        ensure_onnx(settings, announce=print)
    engine, models = local_engine(settings)
    return Contender(role, settings, Bundle.load(directory), engine, models, head)


def series_indices(count: int) -> range:
    """``count`` consecutive axial slices from the middle of the LiTS volume (128 slices)."""
    total = len(SPLITS["all"])
    if not 1 <= count <= total:
        raise SystemExit(f"--series must be 1..{total} slices, got {count}")
    first = (total - count) // 2
    return range(first, first + count)


def val_indices(count: int) -> list[int]:
    """``count`` LiTS validation slices spread over the slab."""
    val = SPLITS["val"]
    if not 1 <= count <= len(val):
        raise SystemExit(f"--slices must be 1..{len(val)}, got {count}")
    return list(itertools.islice(val[:: max(1, len(val) // count)], count))


async def measure(
    contenders: list[Contender], singles: list[bytes], series: list[bytes], rounds: int
) -> dict[tuple[str, str], list[Sample]]:
    """Per (role, part) the samples of ``rounds`` counted rounds after one warm-up round."""
    inputs = {
        c.role: ([[c.decode(png)] for png in singles], [c.decode(f) for f in series])
        for c in contenders
    }
    samples: dict[tuple[str, str], list[Sample]] = {
        (c.role, part): [] for c in contenders for part in ("single", "series")
    }
    for round_ in range(rounds + 1):
        ordered = contenders if round_ % 2 == 0 else contenders[::-1]
        for i in range(len(singles)):
            for c in ordered:
                sample = await c.run(inputs[c.role][0][i])
                if round_:  # round 0 is warm-up
                    samples[(c.role, "single")].append(sample)
        for c in ordered:
            sample = await c.run(inputs[c.role][1])
            if round_:
                samples[(c.role, "series")].append(sample)
        print(f"round {round_}{' (warm-up)' if not round_ else ''} done")
    return samples


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yolo", type=Path, default=SHIPPED_BUNDLE, help="a YOLO bundle")
    head = parser.add_mutually_exclusive_group(required=True)
    head.add_argument("--sam-head", type=Path, help="a sam-head bundle (a trained head)")
    head.add_argument(
        "--head-of",
        type=Path,
        help="the SAM head a --detector auto bundle trained and did not select "
        "(benchmarks.trained_head), with its tuned threshold and margin",
    )
    head.add_argument(
        "--fixture", action="store_true", help="an untrained test head: cost only, not its boxes"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds after one warm-up")
    parser.add_argument("--slices", type=int, default=10, help="single images per round")
    parser.add_argument("--series", type=int, default=100, help="slices of the CT series")
    parser.add_argument(
        "--backend",
        choices=("openvino", "onnxruntime", "torch"),
        default=Settings().backend,
        help="default: the service's",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "detectors_cpu")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    base = provenance()  # at the start: the tree may change while it runs
    singles_at, series_at = val_indices(args.slices), series_indices(args.series)
    case = LitsCase(Settings().cache_dir)
    singles = [png_bytes(case.slice(i).image) for i in singles_at]
    series = lits_ct(case, series_at)
    with tempfile.TemporaryDirectory() as tmp:
        if args.fixture:
            head_dir, head = write_untrained_head_bundle(Path(tmp) / "sam-head"), FIXTURE_HEAD
        elif args.head_of:
            head_dir = write_trained_head_bundle(args.head_of, Path(tmp) / "sam-head")
            head = f"trained, not selected by {args.head_of} (benchmarks.trained_head)"
        else:
            head_dir, head = args.sam_head, f"the bundle's: {args.sam_head}"
        contenders = [
            load_contender("yolo", args.yolo, args.backend),
            load_contender("sam-head", head_dir, args.backend, head),
        ]
        start = time.perf_counter()
        samples = asyncio.run(measure(contenders, singles, series, args.rounds))
    setup = {
        "rounds": args.rounds,
        "single_slices": " ".join(map(str, singles_at)),
        "series_slices": f"{series_at.start}-{series_at.stop - 1}",
        "duration_s": round(time.perf_counter() - start, 1),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "fixture": args.fixture,
    }
    bundles = {c.role: c.describe() for c in contenders}
    return write_report(args.out, base, setup, bundles, samples)


if __name__ == "__main__":
    main()
