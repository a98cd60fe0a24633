"""The openvino backend's accuracy guard: lesion Dice next to fp32 torch and onnxruntime.

The same LiTS validation lesions, prompted with their ground-truth boxes, segmented by the
served SAM (the shipped bundle's, from its ONNX export) in fp32 torch (the reference),
onnxruntime fp32 and openvino at the precision it picks here (bf16 where the CPU has it)
and at fp32. Lesion Dice by :class:`lesionseg.measure.evaluation.LesionScores` (through
:func:`benchmarks.accuracy.score`), lesions >= ``EVAL_MIN_AREA`` px as in training. The
backend passes when its Dice is within :data:`TOLERANCE` of torch's; ``make test`` runs the
same comparison on every second slice (``tests/test_openvino.py``).

    python -m benchmarks.openvino_accuracy     # writes results/openvino_accuracy_cpu.{csv,md}
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.accuracy import score
from benchmarks.common import RESULTS, provenance, write_rows
from lesionseg.datasets.lits import LitsCase, LitsSlice
from lesionseg.models.backends.onnx_runner import OnnxSamRunner, export_is_current
from lesionseg.models.backends.openvino_runner import OpenVinoSamRunner
from lesionseg.models.backends.torch_runner import TorchSamRunner
from lesionseg.models.sam import load_sam
from lesionseg.models.segmenter import Segmenter
from lesionseg.settings import Settings
from lesionseg.train.sam_train import EVAL_MIN_AREA, cached_embeddings

TOLERANCE = 0.01  # lesion Dice a backend may lose against fp32 torch and still be used


def gt_box_dice(segmenter: Segmenter, slices: list[LitsSlice], features=None) -> dict:
    """:func:`score` of ``segmenter`` with each lesion's ground-truth box; ``features``
    ((B, C, h, w), one per slice) skips the encoder."""
    embeddings = (
        segmenter.embed([sl.image for sl in slices])
        if features is None
        else [segmenter.wrap(f, sl.image.shape[:2]) for f, sl in zip(features, slices, strict=True)]
    )
    by_index = {sl.index: e for sl, e in zip(slices, embeddings, strict=True)}
    return score(
        slices,
        lambda sl: (segmenter.predict([by_index[sl.index]], [sl.boxes])[0].masks, True),
        EVAL_MIN_AREA,
    )


def compare(
    settings: Settings, slices: list[LitsSlice], exports: Path, *, openvino_fp32: bool = True
) -> list[dict]:
    """One row per runtime: torch fp32 (reference; embeddings from the content-addressed
    cache the training uses), onnxruntime fp32, openvino auto, and openvino fp32 when
    ``openvino_fp32`` and auto is not fp32. ``passes``: lesion Dice within TOLERANCE."""
    modules = load_sam(settings.sam_family, settings.sam_path, multimask=settings.multimask_output)
    features = cached_embeddings(
        modules, [sl.image for sl in slices], settings.cache_dir / "train"
    ).numpy()
    rows = [
        {"backend": "torch", "precision": "fp32"}
        | gt_box_dice(Segmenter(TorchSamRunner(modules)), slices, features)
    ]
    multimask = settings.multimask_output
    runners = [OnnxSamRunner(exports, multimask=multimask)]
    runners.append(OpenVinoSamRunner(exports, multimask=multimask, threads=settings.cpu_threads))
    if openvino_fp32 and runners[-1].precision != "fp32":
        runners.append(
            OpenVinoSamRunner(
                exports, multimask=multimask, precision="fp32", threads=settings.cpu_threads
            )
        )
    for runner in runners:
        backend = "onnxruntime" if isinstance(runner, OnnxSamRunner) else "openvino"
        precision = getattr(runner, "precision", "fp32")
        rows.append(
            {"backend": backend, "precision": precision} | gt_box_dice(Segmenter(runner), slices)
        )
    reference = rows[0]["lesion_dice"]
    for row in rows:
        row["vs_torch"] = round(row["lesion_dice"] - reference, 4)
        row["passes"] = abs(row["vs_torch"]) <= TOLERANCE
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=int, default=1, help="every step-th validation slice")
    parser.add_argument("--out", type=Path, default=RESULTS / "openvino_accuracy_cpu")
    args = parser.parse_args(argv)

    settings = Settings()
    if not export_is_current(settings.exports(), settings.export_key()):
        parser.error(f"no current export in {settings.exports()}: run `make export` first")
    slices = list(LitsCase(settings.cache_dir).slices("val", step=args.step))
    started = time.time()
    rows = compare(settings, slices, settings.exports())
    meta = provenance() | {"seconds": round(time.time() - started, 1), "step": args.step}
    write_rows(args.out.with_suffix(".csv"), [r | meta for r in rows])
    lines = [
        "# openvino accuracy guard (LiTS validation, ground-truth boxes)",
        "",
        f"| backend | precision | lesions | lesion Dice | vs fp32 torch | within {TOLERANCE} |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['backend']} | {r['precision']} | {r['lesions']} | {r['lesion_dice']} | "
            f"{r['vs_torch']:+.4f} | {'yes' if r['passes'] else 'NO'} |"
            for r in rows
        ),
        "",
        f"LiTS case 117 slices 100-127 (every {args.step}), the shipped bundle's SAM "
        f"({settings.bundle().name}) from its ONNX export, lesions >= {EVAL_MIN_AREA} px. "
        f"{meta['cpu']} x{meta['cpu_cores']} (flags: {meta['cpu_flags']}); commit "
        f"{meta['commit']}; {meta['date']}; torch {meta['v_torch']}, onnxruntime "
        f"{meta['v_onnxruntime']}, openvino {meta['v_openvino']}; {meta['seconds']} s.",
        "",
        "The guard in `make test` (tests/test_openvino.py) runs the same comparison on every "
        "second slice with the precision openvino picks on the machine it runs on.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
