"""SAM latency: torch vs onnxruntime vs openvino (fp32, and bf16 where the CPU has it; int8
when the export kept it), side by side: the image encoder per image at each batch size, and
the mask decoder per call with 1 and 4 boxes on one image.

Configurations are interleaved round by round, so machine noise hits all of them alike; the
first round is warm-up and not counted. Writes results/encoder_<device>.csv and .md.

    python -m benchmarks.encoder_latency [--rounds 6] [--batches 1 4] [--boxes 1 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, percentiles, provenance, write_rows
from lesionseg.datasets.lits import LitsCase
from lesionseg.models.bundle_settings import effective_settings, exports_dir
from lesionseg.models.segmenter import Segmenter
from lesionseg.settings import Settings


def segmenters(settings: Settings) -> dict[str, Segmenter]:
    out = {
        "torch-fp32": Segmenter.from_settings(settings.model_copy(update={"backend": "torch"})),
        "onnxruntime-fp32": Segmenter.from_settings(
            settings.model_copy(update={"backend": "onnxruntime"})
        ),
    }
    openvino = {  # auto: bf16 where the CPU has it
        p: Segmenter.from_settings(
            settings.model_copy(update={"backend": "openvino", "precision": p})
        )
        for p in ("fp32", "auto")
    }
    out["openvino-fp32"] = openvino["fp32"]
    if (chosen := openvino["auto"].runner.precision) != "fp32":
        out[f"openvino-{chosen}"] = openvino["auto"]
    int8 = exports_dir(settings) / "sam_encoder.int8.onnx"
    if int8.is_file():  # only present when the export kept it (Dice within 0.01)
        from lesionseg.models.backends.onnx_runner import OnnxSamRunner

        out["onnxruntime-int8"] = Segmenter(
            OnnxSamRunner(exports_dir(settings), encoder_file=int8.name)
        )
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds after one warm-up")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 4], help="decoder")
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_cpu")
    args = parser.parse_args(argv)
    base = provenance()  # at the start: the tree may change while it runs

    settings = effective_settings(Settings(device="cpu"))
    case = LitsCase(settings.cache_dir)
    images = [s.image for s in case.slices("val", step=7)]  # 4 real slices
    runners = segmenters(settings)
    # The decoder's inputs: a real embedding and 1..4 real lesion boxes (repeated if fewer).
    sl = next(s for s in case.slices("val") if len(s.boxes) >= 2)
    embedding = runners["torch-fp32"].embed([sl.image])[0]
    stages = [("encoder", b) for b in args.batches] + [("decoder", n) for n in args.boxes]
    samples: dict[tuple[str, str, int], list[float]] = {
        (stage, name, n): [] for stage, n in stages for name in runners
    }
    for round_ in range(args.rounds + 1):
        for stage, n in stages:
            for name, seg in runners.items():
                start = time.perf_counter()
                if stage == "encoder":
                    seg.embed([images[(round_ + i) % len(images)] for i in range(n)])
                else:
                    seg.predict([embedding], [np.resize(sl.boxes, (n, 4))])
                ms = (time.perf_counter() - start) * 1000 / (n if stage == "encoder" else 1)
                if round_:  # round 0 is warm-up
                    samples[(stage, name, n)].append(ms)
    rows = []
    for (stage, name, n), values in samples.items():
        backend, precision = name.split("-")
        p = percentiles(values)
        rows.append(
            {
                **base,
                "model": runners[name].spec.name,
                "stage": stage,
                "backend": backend,
                "precision": precision,
                "device": "cpu",
                "batch": n,  # encoder: images; decoder: boxes on one image
                "rounds": len(values),
                **p,
                "calls_per_s": round(1000 / float(np.mean(values)), 3),
            }
        )
    write_rows(args.out.with_suffix(".csv"), rows)
    torch_p50 = {(r["stage"], r["batch"]): r["p50_ms"] for r in rows if r["backend"] == "torch"}
    lines = [
        f"# SAM latency ({rows[0]['model']}, CPU)",
        "",
        f"{base['cpu']}, {base['cpu_cores']} cores (flags: {base['cpu_flags']}); commit "
        f"{base['commit']}; {base['date']}; torch {base['v_torch']}, onnxruntime "
        f"{base['v_onnxruntime']}, openvino {base['v_openvino']}; load average "
        f"{base['load_avg_1m']} at the end (shared machine). {args.rounds} interleaved "
        "rounds after one warm-up. Encoder: ms per image (batch = images per call); decoder: "
        "ms per call of `Segmenter.predict` on one image (batch = boxes), logits to masks "
        "included.",
        "",
        "| stage | backend | precision | batch | p50 ms | p95 | p99 | per s | vs torch (p50) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = torch_p50[(r["stage"], r["batch"])] / r["p50_ms"]
        lines.append(
            f"| {r['stage']} | {r['backend']} | {r['precision']} | {r['batch']} | "
            f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['calls_per_s']} | "
            f"{ratio:.2f}x |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
