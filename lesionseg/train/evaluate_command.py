"""``lesionseg evaluate DATASET --model DIR``: score a model bundle on a labelled dataset, fully
automatic, as ``/segment`` serves it (:func:`lesionseg.train.evaluate_bundle.evaluate_bundle`).

Prints the table (per case, then overall) and writes ``--out`` (default
``.cache/evaluations/<bundle name>-<dataset name>/``): ``evaluation.json`` (numbers, FROC curves and
provenance), ``evaluation.csv``, ``evaluation.md`` and ``froc.png``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from lesionseg.datasets import FORMATS, Dataset, open_dataset
from lesionseg.errors import InputError, LesionSegError
from lesionseg.measure.evaluation import EVAL_MIN_AREA
from lesionseg.measure.froc import FROC_RATES
from lesionseg.models.bundle_settings import bundle_in_force, effective_settings
from lesionseg.provenance import git_state, hardware, versions
from lesionseg.settings import Settings
from lesionseg.train.evaluate_bundle import FLOOR, Report, evaluate_bundle
from lesionseg.train.extra import INSTALL
from lesionseg.train.held_out import capped, select_parts
from lesionseg.train.plots import froc_lines

COLUMNS = {  # row key -> column title of the printed and markdown tables
    "case": "case",
    "frames": "frames",
    "lesions": "lesions",
    "lesion_dice": "lesion Dice",
    "fp_penalised_dice": "FP-penalised Dice",
    "recall": "recall",
    "false_per_slice": "false masks / slice",
    **{f"sens@{r:g}": f"sens @ {r:g} FP/slice" for r in FROC_RATES},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lesionseg evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path, help="labelled dataset (a layout `lesionseg train` reads)")
    p.add_argument(
        "--model",
        type=Path,
        help="bundle directory (default: LESIONSEG_MODEL_DIR, else the shipped bundle)",
    )
    p.add_argument("--cases", help="comma-separated case names (default: see the docs)")
    p.add_argument("--format", choices=FORMATS, help="override the detected layout")
    p.add_argument(
        "--labels",
        help="comma-separated classes that count as lesions (default: the bundle's classes "
        "when the dataset has them all, else every label but background)",
    )
    p.add_argument(
        "--window",
        help="DICOM/NIfTI window, a preset or 'center,width' (default: the bundle's, applied as "
        "the service applies it)",
    )
    p.add_argument("--max-frames", type=int, help="score at most this many frames (seeded draw)")
    p.add_argument("--seed", type=int, default=0, help="of the --max-frames draw (default 0)")
    p.add_argument(
        "--min-lesion-px",
        type=int,
        default=EVAL_MIN_AREA,
        help=f"smaller lesions and masks are not counted (default {EVAL_MIN_AREA})",
    )
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument(
        "--out", type=Path, help="default: .cache/evaluations/<bundle name>-<dataset name>/"
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        run(args, argv)
    except (LesionSegError, OSError) as exc:
        print(f"lesionseg evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> Path:
    started, source = time.time(), git_state()  # the code this run starts from
    if args.min_lesion_px < 1:
        raise InputError(f"--min-lesion-px must be at least 1, got {args.min_lesion_px}")
    if importlib.util.find_spec("matplotlib") is None:  # before any model work
        raise LesionSegError(f"froc.png needs matplotlib: install it with `{INSTALL}`")
    settings = effective_settings(Settings(model_dir=args.model, backend="torch"))
    bundle = bundle_in_force(settings)
    if bundle is None:
        raise InputError("no model bundle in force: give --model DIR")
    dataset = _open(args, settings, bundle.classes)
    fingerprint = dataset.fingerprint()
    cases = args.cases.split(",") if args.cases else None
    selection = select_parts(dataset, fingerprint, bundle.record, cases)
    print(
        f"{dataset.root}: {dataset.format}, classes {list(dataset.classes)}, window "
        f"{dataset.window}; evaluating {selection.how}: "
        f"{', '.join(p.name for p in selection.parts[:8])}"
    )
    for note in selection.notes:
        print(f"lesionseg evaluate: warning: {note}", file=sys.stderr)
    frames = capped({p.name: p.frames() for p in selection.parts}, args.max_frames, args.seed)
    report = evaluate_bundle(
        frames,
        bundle.directory,
        classes=dataset.classes,
        min_area=args.min_lesion_px,
        device=args.device,
    )
    if not report.frames:
        raise InputError(f"no frame to score in {', '.join(p.name for p in selection.parts)}")
    name = dataset.root.stem if dataset.root.is_file() else dataset.root.name
    # Not into the bundle: the shipped one is package data, and a bundle is what it serves.
    out = args.out or settings.cache_dir / "evaluations" / f"{bundle.name}-{name}"
    record = {
        "command": "lesionseg evaluate " + " ".join(argv),
        "bundle": report.models.get("bundle"),
        "models": report.models,
        "dataset": {
            "path": str(dataset.root),
            "format": dataset.format,
            "fingerprint": fingerprint,
            "classes": list(dataset.classes),
            "window": dataset.window,
        },
        "selection": {
            "how": selection.how,
            "parts": [p.name for p in selection.parts],
            "cases_scored": [c.name for c in report.cases],
            "max_frames": args.max_frames,
            "seed": args.seed,
            "notes": list(selection.notes),
        },
        "frames": report.frames,
        "protocol": {
            "min_lesion_px": report.min_area,
            "score_threshold": report.score_threshold,
            "score_floor": min(FLOOR, report.score_threshold),
            "counted_labels": list(report.counted_labels or []) or "every detector class",
            "froc_rates": list(FROC_RATES),
        },
        "rows": report.rows(),
        "froc": report.curves(),
        "versions": versions("numpy", "torch", "ultralytics"),
        "hardware": hardware(),
        **source,
        "seconds": round(time.time() - started, 1),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write(out, record, report)
    print(table(record["rows"]))
    print(f"-> {out}")
    return out


def _open(args: argparse.Namespace, settings: Settings, bundle_classes) -> Dataset:
    """The dataset with the labels and window asked for, else those the bundle implies."""
    labels = args.labels.split(",") if args.labels else None
    window = args.window
    if labels is None or window is None:
        probe = open_dataset(args.dataset, format=args.format, labels=labels)  # headers only
        if labels is None and set(bundle_classes) <= set(probe.classes):
            labels = list(bundle_classes)
        if window is None and _service_windows(probe, settings):
            window = settings.default_window
    return open_dataset(args.dataset, format=args.format, labels=labels, window=window)


def _service_windows(dataset: Dataset, settings: Settings) -> bool:
    """Whether the service would apply the bundle's window to these images: NIfTI always,
    DICOM of the bundle's modality (any, when it names none), 2-D images never."""
    if dataset.format == "nnunet":
        return True
    wanted = settings.default_window_modality
    return dataset.format == "dicom" and (not wanted or dataset.modality == wanted.upper())


def write(out: Path, record: dict, report: Report) -> None:
    """``evaluation.json``, ``.csv``, ``.md`` and ``froc.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(record, indent=1) + "\n")
    rows = record["rows"]
    with (out / "evaluation.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    protocol = record["protocol"]
    bundle = record["bundle"] or {}
    lines = [
        f"# {bundle.get('name')} on {record['dataset']['path']}",
        "",
        f"`{record['command']}`",
        "",
        table(rows),
        "",
        f"{record['frames']} slices of {record['selection']['how']}; lesions >= "
        f"{protocol['min_lesion_px']} px per slice. Lesion Dice, recall and false masks at the "
        f"bundle's score threshold {protocol['score_threshold']}; sensitivity at N false masks "
        f"per slice over thresholds down to {protocol['score_floor']}. Overall pools every "
        "lesion and slice.",
        "",
        f"Bundle fingerprint `{bundle.get('fingerprint')}`, dataset fingerprint "
        f"`{record['dataset']['fingerprint']}`, commit {record['git_commit']}"
        f"{' (dirty tree)' if record['git_dirty'] else ''}, {record['seconds']} s.",
        *_curve_ends(record),
        *(f"\nWarning: {note}" for note in record["selection"]["notes"]),
        "",
        "![FROC](froc.png)",
    ]
    (out / "evaluation.md").write_text("\n".join(lines) + "\n")
    curves = {c: (v["false_per_slice"], v["sensitivity"]) for c, v in record["froc"].items()}
    overall = rows[-1]
    point = None
    if overall["recall"] is not None:
        point = (overall["false_per_slice"], overall["recall"])
    froc_lines(
        out / "froc.png",
        curves,
        rates=FROC_RATES,
        operating_point=point,
        title=f"{bundle.get('name')}: FROC over {record['frames']} slices",
        dpi=110,
    )


def _curve_ends(record: dict) -> list[str]:
    """A line when the overall curve ends (at the floor) before a rate of the table."""
    end = record["froc"]["overall"]["end"]
    short = [f"{r:g}" for r in FROC_RATES if end is not None and end[0] < r]
    if not short:
        return []
    return [
        f"\nThe overall curve ends at {end[0]:.3g} false masks per slice (score "
        f"{record['protocol']['score_floor']}, the floor): the sensitivity at "
        f"{', '.join(short)} false masks per slice is the value there, a lower bound (no lower "
        "threshold was run)."
    ]


def table(rows: list[dict]) -> str:
    """The rows as a markdown table (None as a dash)."""
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["-" if row[k] is None else str(row[k]) for k in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
