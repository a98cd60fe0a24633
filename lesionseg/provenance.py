"""Where a number was measured: commit, versions and hardware, for records and benchmarks."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

# The checkout lesionseg runs from, when it runs from one (an installed wheel has no .git).
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def git_state() -> dict:
    """The repository's HEAD and whether tracked files differ from it, as
    ``{"git_commit": "<12 hex>", "git_dirty": bool}``; both None outside a git checkout (an
    installed wheel). Take it when a run starts: the tree may change while it runs."""
    if not (SOURCE_ROOT / ".git").exists():  # site-packages may sit inside another repository
        return {"git_commit": None, "git_dirty": None}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD")
    if not head:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": head, "git_dirty": bool(git("status", "--porcelain", "-uno"))}


def git_commit() -> str | None:
    """HEAD of the repository (with ``-dirty`` when the tree has changes), or None."""
    state = git_state()
    if state["git_commit"] is None:
        return None
    return state["git_commit"] + ("-dirty" if state["git_dirty"] else "")


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else platform's guess."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# /proc/cpuinfo flags that decide which kernels the CPU runtimes pick (bf16/int8/fp16 paths).
SPEED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_flags() -> str:
    """The :data:`SPEED_FLAGS` this CPU has, space-separated (Linux; empty elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return ""
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return " ".join(f for f in SPEED_FLAGS if f in present)
    return ""


def hardware() -> dict:
    """CPU model and core count, and the CUDA device when torch sees one."""
    import os

    import torch

    info = {"cpu": cpu_name(), "cpu_cores": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions(*packages: str) -> dict:
    """Python and the named packages' versions."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
