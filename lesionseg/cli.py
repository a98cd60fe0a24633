"""Command line: ``lesionseg predict``, ``train``, ``evaluate``, ``fetch-data``, ``example``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lesionseg.errors import InputError, LesionSegError

if TYPE_CHECKING:
    from lesionseg.settings import Settings


def _predict(args: argparse.Namespace) -> int:
    import asyncio

    from lesionseg.models.bundle_settings import effective_settings
    from lesionseg.outputs.overlay import draw_overlay
    from lesionseg.outputs.result_json import response_body
    from lesionseg.pipeline.inputs import read_uploads
    from lesionseg.pipeline.local import describe_models, local_engine
    from lesionseg.pipeline.prediction import Options
    from lesionseg.settings import Settings

    overrides = {
        k: v
        for k, v in {
            "model_dir": args.model,
            "score_threshold": args.score_threshold,
            "refine_iterations": args.refine_iterations,
            "device": args.device,
        }.items()
        if v is not None
    }
    settings = effective_settings(Settings(**overrides))
    paths = [Path(p) for p in args.image]
    uploads = read_uploads(settings, paths, args.window)
    boxes = None
    if args.boxes is not None:
        boxes = json.loads(
            Path(args.boxes).read_text() if Path(args.boxes).is_file() else args.boxes
        )
    if args.propagate and boxes is None:
        raise InputError("--propagate needs --boxes: one [x0, y0, x1, y1, frame] per lesion")
    _ensure_export(settings)
    engine, models = local_engine(
        settings, score_threshold=args.score_threshold, with_detector=boxes is None
    )
    # The service's engine and JSON (lesionseg.pipeline.engine, lesionseg.outputs.result_json).
    prediction = asyncio.run(engine.run(uploads, Options(boxes, args.propagate)))
    body = response_body(
        uploads,
        prediction.results,
        describe_models(settings, models.segmenter, models.detector),
        lesion_ids=prediction.lesion_ids,
        lesions_3d=prediction.lesions_3d,
    )
    frames = [f for u in uploads for f in u.frames]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(paths[0].name.removesuffix(".gz")).stem
    if prediction.volume:  # the service's multi-frame response; overlays of frames with lesions
        overlays = {
            out / f"{stem}.frame{i:03d}.overlay.png": i
            for i, r in enumerate(prediction.results)
            if r.lesions
        }
    else:
        overlays = {out / f"{stem}.overlay.png": 0}
    (out / f"{stem}.json").write_text(json.dumps(body, indent=1))
    for path, index in overlays.items():
        path.write_bytes(draw_overlay(frames[index].pixels, prediction.results[index]))
    found = sum(len(r.lesions) for r in prediction.results)
    where = f" in {len(frames)} frames" if prediction.volume else ""
    print(f"{found} lesion(s){where} -> {out / (stem + '.json')}, {len(overlays)} overlay PNG(s)")
    return 0


def _ensure_export(settings: Settings) -> None:
    """The openvino and onnxruntime backends run the ONNX export of the models in force: on a
    fresh set-up (or with a new bundle) export it now, once, and say so."""
    if settings.backend not in ("openvino", "onnxruntime"):
        return
    from lesionseg.export.onnx import ensure_onnx

    with contextlib.redirect_stdout(sys.stderr):  # stdout is the result line
        ensure_onnx(settings, announce=lambda message: print(f"lesionseg: {message}"))


def _example(args: argparse.Namespace) -> int:
    from lesionseg.datasets.examples import write_examples
    from lesionseg.datasets.lits import LitsCase
    from lesionseg.settings import Settings

    case = LitsCase(Settings().cache_dir)
    for path in write_examples(case, Path(args.out), args.slice):
        print(path)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from lesionseg.datasets.examples import write_lits_nnunet
    from lesionseg.datasets.lits import LitsCase, fetch_lits
    from lesionseg.settings import Settings

    cache = Settings().cache_dir
    print(fetch_lits(cache))
    if args.nnunet:
        print(write_lits_nnunet(LitsCase(cache), Path(args.nnunet)))
    return 0


def main(argv: list[str] | None = None) -> int:
    from lesionseg.settings import check_environment

    argv = sys.argv[1:] if argv is None else argv
    try:
        check_environment()  # a mistyped LESIONSEG_* variable would otherwise be ignored
    except LesionSegError as exc:
        print(f"lesionseg: error: {exc}", file=sys.stderr)
        return 2
    if argv[:1] == ["train"]:  # its own parser: `lesionseg train --help`
        from lesionseg.train.train import main as train

        return train(argv[1:])
    if argv[:1] == ["evaluate"]:  # its own parser too
        from lesionseg.train.evaluate_command import main as evaluate

        return evaluate(argv[1:])
    parser = argparse.ArgumentParser(prog="lesionseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "predict", help="segment an image or a volume; write the API's JSON and overlay PNGs"
    )
    p.add_argument(
        "image",
        nargs="+",
        help="PNG, JPEG, TIFF, DICOM or NIfTI file (told apart by content), or the DICOM files "
        "of one series",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="model bundle directory written by `lesionseg train` (default: LESIONSEG_MODEL_DIR, "
        "else the shipped bundle)",
    )
    p.add_argument(
        "--window",
        help="DICOM/NIfTI intensity window, a preset or 'center,width' (default: the bundle's)",
    )
    p.add_argument(
        "--boxes",
        help="JSON list of [x0, y0, x1, y1] (or a file holding it; [x0, y0, x1, y1, frame] for "
        "volumes): segment these boxes instead of running the detector",
    )
    p.add_argument(
        "--propagate",
        action="store_true",
        help="carry each box ([x0, y0, x1, y1, frame], one per lesion) through the volume",
    )
    p.add_argument("--out", default="out", help="output directory (default: out)")
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--refine-iterations", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.set_defaults(func=_predict)
    e = sub.add_parser(
        "example", help="write a LiTS validation slice as PNG, a 3-slice CT DICOM series, NIfTI"
    )
    e.add_argument("--slice", type=int, default=110)
    e.add_argument("--out", default="data/examples", help="directory")
    e.set_defaults(func=_example)
    sub.add_parser(
        "train",
        help="train the detector and SAM on a labelled dataset and write a model bundle "
        "(`lesionseg train --help`)",
    )
    sub.add_parser(
        "evaluate",
        help="score a model bundle on a labelled dataset, fully automatic: lesion Dice, recall, "
        "false masks per slice, FROC (`lesionseg evaluate --help`)",
    )
    f = sub.add_parser("fetch-data", help="fetch and verify the LiTS case into the cache")
    f.add_argument(
        "--nnunet", help="also write the case as an nnU-Net v2 dataset here (for `train`)"
    )
    f.set_defaults(func=_fetch)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (LesionSegError, json.JSONDecodeError, OSError) as exc:
        print(f"lesionseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
