"""Load benchmark: Locust against real `bentoml serve` processes, configurations side by side.

For each configuration (backend x adaptive batching on/off) one server is started, then Locust
runs headless at each concurrency level for a bounded time. Per level: requests, failures,
p50/p95/p99 latency, req/s (Locust's CSV), the batch sizes BentoML actually formed and the mean
time of each pipeline stage (both from /metrics). Writes results/load_<device>.csv, .md, .png.

    python -m benchmarks.load [--seconds 30] [--users 1 2 4 8]
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from lesionseg.settings import REPO_ROOT
from service.launcher import running_server

from .common import RESULTS, provenance, write_rows

CONFIGS = {
    "onnxruntime+batching": {"LESIONSEG_BACKEND": "onnxruntime", "LESIONSEG_MAX_BATCH_SIZE": "4"},
    "onnxruntime, no batching": {
        "LESIONSEG_BACKEND": "onnxruntime",
        "LESIONSEG_MAX_BATCH_SIZE": "1",
    },
    "torch+batching": {"LESIONSEG_BACKEND": "torch", "LESIONSEG_MAX_BATCH_SIZE": "4"},
}
STAGES = ("decode_image", "detect", "embed", "mask_decode", "encode_response")


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
    return out


def run_locust(url: str, users: int, seconds: int, prefix: Path) -> dict:
    """One headless Locust run; the 'Aggregated' row of its stats CSV."""
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO_ROOT / "benchmarks" / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "120",
        "--host",
        url,
        "--csv",
        str(prefix),
        "--only-summary",
    ]
    subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, check=False, timeout=seconds + 300)
    with prefix.with_name(prefix.name + "_stats.csv").open() as handle:
        total = {row["Name"]: row for row in csv.DictReader(handle)}["Aggregated"]
    with prefix.with_name(prefix.name + "_failures.csv").open() as handle:
        failures = [
            f"{r['Occurrences']}x {r['Name']}: {r['Error']}" for r in csv.DictReader(handle)
        ]
    return {**total, "failure_messages": " | ".join(failures)}


def server_errors(log: Path, offset: int, limit: int = 600) -> str:
    """The server's error lines logged since ``offset`` (so a failure says where it came from)."""
    with log.open(errors="replace") as handle:
        handle.seek(offset)
        lines = [line.strip() for line in handle if re.search(r"ERROR|Traceback|Error:", line)]
    return " | ".join(dict.fromkeys(lines))[:limit]


def measure(name: str, env: dict, users: list[int], seconds: int, work: Path) -> list[dict]:
    env = {**env, "LESIONSEG_MAX_LATENCY_MS": "120000"}
    rows = []
    log = work / f"{abs(hash(name))}.log"
    with running_server(env, log) as url:
        for n in users:
            before, log_offset = scrape(url), log.stat().st_size
            stats = run_locust(url, n, seconds, work / f"{abs(hash(name))}-{n}")
            after = scrape(url)
            delta = {k: after[k] - before[k] for k in after}
            row = {
                "config": name,
                "backend": env["LESIONSEG_BACKEND"],
                "max_batch_size": int(env["LESIONSEG_MAX_BATCH_SIZE"]),
                "users": n,
                "seconds": seconds,
                "requests": int(stats["Request Count"]),
                "failures": int(stats["Failure Count"]),
                "p50_ms": float(stats["50%"]),
                "p95_ms": float(stats["95%"]),
                "p99_ms": float(stats["99%"]),
                "req_per_s": round(float(stats["Requests/s"]), 3),
                "failure_messages": stats["failure_messages"],
                "server_errors": server_errors(log, log_offset),
            }
            for method in ("detect", "embed"):
                count = delta[f"batch_{method}_count"]
                row[f"mean_batch_{method}"] = (
                    round(delta[f"batch_{method}_sum"] / count, 2) if count else None
                )
            for stage in STAGES:
                count = delta[f"stage_{stage}_count"]
                row[f"{stage}_ms"] = (
                    round(1000 * delta[f"stage_{stage}_sum"] / count, 1) if count else None
                )
            print(row, flush=True)
            rows.append(row)
    return rows


def summarise(rows: list[dict], base: dict, out: Path) -> None:
    top = max(r["users"] for r in rows)
    at_top = {r["config"]: r for r in rows if r["users"] == top}

    def ratio(a: str, b: str) -> str:
        return (
            f"{at_top[a]['req_per_s'] / at_top[b]['req_per_s']:.2f}x"
            if a in at_top and b in at_top
            else "n/a"
        )

    lines = [
        "# Load benchmark (Locust against `bentoml serve`)",
        "",
        f"{base['cpu']}, {base['cpu_cores']} cores{', ' + base['gpu'] if base['gpu'] else ''}; "
        f"commit {base['commit']}; {base['date']}; torch {base['v_torch']}, onnxruntime "
        f"{base['v_onnxruntime']}, bentoml {base['v_bentoml']}. Closed-loop users (no think "
        f"time), {rows[0]['seconds']} s per level, 3:1:1 mix of /segment and /segment/boxes on "
        "LiTS validation slices (128x128 PNG) and /segment on a real CT DICOM (CT_small.dcm, "
        "128x128).",
        "",
        f"At {top} users: adaptive batching on/off throughput = "
        f"**{ratio('onnxruntime+batching', 'onnxruntime, no batching')}**; onnxruntime/torch "
        f"(both batching) = **{ratio('onnxruntime+batching', 'torch+batching')}**.",
        "",
        "| config | users | requests | failures | p50 ms | p95 ms | p99 ms | req/s | mean batch "
        "(detect / embed) | decode / detect / embed / mask / encode ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        stages = " / ".join(str(r[f"{s}_ms"]) for s in STAGES)
        lines.append(
            f"| {r['config']} | {r['users']} | {r['requests']} | {r['failures']} "
            f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['req_per_s']} | "
            f"{r['mean_batch_detect']} / {r['mean_batch_embed']} | {stages} |"
        )
    failed = [r for r in rows if r["failures"]]
    lines += ["", f"Failed requests: {sum(r['failures'] for r in rows)} in all."]
    for r in failed:
        lines.append(
            f"- {r['config']}, {r['users']} users: {r['failure_messages']} "
            f"(server: {r['server_errors'] or 'no error logged'})"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for config in dict.fromkeys(r["config"] for r in rows):
        sub = [r for r in rows if r["config"] == config]
        users = [r["users"] for r in sub]
        (line,) = left.plot(users, [r["p50_ms"] for r in sub], marker="o", label=f"{config} p50")
        left.plot(
            users,
            [r["p95_ms"] for r in sub],
            ls="--",
            color=line.get_color(),
            label=f"{config} p95",
        )
        right.plot(users, [r["req_per_s"] for r in sub], marker="o", label=config)
    left.set(
        xlabel="concurrent users",
        ylabel="latency (ms)",
        title="Latency",
        xscale="log",
        xticks=users,
    )
    right.set(
        xlabel="concurrent users",
        ylabel="requests / s",
        title="Throughput",
        xscale="log",
        xticks=users,
    )
    for ax in (left, right):
        ax.set_xticklabels([str(u) for u in users])
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30, help="Locust run per level")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=RESULTS / "load_cpu")
    args = parser.parse_args(argv)
    base = provenance()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.configs:
            rows += measure(name, CONFIGS[name], args.users, args.seconds, Path(work))
    rows = [{**base, **r} for r in rows]
    write_rows(args.out.with_suffix(".csv"), rows)
    summarise(rows, base, args.out)


if __name__ == "__main__":
    main()
