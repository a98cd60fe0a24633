"""A sam-head bundle made of the SAM head that ``lesionseg train --detector auto`` trained and
did not select: the head's weights from the source bundle's ``logs/``, the score threshold and
box margin tuned for it (its "sam-head detector, SAM zero-shot (tuned)" row) and SAM zero-shot,
the pair it was scored with (a head reads the frozen encoder's embedding, which a LoRA changes).

For the cost benchmark with a trained head's box counts (``benchmarks/detectors.py``):

    python -m benchmarks.detectors --head-of lesionseg/models/lits117  # made in a temp dir
    python -m benchmarks.trained_head lesionseg/models/lits117 .cache/lits117-sam-head  # kept
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from lesionseg.errors import LesionSegError
from lesionseg.models.bundle import RECORD_FILE

ROW = "automatic, sam-head detector, SAM zero-shot (tuned)"


def write_trained_head_bundle(source: Path, directory: Path) -> Path:
    """``directory`` as the sam-head bundle of ``source``'s not-selected head.

    Raises:
        LesionSegError: ``source`` trained no SAM head, or kept it as its detector (serve
            ``source`` itself then), or has no tuned row for it.
    """
    source, directory = Path(source), Path(directory)
    record = json.loads((source / RECORD_FILE).read_text())
    head = record.get("detectors", {}).get("sam-head")
    if head is None:
        raise LesionSegError(
            f"{source} trained no SAM head (its model.json has no detectors.sam-head)"
        )
    if head["weights"] == "detector.pt":
        raise LesionSegError(f"{source} selected its SAM head: serve {source} itself")
    rows = [row for row in record["metrics"]["table"] if row.get("row") == ROW]
    if not rows:
        raise LesionSegError(f"{source}'s metrics table has no {ROW!r} row")
    (row,) = rows
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / head["weights"], directory / "detector.pt")
    keep = ("architecture", "image_size", "context", "epochs_run", "epochs_asked", "start")
    record["name"] = f"{record['name']}-sam-head"
    record["detector"] = {key: head[key] for key in keep if key in head} | {
        "weights": "detector.pt",
        "selected": "sam-head",
        "from": f"{source.name}/{head['weights']} (not selected by its training)",
        "score_threshold": row["score_threshold"],
        "box_margin": row["box_margin"],
        "nms_iou_threshold": record["detector"].get("nms_iou_threshold", 0.5),
    }
    record["sam"] = {"family": record["sam"]["family"], "weights": None, "selected": "zero-shot"}
    (directory / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a bundle trained with --detector auto")
    parser.add_argument("out", type=Path, help="the sam-head bundle to write")
    args = parser.parse_args(argv)
    print(write_trained_head_bundle(args.source, args.out))


if __name__ == "__main__":
    main()
