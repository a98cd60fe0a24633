"""The soak's verdicts and its report: soak.md, soak.csv (per window), soak_memory.csv."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.common import write_rows
from benchmarks.ledger import Tally

if TYPE_CHECKING:
    from benchmarks.soak_run import Run

RSS_GROWTH = 0.10  # at most, per process, from the end of the warm-up to the end
P99_DRIFT = 0.20  # the last window's p99 at most this much above the first after the warm-up
LEVEL_S = 10.0  # the RSS at a time: the median of the samples of the LEVEL_S s before it


def answered_verdicts(tally: Tally, scheduled: int, finished: int) -> list[dict]:
    """Every request sent got an answer (and every operation scheduled finished); none failed."""
    return [
        {
            "verdict": "every request sent got an answer",
            "measured": f"{tally.answered} answers / {tally.sent} sent ({tally.no_answer} without"
            f" an answer, {tally.open} open); operations {finished} finished / {scheduled}",
            "limit": "all",
            "passed": tally.complete and finished == scheduled,
        },
        {
            "verdict": "0 failed requests",
            "measured": str(tally.failed),
            "limit": "0",
            "passed": tally.failed == 0,
        },
    ]


def _level(samples: list[tuple[float, str, int, float]], key: tuple, at: float) -> float | None:
    found = [rss for t, role, pid, rss in samples if (role, pid) == key and at - LEVEL_S <= t <= at]
    return statistics.median(found) if found else None


def memory_rows(samples: list[tuple[float, str, int, float]], warm: float) -> list[dict]:
    """Per server process: RSS MiB at the end of the warm-up (epoch ``warm``) and at the last
    sample, and the growth; a process only at one of the two has None for the other."""
    if not samples:
        return []
    end = max(t for t, *_ in samples)
    rows = []
    for role, pid in dict.fromkeys((role, pid) for _, role, pid, _ in samples):
        before, after = _level(samples, (role, pid), warm), _level(samples, (role, pid), end)
        growth = round(after / before - 1, 4) if before and after else None
        rows.append(
            {"process": role, "pid": pid, "warm_mib": before, "end_mib": after, "growth": growth}
        )
    return rows


def memory_verdict(rows: list[dict], error: str) -> dict:
    """RSS of every process grows < RSS_GROWTH; a process that came or went fails it."""
    worst = max((r["growth"] for r in rows if r["growth"] is not None), default=None)
    changed = [f"{r['process']} (pid {r['pid']})" for r in rows if r["growth"] is None]
    measured = "n/a" if worst is None else f"{worst:+.1%} (largest growth)"
    if changed:
        measured += f"; not there at both ends: {', '.join(changed)}"
    if error:
        measured += f"; {error}"
    passed = worst is not None and worst < RSS_GROWTH and not changed and not error
    return {
        "verdict": "RSS of every server process, growth from the end of the warm-up to the end",
        "measured": measured,
        "limit": f"< {RSS_GROWTH:+.0%}",
        "passed": passed,
    }


def latency_verdict(windows: list[dict], warmup_s: float) -> dict:
    """p99 of the last window ≤ (1 + P99_DRIFT) x p99 of the first window after the warm-up
    (None: not measured, when the run holds no window after the warm-up)."""
    after = [w for w in windows if w["from_s"] >= warmup_s]
    verdict = {
        "verdict": "p99 of the last window vs the first after the warm-up",
        "limit": f"≤ {1 + P99_DRIFT:.2f}x",
    }
    if not after or after[0]["p99_ms"] is None or after[-1]["p99_ms"] is None:
        return verdict | {"measured": "not measured (no window after the warm-up)", "passed": None}
    first, last = after[0]["p99_ms"], after[-1]["p99_ms"]
    ratio = last / first
    measured = f"{last:.0f} ms / {first:.0f} ms = {ratio:.2f}x"
    if len(after) == 1:
        measured += " (one window after the warm-up: the same window)"
    return verdict | {"measured": measured, "passed": ratio <= 1 + P99_DRIFT}


def _table(rows: list[dict]) -> list[str]:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [
        "| " + " | ".join("" if r[c] is None else str(r[c]) for c in head) + " |" for r in rows
    ]
    return lines


def write_report(run: Run, base: dict, out: Path) -> list[dict]:
    """Write ``out``.md, ``out``.csv and ``out``_memory.csv; return the verdicts."""
    args = run.args
    tally = run.ledger.tally()
    windows = run.ledger.windows(run.start, args.seconds, args.window)
    memory = memory_rows(run.memory, run.start + args.warmup)
    verdicts = answered_verdicts(tally, run.scheduled, run.finished)
    verdicts += [memory_verdict(memory, run.memory_error), latency_verdict(windows, args.warmup)]
    write_rows(out.with_suffix(".csv"), [base | {"phase": "soak"} | w for w in windows])
    write_rows(
        out.with_name(out.name + "_memory.csv"),
        [
            {"t_s": round(t - run.start, 1), "process": role, "pid": pid, "rss_mib": rss}
            for t, role, pid, rss in run.memory
        ],
    )
    mark = {True: "**pass**", False: "**FAIL**", None: "n/a"}
    command = (
        f"python -m benchmarks.soak --seconds {args.seconds:g} --warmup {args.warmup:g} "
        f"--window {args.window:g} --ramp-users {' '.join(map(str, args.ramp_users))} "
        f"--ramp-seconds {args.ramp_seconds:g} --fraction {args.fraction:g} "
        f"--timeout {args.timeout:g} --job-timeout {args.job_timeout:g}"
    )
    lines = [
        "# Soak",
        "",
        f"`{command}` (benchmarks/README.md says what it does). One `bentoml serve` with the "
        "service's defaults; the mix of `benchmarks/soak_mix.py`.",
        "",
        "## Verdicts",
        "",
        *_table([{**v, "passed": mark[v["passed"]]} for v in verdicts]),
        "",
        "## Capacity (closed loop, same run)",
        "",
        *_table(run.ramp),
        "",
        f"Capacity {run.capacity:.2f} operations/s; soaked at {args.fraction:g} of it: "
        f"**{run.rate:.2f} operations/s** (open loop, constant arrivals) for {args.seconds:g} s. "
        f"Operations scheduled {run.scheduled}, started {run.started}, finished {run.finished}; "
        f"the latest started {run.max_late_s:.2f} s after its due time.",
        "",
        "## Requests (capacity and soak)",
        "",
        f"Sent {tally.sent}, answered {tally.answered} (by status: "
        + ", ".join(f"{s}: {n}" for s, n in tally.by_status.items())
        + f"), without an answer {tally.no_answer}, open {tally.open}, failed {tally.failed}.",
        *(f"- {n}x {message}" for message, n in list(tally.messages.items())[:20]),
        "",
        f"## Soak, per {args.window:g} s window (latency of successful requests, polls left out)",
        "",
        *_table(windows),
        "",
        "## Resident memory (MiB) of every server process",
        "",
        f"At the end of the warm-up ({args.warmup:g} s into the soak; median of the samples of "
        f"the {LEVEL_S:g} s before) and at the end, sampled every {args.sample_s:g} s "
        f"(`{out.name}_memory.csv`).",
        "",
        *_table(memory),
        "",
        "## Provenance",
        "",
        *_table([{"field": k, "value": v} for k, v in base.items()]),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    return verdicts
