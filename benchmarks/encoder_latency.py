"""SAM image-encoder latency: torch vs onnxruntime (vs int8 when kept), side by side.

Configurations are interleaved round by round, so machine noise hits all of them alike; the
first round is warm-up and not counted. Writes results/encoder_<device>.csv and .md.

    python -m benchmarks.encoder_latency [--rounds 6] [--batches 1 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lesionseg.data import LitsCase
from lesionseg.segmenter import Segmenter
from lesionseg.settings import Settings

from .common import RESULTS, percentiles, provenance, write_rows


def segmenters(settings: Settings) -> dict[str, Segmenter]:
    out = {
        "torch-fp32": Segmenter.from_settings(settings.model_copy(update={"backend": "torch"})),
        "onnxruntime-fp32": Segmenter.from_settings(
            settings.model_copy(update={"backend": "onnxruntime"})
        ),
    }
    int8 = settings.exports() / "sam_encoder.int8.onnx"
    if int8.is_file():  # only present when the export kept it (Dice within 0.01)
        from lesionseg.backends.onnx_runner import OnnxSamRunner

        out["onnxruntime-int8"] = Segmenter(
            OnnxSamRunner(settings.exports(), encoder_file=int8.name)
        )
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds after one warm-up")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_cpu")
    args = parser.parse_args(argv)

    settings = Settings(device="cpu")
    case = LitsCase(settings.cache_dir)
    images = [s.image for s in case.slices("val", step=7)]  # 4 real slices
    runners = segmenters(settings)
    samples: dict[tuple[str, int], list[float]] = {
        (n, b): [] for n in runners for b in args.batches
    }
    for round_ in range(args.rounds + 1):
        for batch in args.batches:
            for name, seg in runners.items():
                batch_images = [images[(round_ + i) % len(images)] for i in range(batch)]
                start = time.perf_counter()
                seg.embed(batch_images)
                ms_per_image = (time.perf_counter() - start) * 1000 / batch
                if round_:  # round 0 is warm-up
                    samples[(name, batch)].append(ms_per_image)
    base = provenance()
    rows = []
    for (name, batch), values in samples.items():
        backend, precision = name.split("-")
        p = percentiles(values)
        rows.append(
            {
                **base,
                "model": runners[name].spec.name,
                "backend": backend,
                "precision": precision,
                "device": "cpu",
                "batch": batch,
                "rounds": len(values),
                **p,
                "images_per_s": round(1000 / float(np.mean(values)), 3),
            }
        )
    write_rows(args.out.with_suffix(".csv"), rows)
    torch_p50 = {r["batch"]: r["p50_ms"] for r in rows if r["backend"] == "torch"}
    lines = [
        f"# SAM encoder latency ({rows[0]['model']}, CPU)",
        "",
        f"{base['cpu']}, {base['cpu_cores']} cores; commit {base['commit']}; {base['date']}; "
        f"torch {base['v_torch']}, onnxruntime {base['v_onnxruntime']}. "
        f"{args.rounds} interleaved rounds after one warm-up; ms per image.",
        "",
        "| backend | precision | batch | p50 ms/img | p95 | p99 | img/s | vs torch (p50) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = torch_p50[r["batch"]] / r["p50_ms"]
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['p50_ms']} | "
            f"{r['p95_ms']} | {r['p99_ms']} | {r['images_per_s']} | {ratio:.2f}x |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
