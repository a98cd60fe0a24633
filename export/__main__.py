"""``python -m export onnx`` (CPU) and ``python -m export tensorrt`` (NVIDIA GPU): thin scripts over
:mod:`lesionseg.export`.

onnx: :func:`lesionseg.export.onnx.export_onnx` of the models in force; ``--if-stale`` exports only
when that export is missing or incomplete. tensorrt: engines from those ONNX files, with sidecars.
Importing an export into the BentoML store is the service's business (``make models``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lesionseg.export.onnx import export_onnx, sibling_exports
from lesionseg.models.backends.onnx_runner import export_is_current
from lesionseg.models.bundle_settings import effective_settings, export_key, exports_dir
from lesionseg.settings import Settings, check_environment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("target", choices=["onnx", "tensorrt"])
    parser.add_argument("--out", type=Path, help="export directory (default: settings)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 encoder")
    parser.add_argument(
        "--if-stale",
        action="store_true",
        help="onnx: export only when the directory holds no finished export of the models in "
        "force (LESIONSEG_MODEL_DIR and the model settings)",
    )
    args = parser.parse_args(argv)
    check_environment()
    settings = effective_settings(Settings())
    out_dir = args.out or exports_dir(settings)
    if args.target == "onnx":
        if args.if_stale and export_is_current(out_dir, export_key(settings)):
            print(f"{out_dir}: up to date", file=sys.stderr)
        else:
            siblings = sibling_exports(settings)
            export_onnx(settings, out_dir, int8=not args.no_int8, sam_from=siblings)
    elif settings.detector_kind == "sam-head":
        raise SystemExit(
            "python -m export tensorrt: a sam-head bundle's detector has no TensorRT runner; "
            "serve it with LESIONSEG_BACKEND=onnxruntime (CUDA or CPU), openvino or torch"
        )
    else:
        from lesionseg.export.tensorrt import build_detector_engine, build_sam_engines

        print(json.dumps(build_sam_engines(out_dir, settings), indent=1))
        print(json.dumps(build_detector_engine(out_dir, settings), indent=1))


if __name__ == "__main__":
    main()
