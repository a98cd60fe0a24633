"""The openvino backend's accuracy guard: lesion Dice next to fp32 torch and onnxruntime.

The same LiTS validation lesions, prompted with their ground-truth boxes, segmented by the
served SAM (the shipped bundle's, from its ONNX export) in fp32 torch (the reference),
onnxruntime fp32 and openvino at the precision it picks here (bf16 where the CPU has it)
and at fp32, by the guard of :mod:`lesionseg.export.accuracy` (lesions >= ``EVAL_MIN_AREA``
px as in training). The backend passes when its Dice is within ``TOLERANCE`` of torch's;
``make test`` runs the same comparison on every second slice (``tests/test_openvino.py``).

    python -m benchmarks.openvino_accuracy     # writes results/openvino_accuracy_cpu.{csv,md}
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import RESULTS, provenance, write_rows
from lesionseg.datasets.lits import LitsCase
from lesionseg.export.accuracy import TOLERANCE, compare
from lesionseg.measure.evaluation import EVAL_MIN_AREA
from lesionseg.models.backends.onnx_runner import export_is_current
from lesionseg.models.bundle_settings import (
    bundle_in_force,
    effective_settings,
    export_key,
    exports_dir,
)
from lesionseg.settings import Settings


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=int, default=1, help="every step-th validation slice")
    parser.add_argument("--out", type=Path, default=RESULTS / "openvino_accuracy_cpu")
    args = parser.parse_args(argv)

    settings = effective_settings(Settings())
    if not export_is_current(exports_dir(settings), export_key(settings)):
        parser.error(f"no current export in {exports_dir(settings)}: run `make export` first")
    slices = list(LitsCase(settings.cache_dir).slices("val", step=args.step))
    meta = provenance()  # taken at the start: the tree may change while it runs
    started = time.time()
    rows = compare(settings, slices, exports_dir(settings))
    meta |= {"seconds": round(time.time() - started, 1), "step": args.step}
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
        f"({bundle_in_force(settings).name}) from its ONNX export, lesions >= {EVAL_MIN_AREA} px. "
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
