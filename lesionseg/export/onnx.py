"""ONNX export of the models in force: SAM encoder (dynamic batch) and decoder (dynamic box
count), the detector (dynamic batch: a YOLO's ``detector.onnx``, or a sam-head bundle's head,
``detector-head.onnx``, :mod:`lesionseg.export.onnx_head`), an optional int8 encoder, parity
against PyTorch on LiTS validation slices, a copy of the model bundle (``bundle/``: model.json
and weights, so that what serves the export needs no repository) and a record (export.json).
The default directory is keyed by the models (:meth:`lesionseg.settings.Settings.exports`); SAM
files are reused from another export of the same SAM.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lesionseg.datasets.lits import LitsCase
from lesionseg.export.checks import detector_agreement, mask_agreement
from lesionseg.export.onnx_head import export_head
from lesionseg.export.onnx_sam import (
    DECODER_FILE,
    ENCODER_FILE,
    export_sam_onnx,
    sam_numeric_parity,
    sam_record,
)
from lesionseg.models.backends.onnx_runner import RECORD_FILE, OnnxSamRunner, export_is_current
from lesionseg.models.bundle import BUNDLE_SUBDIR
from lesionseg.models.bundle_settings import bundle_in_force, export_key, exports_dir
from lesionseg.models.detector import Detector, import_yolo
from lesionseg.models.detectors import HEAD_ONNX
from lesionseg.models.sam import SamModules, load_sam
from lesionseg.models.segmenter import Segmenter
from lesionseg.provenance import git_commit, hardware, versions
from lesionseg.settings import Settings
from lesionseg.transforms import preprocess

INT8_TOLERANCE = 0.01  # keep int8 only if lesion Dice drops by less than this
INT8_FILE = "sam_encoder.int8.onnx"


def export_onnx(
    settings: Settings, out_dir: Path, *, int8: bool = True, sam_from: Sequence[Path] = ()
) -> dict:
    """Export the models in force to ``out_dir``; SAM files of an export in ``sam_from`` with
    the same SAM (weights sha256, options) are copied instead of exported again."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RECORD_FILE).unlink(missing_ok=True)  # an interrupted export is never current
    torch_settings = settings.model_copy(update={"backend": "torch"})  # the parity reference
    case = LitsCase(settings.cache_dir)
    modules = load_sam(settings.sam_family, settings.sam_path, multimask=settings.multimask_output)
    sam = sam_record(modules.spec, settings.multimask_output)
    reused = reuse_sam(sam, sam_from, out_dir)
    if reused is None:
        sam = export_sam(modules, sam, torch_settings, out_dir, case, int8=int8)
    else:
        sam = reused
        print(f"SAM: reused the export in {sam['reused_from']}")
    record = {"sam": sam}
    (out_dir / RECORD_FILE).write_text(json.dumps(record))  # the runner needs it to load

    if settings.detector_kind == "sam-head":
        for name in ("detector.pt", "detector.onnx"):  # a YOLO export's, in an explicit --out
            (out_dir / name).unlink(missing_ok=True)
        record["detector"] = export_head(torch_settings, out_dir, case)
    else:
        (out_dir / HEAD_ONNX).unlink(missing_ok=True)
        record["detector"] = export_yolo(settings, torch_settings, out_dir, case)

    shutil.rmtree(out_dir / BUNDLE_SUBDIR, ignore_errors=True)
    if (bundle := bundle_in_force(settings)) is not None:
        bundle.copy_to(out_dir / BUNDLE_SUBDIR)
        record["bundle"] = {
            "name": bundle.name,
            "fingerprint": bundle.fingerprint,
            "directory": BUNDLE_SUBDIR,
            "source": str(bundle.directory),
        }
    record.update(
        key=export_key(settings),
        git_commit=git_commit(),
        hardware=hardware(),
        versions=versions("torch", "onnx", "onnxruntime", "ultralytics"),
    )
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return record


def export_yolo(
    settings: Settings, torch_settings: Settings, out_dir: Path, case: LitsCase
) -> dict:
    """The YOLO detector to ``detector.onnx`` through ultralytics (dynamic batch), checked
    against ultralytics on the .pt (``torch_settings``); returns the "detector" record."""
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
    # ultralytics on the .pt against what is served: onnxruntime + the library's numpy decoding
    torch_detector = Detector.from_settings(torch_settings)
    onnx_detector = Detector.from_settings(
        settings.model_copy(update={"backend": "onnxruntime", "export_dir": out_dir})
    )
    record = {
        "source": Path(settings.detector_weights).name,
        "image_size": settings.detector_image_size,
        "classes": [onnx_detector.names[k] for k in sorted(onnx_detector.names)],
        "parity": detector_agreement(torch_detector, onnx_detector, case),
        "parity_at_floor": detector_agreement(
            torch_detector, onnx_detector, case, score_threshold=settings.detector_score_floor
        ),
    }
    print(
        "detector parity:",
        json.dumps({k: record[k] for k in ("parity", "parity_at_floor")}),
    )
    return record


def export_sam(
    modules: SamModules, sam: dict, settings: Settings, out_dir: Path, case: LitsCase, *, int8: bool
) -> dict:
    """SAM encoder and decoder to ONNX, checked against PyTorch (``settings``: backend torch);
    returns the "sam" record."""
    spec = modules.spec
    paths = export_sam_onnx(modules, out_dir)
    print(f"SAM -> {paths['encoder']}, {paths['decoder']}")
    record = {"sam": sam}
    (out_dir / RECORD_FILE).write_text(json.dumps(record))  # the runner needs it to load

    images = np.stack(
        [
            preprocess(s.image, spec.image_size, spec.normalisation)
            for s in case.slices("val", step=14)
        ]
    )  # 2 slices
    runner = OnnxSamRunner(out_dir, multimask=settings.multimask_output)
    sam = {**sam, "embedding_shape": list(runner.encode(images[:1]).shape[1:])}
    sam["parity"] = sam_numeric_parity(modules, runner, images)
    torch_segmenter = Segmenter.from_settings(settings)
    onnx_segmenter = Segmenter(runner, mask_threshold=settings.mask_threshold)
    sam["parity"].update(mask_agreement(torch_segmenter, onnx_segmenter, case))
    print("SAM parity:", json.dumps(sam["parity"]))
    (out_dir / INT8_FILE).unlink(missing_ok=True)
    if int8:
        sam["int8"] = try_int8(out_dir, settings, torch_segmenter, onnx_segmenter, case)
    return sam


def reuse_sam(sam: dict, candidates: Sequence[Path], out_dir: Path) -> dict | None:
    """Copy the SAM files of a finished export in ``candidates`` whose SAM record matches
    ``sam`` (same weights sha256 and options); return its "sam" record, or None."""
    for directory in map(Path, candidates):
        path = directory / RECORD_FILE
        if not path.is_file() or directory.resolve() == out_dir.resolve():
            continue
        record = json.loads(path.read_text())
        old = record.get("sam", {})
        files = [ENCODER_FILE, DECODER_FILE]
        files += [INT8_FILE] if old.get("int8", {}).get("kept") else []
        if (
            "key" in record  # a finished export of this exporter
            and {k: old.get(k) for k in sam} == sam
            and all((directory / name).is_file() for name in files)
        ):
            (out_dir / INT8_FILE).unlink(missing_ok=True)
            for name in files:
                shutil.copyfile(directory / name, out_dir / name)
            return {**old, "reused_from": str(directory)}
    return None


def sibling_exports(settings: Settings) -> list[Path]:
    """Earlier exports under cache_dir/exports: where SAM files may be reused from."""
    root = settings.cache_dir / "exports"
    return sorted(p.parent for p in root.glob("*/" + RECORD_FILE))


def ensure_onnx(settings: Settings, *, announce: Callable[[str], None] | None = None) -> Path:
    """The ONNX export of the models in force, exported now (no int8) when missing or stale;
    ``announce`` hears what is about to happen. Returns its directory."""
    out_dir = exports_dir(settings)
    if not export_is_current(out_dir, export_key(settings)):
        bundle = bundle_in_force(settings)
        if announce is not None:
            name = bundle.name if bundle else Path(settings.detector_weights).name
            announce(f"exporting {name} to ONNX on first use (~1 min) -> {out_dir}")
        export_onnx(settings, out_dir, int8=False, sam_from=sibling_exports(settings))
    return out_dir


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
