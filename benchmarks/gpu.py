"""GPU benchmark: SAM encoder batch sweep per runtime, and HTTP load on a CUDA server.

Encoder (the served SAM, on the README example): ms per image and images/s at batch 1-32 for
PyTorch fp32, bf16 and bf16 + ``torch.compile``, ONNX Runtime's CUDAExecutionProvider and the
TensorRT engines of ``make engines``. Timed is the runner's ``encode`` as the service calls it
(host to device and back included, CPU preprocessing not). HTTP: `bentoml serve` with
``LESIONSEG_DEVICE=cuda`` per GPU backend, measured by ``benchmarks.load`` at 8/32/64
closed-loop users. Every engine or section that cannot run here (no CUDA, no tensorrt or
onnxruntime-gpu package, no export, no bentoml) is recorded as skipped with the reason, never
replaced by another. Writes results/gpu.csv and .md, naming the device, driver and CUDA.

    python -m benchmarks.gpu [--batches 1 2 4 8 16 32] [--iters 20] [--users 8 32 64]
    python -m benchmarks.gpu --dry-run   # the same code on CPU: torch fp32, batch 1-2, no HTTP

The files are rewritten after each engine and section, so a run stopped part-way (a time limit,
a crash in a later section) keeps what it measured, and its markdown says INCOMPLETE and lists
what had not run (each file written before the last says so); ``--skip-http REASON`` records the
HTTP section as skipped with that reason (benchmarks/gpu_device.sh: a machine without its
packages).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, percentiles, provenance, write_rows
from benchmarks.gpu_report import COLUMNS, device_info, report
from lesionseg.errors import ModelLoadError
from lesionseg.models.bundle_settings import effective_settings
from lesionseg.settings import Settings

# name -> (Settings fields, torch.compile the encoder)
ENGINES: dict[str, tuple[dict, bool]] = {
    "torch-fp32": ({"backend": "torch", "precision": "fp32"}, False),
    "torch-bf16": ({"backend": "torch", "precision": "bf16"}, False),
    "torch-bf16-compile": ({"backend": "torch", "precision": "bf16"}, True),
    "onnxruntime-cuda": ({"backend": "onnxruntime"}, False),
    "tensorrt": ({"backend": "tensorrt"}, False),
}
# The HTTP section's servers (added to the environment of `bentoml serve`).
SERVERS: dict[str, dict[str, str]] = {
    "torch-cuda-bf16": {"LESIONSEG_BACKEND": "torch", "LESIONSEG_PRECISION": "bf16"},
    "onnxruntime-cuda": {"LESIONSEG_BACKEND": "onnxruntime"},
    "tensorrt": {"LESIONSEG_BACKEND": "tensorrt"},
}
SERVER_ENV = {
    "LESIONSEG_DEVICE": "cuda",
    "LESIONSEG_MAX_BATCH_SIZE": "32",  # the engines' profile too: build them with this setting
    "LESIONSEG_MAX_PENDING_REQUESTS": "256",  # 64 users must queue, not be turned away
}


class SkippedError(Exception):
    """An engine or section that cannot run here; the message says why."""


def load_runner(settings: Settings, compile_encoder: bool):
    """The SAM runner of ``settings``; raises :class:`SkippedError` when it cannot run here."""
    from lesionseg.models.segmenter import Segmenter

    if settings.backend == "onnxruntime" and settings.device == "cuda":
        # Before the export is looked for: without the provider, no export would help.
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SkippedError(
                f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (available: "
                f"{ort.get_available_providers()}): needs onnxruntime-gpu"
            )
    try:
        runner = Segmenter.from_settings(settings).runner
    except ModelLoadError as exc:
        raise SkippedError(str(exc)) from exc
    if settings.backend == "onnxruntime":  # ORT falls back to CPU when CUDA fails to load
        providers = runner.encoder.get_providers()
        if settings.device == "cuda" and providers[0] != "CUDAExecutionProvider":
            raise SkippedError(
                f"the CUDAExecutionProvider did not load (session runs on {providers})"
            )
    if compile_encoder:
        import torch

        runner.encoder = torch.compile(runner.encoder, dynamic=False)
    return runner


def sweep(runner, image: np.ndarray, batches: list[int], iters: int, warmup: int):
    """Time ``runner.encode`` per batch size: ``warmup`` calls (compilation, autotuning; the
    first one's time is kept), then ``iters`` timed ones. Yields one row per batch size."""
    from lesionseg.transforms import preprocess

    one = preprocess(image, runner.spec.image_size, runner.spec.normalisation)  # (3, S, S)
    for batch in batches:
        x = np.repeat(one[None], batch, axis=0)  # (B, 3, S, S)
        start = time.perf_counter()
        runner.encode(x)
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            runner.encode(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            runner.encode(x)
            times.append((time.perf_counter() - start) * 1000)
        p = percentiles(times)
        yield {
            "batch": batch,
            "iters": iters,
            "p50_ms": p["p50_ms"],
            "p95_ms": p["p95_ms"],
            "ms_per_img": round(p["p50_ms"] / batch, 3),
            "img_per_s": round(batch * 1000 / float(np.mean(times)), 2),
            "first_call_s": round(first, 2),
        }


def encoder_section(args, image: np.ndarray):
    """The sweep of each engine; yields each row as soon as it is measured. A dry run
    times torch fp32 on the CPU and only loads the others for CUDA, so each is skipped with the
    reason it would be on this machine."""
    for name in args.engines:
        fields, compile_encoder = ENGINES[name]
        device = "cpu" if args.dry_run and name == "torch-fp32" else "cuda"
        head = {"section": "encoder", "engine": name, "device": device}
        try:
            runner = load_runner(
                effective_settings(Settings(device=device, **fields)), compile_encoder
            )
            if args.dry_run and device == "cuda":
                raise SkippedError("--dry-run times torch fp32 on the CPU only (this one loads)")
        except SkippedError as exc:
            print(f"{name}: skipped: {exc}", flush=True)
            yield {**head, "status": f"skipped: {exc}"}
            continue
        head["precision"], head["notes"] = fields.get("precision", "fp32"), ""
        if name == "tensorrt":  # batches larger than the profile's run in chunks
            head["precision"] = runner.encoder.sidecar["precision"]
            head["notes"] = f"engine profile max batch {runner.max_batch}"
        try:
            for row in sweep(runner, image, args.batches, args.iters, args.warmup):
                print(name, row, flush=True)
                yield {**head, "status": "ok", **row}
        except Exception as exc:
            # An engine that breaks mid-sweep (a compiler error, out of memory at a large
            # batch) must not lose the other engines' figures: recorded as failed, with why.
            print(f"{name}: failed: {exc!r}", flush=True)
            yield {**head, "status": f"failed: {type(exc).__name__}: {str(exc)[:300]}"}
        del runner
        release_memory()


def release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def http_section(args) -> list[dict]:
    head = {"section": "http"}
    missing = [p for p in ("bentoml", "locust") if find_spec(p) is None]
    if args.skip_http:
        reason = args.skip_http
    elif args.dry_run:
        reason = (
            "--dry-run (tests/service/test_serve.py runs the load benchmark's code on a server)"
        )
    elif missing:
        reason = f"{' and '.join(missing)} not installed"
    else:
        reason = None
    if reason:
        return [{**head, "engine": name, "status": f"skipped: {reason}"} for name in args.servers]
    from benchmarks.load import measure

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.servers:
            env = {**SERVER_ENV, **SERVERS[name]}
            for r in measure(name, env, args.users, args.seconds, args.repeats, Path(work)):
                rows.append(
                    {
                        **head,
                        "engine": name,
                        "device": "cuda",
                        **{k: r[k] for k in ("status", "users", "requests", "failures")},
                        **{k: r[k] for k in ("p50_ms", "p95_ms", "ok_per_s", "notes")},
                        "measure": r.get("measure"),
                    }
                )
    return rows


def not_run(args, rows: list[dict]) -> list[str]:
    """What ``args`` plan that ``rows`` do not hold yet: each engine's batch sizes not swept
    (an engine skipped or failed is reported with its reason instead), each server not
    measured."""
    left = []
    for name in args.engines:
        done = [r for r in rows if r["section"] == "encoder" and r["engine"] == name]
        if any(r["status"] != "ok" for r in done):
            continue
        batches = [b for b in args.batches if b not in {r["batch"] for r in done}]
        if batches:
            left.append(f"encoder {name}: batch {', '.join(map(str, batches))}")
    measured = {r["engine"] for r in rows if r["section"] == "http"}
    return left + [f"http {name}" for name in args.servers if name not in measured]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--iters", type=int, default=20, help="timed calls per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per batch size")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--users", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--seconds", type=int, default=20, help="Locust run per level")
    parser.add_argument("--repeats", type=int, default=20, help="single-user requests")
    parser.add_argument("--skip-http", metavar="REASON", help="record HTTP as skipped: REASON")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, temp dir")
    parser.add_argument("--out", type=Path, help="default results/gpu (dry run: a temp dir)")
    args = parser.parse_args(argv)
    device = device_info()
    if args.dry_run:
        args.batches = [b for b in args.batches if b <= 2] or [1]
        args.iters, args.warmup = 1, 1
        args.out = args.out or Path(tempfile.mkdtemp(prefix="bench-gpu-")) / "gpu"
    elif not device["gpu"]:
        print(
            f"no CUDA device ({device['why_no_gpu']}): nothing to measure; --dry-run checks "
            "the script on CPU",
            file=sys.stderr,
        )
        return 2
    out = args.out or RESULTS / "gpu"

    from benchmarks.payloads import read_example

    base = provenance() | device | {"dry_run": args.dry_run}
    rows: list[dict] = []

    def save(new: list[dict]) -> None:
        """Add ``new`` rows and rewrite both files (a run stopped later keeps these)."""
        assert all(set(r) <= set(COLUMNS) for r in new)
        rows.extend(base | {c: None for c in COLUMNS} | r for r in new)
        write_rows(out.with_suffix(".csv"), rows)
        report(rows, base, out, not_run(args, rows))

    for row in encoder_section(args, read_example()):
        save([row])
    save(http_section(args))
    assert not not_run(args, rows), not_run(args, rows)
    print(report(rows, base, out, []))
    print(f"written: {out.with_suffix('.csv')}, {out.with_suffix('.md')}")
    return 1 if any(str(r["status"]).startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
