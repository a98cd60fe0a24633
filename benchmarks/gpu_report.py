"""The GPU benchmark's device record and report."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

COLUMNS = (
    "section",
    "engine",
    "status",
    "device",
    "precision",
    "measure",
    "batch",
    "users",
    "iters",
    "requests",
    "failures",
    "p50_ms",
    "p95_ms",
    "ms_per_img",
    "img_per_s",
    "ok_per_s",
    "first_call_s",
    "notes",
)


def driver_version() -> str:
    """The NVIDIA driver's version (kernel module, else nvidia-smi), or ''."""
    proc = Path("/proc/driver/nvidia/version")
    if proc.is_file():
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d[\d.]*)", proc.read_text())
        if found:
            return found.group(1)
    if shutil.which("nvidia-smi"):
        cmd = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        return out.strip().splitlines()[0] if out.strip() else ""
    return ""


def device_info() -> dict:
    """The CUDA device torch sees (name, capability, memory, driver, CUDA, cuDNN), or why none."""
    import torch

    info = {
        "gpu": "",
        "gpu_capability": "",
        "gpu_memory_gib": None,
        "driver": "",
        "cuda": torch.version.cuda or "",
        "cudnn": "",
        "why_no_gpu": "",
    }
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        info["why_no_gpu"] = f"torch {torch.__version__} ({build}) sees no CUDA device"
        return info
    props = torch.cuda.get_device_properties(0)
    info |= {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "driver": driver_version(),
        "cudnn": str(torch.backends.cudnn.version()),
    }
    return info


def report(rows: list[dict], base: dict, out: Path, not_run: list[str]) -> str:
    """Write ``out``.md; return it. ``not_run``: what the run planned and has not measured
    yet (each file written before the end says so: a run stopped there is incomplete)."""
    versions = ", ".join(f"{k[2:]} {v}" for k, v in base.items() if k.startswith("v_"))
    if base["gpu"]:
        device = (
            f"**{base['gpu']}** (compute capability {base['gpu_capability']}, "
            f"{base['gpu_memory_gib']} GiB), driver {base['driver'] or 'unknown'}, CUDA "
            f"{base['cuda']}, cuDNN {base['cudnn']}"
        )
    else:
        device = f"no GPU: {base['why_no_gpu']}"
    lines = [
        "# GPU benchmark"
        + (" — DRY RUN on CPU, not GPU figures" if base["dry_run"] else "")
        + (" — INCOMPLETE" if not_run else ""),
        "",
        *(
            [
                f"**Incomplete**: the run ended before {len(not_run)} planned part(s) ran (a "
                "time limit, a crash); they are listed under *Not run*. What follows is what "
                "it measured before.",
                "",
            ]
            if not_run
            else []
        ),
        f"{device}; CPU {base['cpu']}, {base['cpu_cores']} cores; commit {base['commit']}; "
        f"{base['date']}; {versions}.",
        "",
        "## SAM encoder (README example; `encode` with host<->device copies, after warm-up calls)",
        "",
        "| engine | precision | batch | p50 ms/batch | ms/img | img/s | vs torch-fp32 | first "
        "call s | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ok = [r for r in rows if r["status"] == "ok"]
    reference = {
        r["batch"]: r["ms_per_img"]
        for r in ok
        if r["section"] == "encoder" and r["engine"] == "torch-fp32"
    }
    for r in ok:
        if r["section"] != "encoder":
            continue
        ref = reference.get(r["batch"])
        ratio = f"{ref / r['ms_per_img']:.2f}x" if ref and r["ms_per_img"] else "n/a"
        lines.append(
            f"| {r['engine']} | {r['precision']} | {r['batch']} | {r['p50_ms']} | "
            f"{r['ms_per_img']} | {r['img_per_s']} | {ratio} | {r['first_call_s']} | "
            f"{r['notes'] or ''} |"
        )
    lines += [
        "",
        "## HTTP load (`benchmarks.load` against `bentoml serve`, LESIONSEG_DEVICE=cuda)",
        "",
        "| server | measure | users | requests | failures | p50 ms | p95 ms | ok req/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ok:
        if r["section"] == "http":
            lines.append(
                f"| {r['engine']} | {r['measure']} | {r['users']} | {r['requests']} | "
                f"{r['failures']} | {r['p50_ms']} | {r['p95_ms']} | {r['ok_per_s'] or ''} |"
            )
    lines += ["", "## Not measured", ""]
    skipped = [
        f"- {r['section']} {r['engine']}: {r['status']}" for r in rows if r["status"] != "ok"
    ]
    if not_run:
        lines += skipped or ["- nothing skipped or failed among the parts that ran"]
        lines += ["", "## Not run (the run ended before them)", ""]
        lines += [f"- {part}" for part in not_run]
    else:
        lines += skipped or ["- nothing: every engine and server ran"]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    return text
