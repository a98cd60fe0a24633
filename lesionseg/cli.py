"""Command line: ``lesionseg predict``, ``lesionseg fetch-data``, ``lesionseg example``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LesionSegError


def _predict(args: argparse.Namespace) -> int:
    from .imaging import decode_image
    from .pipeline import LesionPipeline
    from .report import draw_overlay, result_to_dict
    from .settings import Settings

    overrides = {
        k: v
        for k, v in {
            "score_threshold": args.score_threshold,
            "refine_iterations": args.refine_iterations,
            "device": args.device,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    image = decode_image(
        Path(args.image).read_bytes(),
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_upload_bytes,
    )
    pipeline = LesionPipeline.from_settings(settings, with_detector=args.boxes is None)
    if args.boxes is None:
        result = pipeline.segment([image])[0]
    else:
        boxes = json.loads(
            Path(args.boxes).read_text() if Path(args.boxes).is_file() else args.boxes
        )
        result = pipeline.segment_boxes([image], [boxes])[0]
    spec = pipeline.segmenter.spec
    models = {"sam": {"family": spec.family, "name": spec.name, "sha256": spec.sha256}}
    if pipeline.detector is not None:
        models["detector"] = {"weights": pipeline.detector.weights.name}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    (out / f"{stem}.json").write_text(json.dumps(result_to_dict(result, models), indent=1))
    (out / f"{stem}.overlay.png").write_bytes(draw_overlay(image.pixels, result))
    print(
        f"{len(result.lesions)} lesion(s) -> {out / (stem + '.json')}, "
        f"{out / (stem + '.overlay.png')}"
    )
    return 0


def _example(args: argparse.Namespace) -> int:
    from .data import LitsCase
    from .examples import write_examples
    from .settings import Settings

    case = LitsCase(Settings().cache_dir)
    for path in write_examples(case, Path(args.out), args.slice):
        print(path)
    return 0


def _fetch(_: argparse.Namespace) -> int:
    from .data import fetch_lits
    from .settings import Settings

    print(fetch_lits(Settings().cache_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lesionseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="segment one image; write result JSON and overlay PNG")
    p.add_argument("image", help="PNG, JPEG or TIFF file")
    p.add_argument(
        "--boxes",
        help="JSON list of [x0, y0, x1, y1] (or a file holding it): "
        "segment these boxes instead of running the detector",
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
    f = sub.add_parser("fetch-data", help="fetch and verify the LiTS case into the cache")
    f.set_defaults(func=_fetch)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (LesionSegError, json.JSONDecodeError, OSError) as exc:
        print(f"lesionseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
