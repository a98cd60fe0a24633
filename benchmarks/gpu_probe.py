"""Why the SAM encoder is slower per image at batch 8 than at 4 on a GPU (results/gpu.md).

A follow-up of ``benchmarks.gpu`` for one short device call. For torch fp32 and bf16 (eager),
per batch size 1-12, 16 and 32, it separates:

- ``forward_ms``: the encoder alone on a tensor already on the GPU (CUDA events, median);
- ``copy_batch_ms``: the (B, 256, 64, 64) fp32 embedding back to the host as one array (what
  the runner did before this probe), ``copy_per_image_ms``: as B per-image arrays (what it does
  since);
- ``encode_ms``: the runner's ``encode`` as the service calls it (both copies included);
- ``chunked4_ms``: the same batch as ``encode`` calls of at most 4 images, back to back;

each with ``cudnn.benchmark`` off (the default) and on; then the 8 costliest CUDA kernels of
one bf16 forward at batch 4 and at batch 8 (torch.profiler), to name where the extra time goes.
Writes results/gpu_probe.{csv,md}.

    python -m benchmarks.gpu_probe [--iters 20] [--out benchmarks/results/gpu_probe]
    python -m benchmarks.gpu_probe --dry-run   # CPU, batch 1-2, no profiler: checks it starts
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, provenance, write_rows
from benchmarks.gpu_report import device_info
from lesionseg.models.bundle_settings import effective_settings
from lesionseg.settings import Settings

BATCHES = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32]


def median_ms(fn, iters: int, cuda: bool) -> float:
    """Median wall time of ``fn()`` in ms over ``iters`` calls (after 2 untimed ones)."""
    import torch

    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 3)


def probe(runner, one: np.ndarray, batches: list[int], iters: int, cuda: bool):
    """One row per batch size, in ms: the forward alone, the embedding's copy to the host as one
    (B, C, h, w) array and as B per-image arrays, the runner's whole ``encode``, and ``encode``
    in chunks of at most 4 images."""
    import torch

    for batch in batches:
        x = np.repeat(one[None], batch, axis=0)  # (B, 3, S, S)
        chunks = [x[i : i + 4] for i in range(0, batch, 4)]
        with torch.inference_mode():
            gpu_x = runner._tensor(x)
            out = runner.encoder(gpu_x).float()
            forward = median_ms(lambda g=gpu_x: runner.encoder(g), iters, cuda)
            copy_batch = median_ms(lambda o=out: o.cpu().numpy(), iters, cuda)
            copy_each = median_ms(lambda o=out: [i.cpu().numpy() for i in o], iters, cuda)
        encode = median_ms(lambda x=x: runner.encode(x), iters, cuda)
        chunked = median_ms(lambda c=chunks: [runner.encode(i) for i in c], iters, cuda)
        yield {
            "batch": batch,
            "forward_ms": forward,
            "copy_batch_ms": copy_batch,
            "copy_per_image_ms": copy_each,
            "encode_ms": encode,
            "chunked4_ms": chunked,
            "encode_ms_per_img": round(encode / batch, 3),
            "chunked4_ms_per_img": round(chunked / batch, 3),
        }


def top_kernels(runner, one: np.ndarray, batch: int, n: int = 8) -> list[dict]:
    """The ``n`` CUDA kernels with the most total time in one forward at ``batch``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    x = runner._tensor(np.repeat(one[None], batch, axis=0))
    with torch.inference_mode():
        for _ in range(3):
            runner.encoder(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner.encoder(x)
            torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
    return [
        {
            "batch": batch,
            "kernel": e.key[:90],
            "calls": e.count,
            "total_us": round(e.device_time_total, 1),
        }
        for e in events[:n]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_probe")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from lesionseg.models.segmenter import Segmenter
    from lesionseg.transforms import preprocess

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: nothing to probe (--dry-run checks the code on the CPU)")
        return 2
    device = "cuda" if cuda else "cpu"
    batches = [1, 2] if args.dry_run else BATCHES
    image = np.asarray(Image.open("data/examples/lits117-z110.png").convert("RGB"))
    base = provenance() | device_info()
    rows, kernels = [], []
    for precision in ["fp32"] if args.dry_run else ["fp32", "bf16"]:
        settings = Settings(backend="torch", device=device, precision=precision)
        runner = Segmenter.from_settings(effective_settings(settings)).runner
        one = preprocess(image, runner.spec.image_size, runner.spec.normalisation)
        for bench in [False] if args.dry_run else [False, True]:
            torch.backends.cudnn.benchmark = bench
            for row in probe(runner, one, batches, args.iters, cuda):
                row = {"precision": precision, "cudnn_benchmark": bench, **row}
                print(row, flush=True)
                rows.append(base | row)
                write_rows(args.out.with_suffix(".csv"), rows)
        torch.backends.cudnn.benchmark = False
        if cuda and precision == "bf16":
            kernels = top_kernels(runner, one, 4) + top_kernels(runner, one, 8)
    args.out.with_suffix(".md").write_text(report(rows, kernels, base))
    print(args.out.with_suffix(".md").read_text())
    return 0


def report(rows: list[dict], kernels: list[dict], base: dict) -> str:
    cols = [
        "precision",
        "cudnn_benchmark",
        "batch",
        "forward_ms",
        "copy_batch_ms",
        "copy_per_image_ms",
        "encode_ms",
        "chunked4_ms",
        "encode_ms_per_img",
        "chunked4_ms_per_img",
    ]
    lines = [
        "# GPU probe: the SAM encoder's batch-size cliff",
        "",
        f"**{base.get('gpu') or 'no GPU'}**, driver {base.get('driver')}, CUDA {base.get('cuda')}, "
        f"cuDNN {base.get('cudnn')}; commit {base['commit']}; {base['date']}; torch "
        f"{base.get('v_torch')}. Medians of the timed calls, ms.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    if kernels:
        lines += ["", "## Costliest CUDA kernels of one bf16 forward", ""]
        lines += ["| batch | kernel | calls | total us |", "|---|---|---|---|"]
        lines += [
            f"| {k['batch']} | `{k['kernel']}` | {k['calls']} | {k['total_us']} |" for k in kernels
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
