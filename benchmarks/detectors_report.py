"""The detector-cost benchmark's rows, verdicts and report (``benchmarks/detectors.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import write_rows

STAGES = ("detect", "embed", "mask_decode")
# Issue 24's serving targets: sam-head time / YOLO time, medians of the same run.
TARGETS = {"single": 1.15, "series": 1.0}
PARTS = {"single": "single image (`/segment`)", "series": "CT series (`/segment/dicom-seg`)"}


@dataclass(frozen=True)
class Sample:
    """One engine call: wall seconds, frames in and embedded, boxes kept (lesions answered),
    and per stage the milliseconds summed over its calls."""

    seconds: float
    frames: int
    embedded: int
    boxes: int
    stage_ms: dict[str, float]


def summary(samples: list[Sample]) -> dict:
    """Per call: median, p90 and mean wall ms, median ms of each stage (0 where a call had
    none) and of detect + embed, mean frames embedded and boxes, frames/s at the median."""
    ms = np.array([s.seconds * 1000 for s in samples])
    median = float(np.median(ms))
    return {
        "frames": samples[0].frames,
        "calls": len(samples),
        "median_ms": round(median, 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "mean_ms": round(float(ms.mean()), 1),
        **{
            f"{stage}_ms": round(float(np.median([s.stage_ms.get(stage, 0.0) for s in samples])), 1)
            for stage in STAGES
        },
        # The detector's own cost (boxes and the embeddings they need), whatever it found.
        "detect_embed_ms": round(
            float(
                np.median(
                    [s.stage_ms.get("detect", 0.0) + s.stage_ms.get("embed", 0.0) for s in samples]
                )
            ),
            1,
        ),
        "embedded": round(float(np.mean([s.embedded for s in samples])), 2),
        "boxes": round(float(np.mean([s.boxes for s in samples])), 2),
        "frames_per_s": round(samples[0].frames * 1000 / median, 2),
    }


def verdicts(rows: list[dict]) -> list[str]:
    """One line per part: sam-head's median wall time ÷ YOLO's against its target, as
    measured; then the same ratio of detect + embed alone (mask decoding left out: it grows
    with the boxes found), for information."""
    lines = []
    for part, target in TARGETS.items():
        head, yolo = (
            next(r for r in rows if (r["role"], r["part"]) == (role, part))
            for role in ("sam-head", "yolo")
        )
        ratio = head["median_ms"] / yolo["median_ms"]
        verdict = "met" if ratio <= target else "missed"
        lines.append(
            f"{PARTS[part]}: sam-head {head['median_ms']:.0f} ms / YOLO {yolo['median_ms']:.0f} "
            f"ms (medians) = {ratio:.2f} -> **{verdict}** (target ≤ {target:.2f}); detect + "
            f"embed alone {head['detect_embed_ms']:.0f} / {yolo['detect_embed_ms']:.0f} ms = "
            f"{head['detect_embed_ms'] / yolo['detect_embed_ms']:.2f}"
        )
    return lines


def write_report(
    out: Path,
    base: dict,
    setup: dict,
    bundles: dict[str, dict],
    samples: dict[tuple[str, str], list[Sample]],
) -> list[dict]:
    """``out``.csv (one row per bundle and part, with provenance) and ``out``.md.

    Args:
        base: :func:`benchmarks.common.provenance` at the start.
        setup: rounds, slices, duration, whether the head is the fixture.
        bundles: per role ("yolo", "sam-head") what was measured: bundle name, fingerprint,
            detector weights, head, backend, precisions.
    """
    rows = [
        {**base, **setup, "role": role, **bundles[role], "part": part, **summary(values)}
        for (role, part), values in samples.items()
    ]
    for row in rows:
        yolo = next(r for r in rows if r["role"] == "yolo" and r["part"] == row["part"])
        row["vs_yolo"] = round(row["median_ms"] / yolo["median_ms"], 3)
    write_rows(out.with_suffix(".csv"), rows)
    out.with_suffix(".md").write_text(markdown(base, setup, bundles, rows))
    print(out.with_suffix(".md").read_text())
    return rows


def markdown(base: dict, setup: dict, bundles: dict[str, dict], rows: list[dict]) -> str:
    head = bundles["sam-head"]
    lines = [
        f"# Detector cost: YOLO vs sam-head ({head['backend']}, CPU)",
        "",
        f"{base['cpu']}, {base['cpu_cores']} cores (flags: {base['cpu_flags']}); commit "
        f"{base['commit']}; {base['date']}; torch {base['v_torch']}, onnxruntime "
        f"{base['v_onnxruntime']}, openvino {base['v_openvino']}; load average "
        f"{base['load_avg_1m']} at the start, {setup['load_avg_1m_end']} at the end (shared "
        f"machine); {setup['duration_s']} s. "
        f"{setup['rounds']} interleaved rounds after one warm-up, through `engine.run` on local "
        "models (the service's engine, no embedding cache).",
        "",
    ]
    if setup["fixture"]:
        lines += [
            "**FIXTURE HEAD, NOT A TRAINED ONE**: the sam-head bundle's head is untrained "
            "(random, seeded): its boxes are arbitrary, so its box counts and mask-decode time "
            "say nothing of a trained head's. Rerun with `--sam-head DIR` for the real figures.",
            "",
        ]
    lines += ["| role | bundle | fingerprint | detector | head | SAM | precision (SAM, detector) |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for role, b in bundles.items():
        lines.append(
            f"| {role} | {b['bundle']} | {b['fingerprint'][:12]} | {b['detector_weights']} | "
            f"{b['head'] or '-'} | {b['sam']} | {b['sam_precision']}, "
            f"{b['detector_precision']} |"
        )
    lines += ["", "## Verdicts (issue 24, serving), as measured in this run", ""]
    lines += [f"- {line}" for line in verdicts(rows)]
    lines += [
        "",
        f"## Single image: LiTS validation slices {setup['single_slices']}, one call each",
        "",
        "| role | median ms | p90 | mean | detect | embed | mask_decode | embedded / image | "
        "boxes / image | vs YOLO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r) for r in rows if r["part"] == "single"]
    lines += [
        "",
        f"## CT series: LiTS slices {setup['series_slices']} as one DICOM series, one call",
        "",
        "| role | median ms | p90 | mean | detect | embed | mask_decode | frames embedded | "
        "boxes | vs YOLO | slices/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"{_row(r)} {r['frames_per_s']} |" for r in rows if r["part"] == "series"]
    lines += [
        "",
        "Stage columns: median ms per call of the engine's stages (`timings_ms`), summed over a "
        "call's chunks. With YOLO only frames with boxes are embedded; with sam-head every "
        "frame is.",
    ]
    return "\n".join(lines) + "\n"


def _row(r: dict) -> str:
    return (
        f"| {r['role']} | {r['median_ms']} | {r['p90_ms']} | {r['mean_ms']} | {r['detect_ms']} | "
        f"{r['embed_ms']} | {r['mask_decode_ms']} | {r['embedded']} | {r['boxes']} | "
        f"{r['vs_yolo']:.2f} |"
    )
