"""``python -m export onnx`` (CPU) and ``python -m export tensorrt`` (NVIDIA GPU).

onnx: SAM encoder (dynamic batch) and decoder (dynamic box count), YOLO detector (dynamic
batch), an optional int8 encoder, parity against PyTorch on LiTS validation slices, a record
(export.json) and an import into the BentoML store as ``lesionseg-exports``.
tensorrt: engines from those ONNX files, with sidecars.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from lesionseg.backends.onnx_runner import RECORD_FILE, OnnxSamRunner
from lesionseg.data import LitsCase
from lesionseg.detector import Detector, import_yolo
from lesionseg.provenance import git_commit, hardware, versions
from lesionseg.sam_models import load_sam
from lesionseg.segmenter import Segmenter
from lesionseg.settings import Settings
from lesionseg.transforms import preprocess

from .checks import detector_agreement, mask_agreement
from .onnx_sam import export_sam_onnx, sam_numeric_parity, sam_record

INT8_TOLERANCE = 0.01  # keep int8 only if lesion Dice drops by less than this


def export_onnx(settings: Settings, out_dir: Path, *, int8: bool = True) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    case = LitsCase(settings.cache_dir)
    modules = load_sam(settings.sam_family, settings.sam_path, multimask=settings.multimask_output)
    spec = modules.spec
    paths = export_sam_onnx(modules, out_dir)
    print(f"SAM -> {paths['encoder']}, {paths['decoder']}")
    record = {"sam": sam_record(spec, settings.multimask_output)}
    (out_dir / RECORD_FILE).write_text(json.dumps(record))  # the runner needs it to load

    images = np.stack(
        [
            preprocess(s.image, spec.image_size, spec.normalisation)
            for s in case.slices("val", step=14)
        ]
    )  # 2 slices
    runner = OnnxSamRunner(out_dir, multimask=settings.multimask_output)
    record["sam"]["embedding_shape"] = list(runner.encode(images[:1]).shape[1:])
    record["sam"]["parity"] = sam_numeric_parity(modules, runner, images)
    torch_segmenter = Segmenter.from_settings(settings)
    onnx_segmenter = Segmenter(runner, mask_threshold=settings.mask_threshold)
    record["sam"]["parity"].update(mask_agreement(torch_segmenter, onnx_segmenter, case))
    print("SAM parity:", json.dumps(record["sam"]["parity"]))

    if int8:
        record["sam"]["int8"] = try_int8(out_dir, settings, torch_segmenter, onnx_segmenter, case)

    shutil.copyfile(settings.detector_weights, out_dir / "detector.pt")
    onnx_path = import_yolo()(str(out_dir / "detector.pt")).export(
        format="onnx",
        dynamic=True,
        simplify=False,
        opset=17,
        batch=settings.max_batch_size,
        imgsz=settings.detector_image_size,
        device="cpu",
    )
    assert Path(onnx_path) == out_dir / "detector.onnx", onnx_path
    torch_detector = Detector.from_settings(settings)
    onnx_detector = Detector(
        out_dir / "detector.onnx",
        image_size=settings.detector_image_size,
        score_threshold=settings.score_threshold,
    )
    record["detector"] = {
        "source": Path(settings.detector_weights).name,
        "image_size": settings.detector_image_size,
        "parity": detector_agreement(torch_detector, onnx_detector, case),
    }
    print("detector parity:", json.dumps(record["detector"]["parity"]))
    record.update(
        git_commit=git_commit(),
        hardware=hardware(),
        versions=versions("torch", "onnx", "onnxruntime", "ultralytics"),
    )
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return record


def try_int8(
    out_dir: Path,
    settings: Settings,
    torch_segmenter: Segmenter,
    fp32_segmenter: Segmenter,
    case: LitsCase,
) -> dict:
    """ONNX Runtime dynamic int8 quantisation of the encoder, kept only if Dice holds."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = out_dir / "sam_encoder.int8.onnx"
    quantize_dynamic(out_dir / "sam_encoder.onnx", target, weight_type=QuantType.QInt8)
    int8 = Segmenter(
        OnnxSamRunner(out_dir, multimask=settings.multimask_output, encoder_file=target.name),
        mask_threshold=settings.mask_threshold,
    )
    result = mask_agreement(torch_segmenter, int8, case)
    drop = result["lesion_dice_torch"] - result["lesion_dice_exported"]
    result["kept"] = bool(drop < INT8_TOLERANCE)
    result["rule"] = f"kept when lesion Dice drops by < {INT8_TOLERANCE} against fp32"
    if not result["kept"]:
        target.unlink()
    print("int8:", json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("target", choices=["onnx", "tensorrt"])
    parser.add_argument("--out", type=Path, help="export directory (default: settings)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 encoder")
    parser.add_argument("--no-store", action="store_true", help="do not import into BentoML")
    args = parser.parse_args(argv)
    settings = Settings()
    out_dir = args.out or settings.exports()
    if args.target == "onnx":
        export_onnx(settings, out_dir, int8=not args.no_int8)
    else:
        from .tensorrt import build_detector_engine, build_sam_engines

        print(json.dumps(build_sam_engines(out_dir, settings), indent=1))
        print(json.dumps(build_detector_engine(out_dir, settings), indent=1))
    if not args.no_store:
        from service.model_store import import_exports

        print(import_exports(out_dir))


if __name__ == "__main__":
    main()
