"""The load benchmark's report: issue 13's targets filled from one run, tables and a plot."""

from __future__ import annotations

import math
from pathlib import Path

STAGES = ("decode_image", "detect", "embed", "mask_decode", "encode_response")
COLUMNS = (
    "config",
    "status",
    "env",
    "served",
    "notes",
    "measure",
    "users",
    "seconds",
    "requests",
    "failures",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "ok_per_s",
    "example_p50_ms",
    "mean_batch_detect",
    "mean_batch_embed",
    *(f"{s}_ms" for s in STAGES),
    "cache_hits",
    "cache_misses",
    "failure_messages",
    "server_errors",
)
TOP_USERS = 8  # the load level
# Issue 13's targets (2-core CPU machine): (what, unit, "<=" or ">=", target value).
TARGETS = {
    "single": ("single-user `/segment` p50, README example", "s", "<=", 0.50),
    "reprompt": ("re-prompt of a seen image, `/segment/boxes` p50", "s", "<=", 0.10),
    "throughput": (f"throughput at {TOP_USERS} users (successful req/s)", "req/s", ">=", 2.0),
    "vs_naive": (f"÷ naive, req/s at {TOP_USERS} users, same run", "x", ">=", 5.0),
    "holds": (
        f"req/s at {TOP_USERS} users ÷ 1/(service time at 1 user)",
        "",
        ">=",
        0.95,
    ),
}


def figures(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per measure of :data:`TARGETS`, per configuration: the figure of this run or None."""
    ok = [r for r in rows if r["status"] == "ok"]
    configs = list(dict.fromkeys(r["config"] for r in rows))

    def pick(config: str, measure: str, users: int | None = None) -> dict | None:
        found = (
            r
            for r in ok
            if (r["config"], r["measure"]) == (config, measure) and users in (None, r["users"])
        )
        return next(found, None)

    out: dict[str, dict[str, float | None]] = {k: {} for k in TARGETS}
    for c in configs:
        single, again = pick(c, "single"), pick(c, "reprompt")
        top, one = pick(c, "load", TOP_USERS), pick(c, "load", 1)
        out["single"][c] = single["p50_ms"] / 1000 if single else None
        out["reprompt"][c] = again["p50_ms"] / 1000 if again else None
        out["throughput"][c] = top["ok_per_s"] if top else None
        out["holds"][c] = (
            top["ok_per_s"] / (1000 / one["mean_ms"]) if top and one and one["mean_ms"] else None
        )
    naive = out["throughput"].get("naive")
    for c in configs:
        mine = out["throughput"][c]
        out["vs_naive"][c] = mine / naive if mine is not None and naive else None
    return out


def verdict(value: float | None, sense: str, target: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "met" if (value <= target if sense == "<=" else value >= target) else "missed"


def fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3g} {unit}".strip()


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def cell(value: object) -> str:
    """A table cell: '-' for a figure the run has not got (batching off, no such counter)."""
    return "-" if value is None else str(value)


def nan(values: list) -> list[float]:
    """None (no request completed) as a gap in a plot."""
    return [math.nan if v is None else v for v in values]


def targets_table(rows: list[dict]) -> list[str]:
    """Issue 13's targets: per configuration the figure, and met/missed (the naive baseline is
    the reference, not judged)."""
    found = figures(rows)
    configs = list(dict.fromkeys(r["config"] for r in rows))
    lines = [
        "| measure | target | " + " | ".join(configs) + " |",
        "|---|---|" + "---|" * len(configs),
    ]
    for key, (what, unit, sense, target) in TARGETS.items():
        cells = []
        for c in configs:
            value = found[key].get(c)
            judged = c != "naive" and value is not None
            cells.append(
                fmt(value, unit) + (f" **{verdict(value, sense, target)}**" if judged else "")
            )
        sign = "≤" if sense == "<=" else "≥"
        lines.append(f"| {what} | {sign} {fmt(target, unit)} | " + " | ".join(cells) + " |")
    return lines


def report(rows: list[dict], base: dict, out: Path, about: dict[str, str]) -> str:
    """Write ``out``.md (and .png when there are load rows); return the markdown."""
    versions = ", ".join(f"{k[2:]} {v}" for k, v in base.items() if k.startswith("v_"))
    seconds = next((r["seconds"] for r in rows if r["measure"] == "load"), None)
    repeats = next((r["requests"] for r in rows if r["measure"] == "single"), None)
    lines = [
        "# Load benchmark: naive, default and fastest configurations, one run",
        "",
        f"{base['cpu']} (flags: {base['cpu_flags'] or 'none of interest'}), "
        f"{base['cpu_cores']} cores, {base['cpu_available']} available to the run"
        f"{', ' + base['gpu'] if base['gpu'] else ''}; commit {base['commit']}; {base['date']}; "
        f"{versions}; whole run {base['run_s']} s. "
        f"Inherited environment: {base['inherited_env'] or 'no LESIONSEG_ variables'}.",
        "",
        f"Single-user and re-prompt: {repeats} sequential requests after one warm-up; "
        "`/segment` on fresh copies of `data/examples/lits117-z110.png` (no cache can answer "
        "them), re-prompt = `/segment/boxes` on that example as sent once, with the boxes "
        f"`/segment` returned. Load: Locust, closed-loop users, {seconds} s per level, the mix "
        "of `benchmarks/locustfile.py` (4 README example : 1 re-prompt : 1 LiTS slice : 1 LiTS "
        "slice with boxes : 1 DICOM). Throughput counts successful requests only.",
        "",
        "## Targets (issue 13)",
        "",
        *targets_table(rows),
        "",
        "## Configurations",
        "",
        "| config | what | environment | served | status | notes |",
        "|---|---|---|---|---|---|",
    ]
    for c in dict.fromkeys(r["config"] for r in rows):
        r = next(x for x in rows if x["config"] == c)
        lines.append(
            f"| {c} | {about.get(c, '')} | {r['env']} | {r['served'] or ''} | {r['status']} | "
            f"{r['notes'] or ''} |"
        )
    lines += [
        "",
        "## Single user and re-prompt",
        "",
        "| config | measure | requests | failures | p50 ms | p95 ms | mean ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["measure"] in ("single", "reprompt"):
            lines.append(
                f"| {r['config']} | {r['measure']} | {r['requests']} | {r['failures']} | "
                f"{r['p50_ms']} | {r['p95_ms']} | {r['mean_ms']} |"
            )
    load = [r for r in rows if r["measure"] == "load"]
    lines += [
        "",
        "## Load",
        "",
        "| config | users | requests | failures | p50 ms | p95 ms | p99 ms | ok req/s | example "
        "p50 ms | mean batch (detect / embed) | decode / detect / embed / mask / encode ms | "
        "cache hits / misses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in load:
        stages = " / ".join(cell(r[f"{s}_ms"]) for s in STAGES)
        lines.append(
            f"| {r['config']} | {r['users']} | {r['requests']} | {r['failures']} | "
            f"{ms(r['p50_ms'])} | {ms(r['p95_ms'])} | {ms(r['p99_ms'])} | {r['ok_per_s']} | "
            f"{ms(r['example_p50_ms'])} | {cell(r['mean_batch_detect'])} / "
            f"{cell(r['mean_batch_embed'])} | {stages} | {cell(r['cache_hits'])} / "
            f"{cell(r['cache_misses'])} |"
        )
    failed = [r for r in rows if r["failures"]]
    lines += ["", f"Failed requests: {sum(r['failures'] or 0 for r in rows)} in all."]
    for r in failed:
        lines.append(
            f"- {r['config']}, {r['measure']}, {r['users']} users: {r['failure_messages']} "
            f"(server: {r['server_errors'] or 'no error logged'})"
        )
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    if load:
        plot(load, out.with_suffix(".png"))
    return text


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    users = sorted({r["users"] for r in rows})
    for config in dict.fromkeys(r["config"] for r in rows):
        sub = [r for r in rows if r["config"] == config]
        x = [r["users"] for r in sub]
        (line,) = left.plot(x, nan([r["p50_ms"] for r in sub]), marker="o", label=f"{config} p50")
        left.plot(x, nan([r["p95_ms"] for r in sub]), ls="--", color=line.get_color(), label="p95")
        right.plot(x, [r["ok_per_s"] for r in sub], marker="o", label=config)
    left.set(xlabel="concurrent users", ylabel="latency (ms)", title="Latency", xscale="log")
    right.set(xlabel="concurrent users", ylabel="successful requests / s", title="Throughput")
    right.set_xscale("log")
    for ax in (left, right):
        ax.set_xticks(users, [str(u) for u in users])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
