"""Shared benchmark helpers: percentiles and result files with provenance."""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import numpy as np

from lesionseg.provenance import cpu_flags, git_commit, hardware, versions

RESULTS = Path(__file__).resolve().parent / "results"


def provenance() -> dict:
    """Columns every result row carries: when, which commit, which versions, which machine."""
    hw = hardware()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "cpu": hw["cpu"],
        "cpu_cores": hw["cpu_cores"],
        "cpu_flags": cpu_flags(),
        # The machine is shared: runs of other jobs at the same time show here.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "gpu": hw.get("gpu", ""),
        **{f"v_{k}": v for k, v in versions("torch", "onnxruntime", "openvino", "bentoml").items()},
    }


def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms)
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)}


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write rows as CSV (one row per configuration)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
