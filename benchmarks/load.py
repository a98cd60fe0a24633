"""Load benchmark: the naive baseline, the default and the fastest configuration in one run.

One `bentoml serve` per configuration (:data:`CONFIGS`), one after another on this machine. For
each: single-user ``/segment`` latency on fresh copies of the README example (no cache can answer
them), the re-prompt latency (``/segment/boxes`` on that example, already seen, with the boxes
``/segment`` returned), then Locust (``locustfile.py``) with 1/2/4/8 closed-loop users for a
bounded time per level. Per level: requests, failures, p50/p95/p99, successful requests/s, the
batch sizes BentoML formed, the mean time per pipeline stage and the embedding-cache counters
(from /metrics). Writes results/load_cpu.csv, .md (with issue 13's targets table) and .png.

    python -m benchmarks.load [--configs naive default fastest] [--users 1 2 4 8] [--seconds 20]
    python -m benchmarks.load --url http://host:3000   # a server that is already running
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import httpx
import numpy as np
from pydantic import ValidationError

from benchmarks.common import RESULTS, provenance, write_rows
from benchmarks.load_report import COLUMNS, STAGES, report
from benchmarks.payloads import EXAMPLE, fresh_png, png_bytes, read_example
from lesionseg.settings import Settings, unknown_variables
from service.launcher import REPO_ROOT, running_server

# The configurations compared; env is added to this process's environment for the server.
CONFIGS: dict[str, dict[str, str]] = {
    "naive": {
        "LESIONSEG_BACKEND": "torch",
        "LESIONSEG_PRECISION": "fp32",
        "LESIONSEG_MAX_BATCH_SIZE": "1",
        "LESIONSEG_EMBEDDING_CACHE_MB": "0",
    },
    "default": {},
    "fastest": {"LESIONSEG_BACKEND": "openvino", "LESIONSEG_MAX_BATCH_SIZE": "1"},
}
ABOUT = {
    "naive": "torch eager fp32, adaptive batching off, no embedding cache",
    "default": "the service's defaults",
    "fastest": "OpenVINO (bf16 where the CPU has it), adaptive batching off",
    "url": "a server already running (--url), its settings unknown here",
}
BACKEND_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
TIMEOUT_S = 600


def setting_name(variable: str) -> str:
    return variable.removeprefix("LESIONSEG_").lower()


def unavailable(env: dict[str, str]) -> str | None:
    """Why this version of the service cannot run ``env`` (None when it can): a setting value
    it rejects, or the runtime package of the backend missing."""
    known = {setting_name(k): v for k, v in env.items() if setting_name(k) in Settings.model_fields}
    try:
        settings = Settings(**known)
    except ValidationError as exc:
        error = exc.errors()[0]
        return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
    package = BACKEND_PACKAGES.get(settings.backend)
    if package and find_spec(package) is None:
        return f"backend {settings.backend} needs the {package} package, not installed"
    return None


def unknown_settings(env: dict[str, str]) -> list[str]:
    """Variables of ``env`` this version's Settings has no field for: left out of the server's
    environment (its start would refuse them, lesionseg.settings.check_environment)."""
    return unknown_variables(env)


def scrape(url: str) -> dict[str, float]:
    """Cumulative counters of interest from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for method in ("detect", "embed"):
        for kind in ("sum", "count"):
            name = f"bentoml_service_adaptive_batch_size_{kind}"
            pattern = name + r'\{[^}]*method_name="' + method + r'"[^}]*\} (\S+)'
            out[f"batch_{method}_{kind}"] = sum(float(v) for v in re.findall(pattern, text))
    for stage in STAGES:
        for kind in ("sum", "count"):
            pattern = rf'lesionseg_stage_duration_seconds_{kind}\{{stage="{stage}"\}} (\S+)'
            out[f"stage_{stage}_{kind}"] = sum(float(v) for v in re.findall(pattern, text))
    for kind in ("hits", "misses"):  # of the SAM encoder's cache; None: no such counter
        pattern = (
            rf'^lesionseg_embedding_cache_{kind}_total\{{[^}}]*kind="embedding"[^}}]*\}} (\S+)'
        )
        found = re.findall(pattern, text, re.MULTILINE)
        out[f"cache_{kind}"] = sum(float(v) for v in found) if found else None
    return out


def run_locust(url: str, users: int, seconds: int, prefix: Path) -> dict:
    """One headless Locust run: the 'Aggregated' row of its stats CSV, with ``by_name`` (the
    row of each request name), ``failure_messages`` and ``records``: (end time, name, ms,
    error) of every completed request."""
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "benchmarks" / "locustfile.py")]
    cmd += ["--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s"]
    cmd += ["--stop-timeout", "120", "--host", url, "--csv", str(prefix), "--only-summary"]
    record = prefix.with_name(prefix.name + "_requests.csv")
    record.unlink(missing_ok=True)
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env={**os.environ, "LESIONSEG_LOAD_RECORD": str(record)},
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 300,
    )
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if not stats.is_file():
        raise RuntimeError(f"locust wrote no stats (exit {proc.returncode}): {proc.stderr[-2000:]}")
    with stats.open() as handle:
        by_name = {row["Name"]: row for row in csv.DictReader(handle)}
    with prefix.with_name(prefix.name + "_failures.csv").open() as handle:
        failures = [
            f"{r['Occurrences']}x {r['Name']}: {r['Error']}" for r in csv.DictReader(handle)
        ]
    records = []
    if record.is_file():
        with record.open(newline="") as handle:
            records = [(float(t), name, float(ms), err) for t, name, ms, err in csv.reader(handle)]
    return {
        **by_name.pop("Aggregated"),
        "by_name": by_name,
        "failure_messages": " | ".join(failures),
        "records": records,
    }


def server_errors(log: Path | None, offset: int, limit: int = 600) -> str:
    """The server's error lines logged since ``offset`` (so a failure says where it came from)."""
    if log is None:
        return ""
    with log.open(errors="replace") as handle:
        handle.seek(offset)
        lines = [line.strip() for line in handle if re.search(r"ERROR|Traceback|Error:", line)]
    return " | ".join(dict.fromkeys(lines))[:limit]


def sequential(post: Callable[[], httpx.Response], repeats: int) -> tuple[list[float], list[str]]:
    """One warm-up call, then ``repeats`` timed ones: (ms of each 200, messages of the others)."""
    post()
    latencies, failures = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        response = post()
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code == 200:
            latencies.append(elapsed)
        else:
            failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
    return latencies, failures


def latency_row(measure: str, latencies: list[float], failures: list[str]) -> dict:
    """Counts and latency percentiles (of the successful requests; None when none was)."""
    a = np.asarray(latencies)

    def ms(value: float) -> float | None:
        return round(float(value), 1) if a.size else None

    return {
        "measure": measure,
        "users": 1,
        "requests": len(latencies) + len(failures),
        "failures": len(failures),
        **{f"p{q}_ms": ms(np.percentile(a, q) if a.size else 0) for q in (50, 95, 99)},
        "mean_ms": ms(a.mean() if a.size else 0),
        "failure_messages": " | ".join(dict.fromkeys(failures)),
    }


def single_and_reprompt(url: str, repeats: int) -> tuple[list[dict], dict]:
    """Single-user /segment on fresh copies of the README example, and the re-prompt:
    /segment/boxes on the example as sent once, with the boxes that /segment returned. Returns
    the two rows and the ``models`` block of the server's answer."""
    image = read_example()
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:

        def segment(png: bytes) -> httpx.Response:
            return client.post("/segment", files={"image": ("example.png", png, "image/png")})

        single = sequential(lambda: segment(fresh_png(image)), repeats)
        seen = png_bytes(image)
        first = segment(seen)
        first.raise_for_status()
        body = first.json()
        boxes = [lesion["box"] for lesion in body["lesions"]]
        assert boxes, f"the detector found no lesion in {EXAMPLE.name}: nothing to re-prompt"
        files = {"image": ("example.png", seen, "image/png")}
        data = {"boxes": json.dumps(boxes)}
        again = sequential(lambda: client.post("/segment/boxes", files=files, data=data), repeats)
    return [latency_row("single", *single), latency_row("reprompt", *again)], body["models"]


def served_runtime(models: dict) -> str:
    """Backend (and precision, where the server reports one) from a ``models`` block."""
    precision = models.get("precision") or models.get("sam", {}).get("precision")
    return " ".join(str(v) for v in (models.get("backend"), precision) if v)


def throughput(ends: list[float], start: float, seconds: int) -> float:
    """Successful completions per second between the first and the last that ended within
    ``seconds`` of ``start`` (not the drain after Locust stops, nor window-edge rounding of a
    few slow requests); k / seconds when fewer than 3."""
    ends = sorted(t for t in ends if t <= start + seconds)
    if len(ends) < 3:
        return round(len(ends) / seconds, 3)
    return round((len(ends) - 1) / (ends[-1] - ends[0]), 3)


def load_row(stats: dict, delta: dict, users: int, seconds: int) -> dict:
    """One Locust level from its per-request records and the /metrics counters' changes."""
    records = stats["records"]
    ok = [(end, name, ms) for end, name, ms, error in records if not error]
    start = min((end - ms / 1000 for end, _, ms, _ in records), default=0.0)  # first sent
    row = latency_row("load", [ms for _, _, ms in ok], [e for *_, e in records if e])
    example = [ms for _, name, ms in ok if name == "/segment (example)"]
    row |= {
        "users": users,
        "seconds": seconds,
        "ok_per_s": throughput([end for end, _, _ in ok], start, seconds),
        "example_p50_ms": round(float(np.median(example)), 1) if example else None,
        "failure_messages": stats["failure_messages"],
    }
    for kind in ("hits", "misses"):
        change = delta[f"cache_{kind}"]
        row[f"cache_{kind}"] = None if change is None else int(change)
    for method in ("detect", "embed"):
        count = delta[f"batch_{method}_count"]
        row[f"mean_batch_{method}"] = (
            round(delta[f"batch_{method}_sum"] / count, 2) if count else None
        )
    for stage in STAGES:
        count = delta[f"stage_{stage}_count"]
        row[f"{stage}_ms"] = round(1000 * delta[f"stage_{stage}_sum"] / count, 1) if count else None
    return row


def measure_server(
    url: str, users: list[int], seconds: int, repeats: int, work: Path, log: Path | None = None
) -> tuple[list[dict], dict]:
    """Every measure of one running server: its rows and its ``models`` block."""
    rows, models = single_and_reprompt(url, repeats)
    for row in rows:
        print(row, flush=True)
    for n in users:
        before, offset = scrape(url), log.stat().st_size if log else 0
        stats = run_locust(url, n, seconds, work / f"locust-{n}")
        after = scrape(url)
        delta = {k: None if after[k] is None else after[k] - (before[k] or 0) for k in after}
        row = load_row(stats, delta, n, seconds)
        row["server_errors"] = server_errors(log, offset)
        print(row, flush=True)
        rows.append(row)
    return rows, models


def measure(
    name: str, env: dict[str, str], users: list[int], seconds: int, repeats: int, work: Path
) -> list[dict]:
    """Start the server of one configuration and measure it; a configuration this version
    cannot run, or whose server fails, is one row that says why."""
    head = {"config": name, "env": " ".join(f"{k}={v}" for k, v in env.items()) or "(none)"}
    ignored = unknown_settings(env)
    notes = f"not settings of this version, left out: {', '.join(ignored)}" if ignored else ""
    reason = unavailable(env)
    if reason:
        print(f"{name}: not available: {reason}", flush=True)
        return [{**head, "status": f"not available: {reason}", "notes": notes}]
    log = work / f"{name}.log"
    try:
        served = {k: v for k, v in env.items() if k not in ignored}
        with running_server(served, log, timeout=TIMEOUT_S) as url:
            rows, models = measure_server(url, users, seconds, repeats, work, log)
    except (RuntimeError, TimeoutError, httpx.HTTPError, AssertionError) as exc:
        print(f"{name}: failed: {exc}", flush=True)
        return [{**head, "status": f"failed: {str(exc)[-1500:]}", "notes": notes}]
    served = served_runtime(models)
    status = "ok"
    wanted = env.get("LESIONSEG_BACKEND")
    if wanted and models.get("backend") != wanted:
        status = f"failed: asked for backend {wanted}, the server ran {models.get('backend')}"
    return [{**head, "status": status, "served": served, "notes": notes, **r} for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=int, default=20, help="Locust run per level")
    parser.add_argument(
        "--repeats", type=int, default=20, help="single-user and re-prompt requests (+1 warm-up)"
    )
    parser.add_argument("--url", help="measure this running server instead of starting any")
    parser.add_argument("--out", type=Path, default=RESULTS / "load_cpu")
    args = parser.parse_args(argv)
    base = provenance()
    base["cpu_available"] = len(os.sched_getaffinity(0))
    base["inherited_env"] = " ".join(
        f"{k}={v}" for k, v in os.environ.items() if k.startswith("LESIONSEG_")
    )
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            found, models = measure_server(
                args.url, args.users, args.seconds, args.repeats, Path(tmp)
            )
            head = {"config": "url", "env": "(unknown)", "status": "ok"}
            rows = [{**head, "served": served_runtime(models), **r} for r in found]
        for name in [] if args.url else args.configs:
            rows += measure(name, CONFIGS[name], args.users, args.seconds, args.repeats, Path(tmp))
    base["run_s"] = round(time.monotonic() - started)
    assert all(set(r) <= set(COLUMNS) for r in rows)
    rows = [base | {c: None for c in COLUMNS} | r for r in rows]
    write_rows(args.out.with_suffix(".csv"), rows)
    print(report(rows, base, args.out, ABOUT))
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
