"""Settings baked into an export: fixed when `make export` / `make engines` ran, refused when
the settings in force ask for another value.

``python -m export onnx`` writes ``export.json`` (the record) beside the ONNX files and
``python -m export tensorrt`` a ``<name>.engine.json`` sidecar beside each engine; the values
below are read from them. The CLI re-exports into a new directory when one of them changes (the
default export directory is keyed by them: :func:`lesionseg.models.bundle_settings.export_key`);
a service serves the export it was given (the BentoML store's), so there a changed value is
refused at load by :func:`check_baked_settings`, and ``python -m service.doctor`` reports it
before the start. Here, in the models floor, because the loaders call it; the settings page
(docs/settings_page.py) marks these fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lesionseg.errors import ModelLoadError
from lesionseg.models.backends.onnx_runner import RECORD_FILE, check_fp32
from lesionseg.settings import Settings

EXPORTED_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
# What serves the store's copy (a bento, an image) needs `make models` and a new build after.
REEXPORT = (
    "re-export (`make export models`: python -m export onnx, python -m service.model_store; "
    "then build the bento or image again)"
)
REBUILD = "rebuild the engines (`make engines models`: python -m export tensorrt)"


@dataclass(frozen=True)
class Baked:
    """Where an export holds one setting: which backends run it and the file that records it."""

    backends: tuple[str, ...]
    recorded_in: str
    how_to_change: str


# The one list of settings fixed by an export (field name -> where).
BAKED_INTO_EXPORT: dict[str, Baked] = {
    "multimask_output": Baked(
        EXPORTED_BACKENDS, "export.json sam.multimask (the SAM decoder's outputs)", REEXPORT
    ),
    "detector_image_size": Baked(
        EXPORTED_BACKENDS,
        "export.json detector.image_size (the YOLO detector's size, parity-checked at it)",
        REEXPORT,
    ),
    "max_lesions": Baked(
        ("tensorrt",),
        "sam_decoder.engine.json profiles.boxes max (the decoder engine's box profile)",
        REBUILD,
    ),
    "precision": Baked(
        ("onnxruntime", "tensorrt"),
        "the fp32 ONNX files (onnxruntime); sam_encoder.engine.json precision (tensorrt)",
        "use another backend (onnxruntime runs fp32 only) or " + REBUILD,
    ),
}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def baked_mismatches(settings: Settings, directory: Path) -> list[str]:
    """One sentence per setting of :data:`BAKED_INTO_EXPORT` whose value in ``settings`` differs
    from the export in ``directory`` for ``settings.backend`` (none for torch, or where the
    export records no value: a missing export is the loaders' to report). Each sentence names
    the variable, both values, the file that holds the export's and how to change it."""
    backend = settings.backend
    if backend not in EXPORTED_BACKENDS:
        return []
    directory = Path(directory)
    record = _read_json(directory / RECORD_FILE) or {}
    exported: dict[str, object] = {}
    if "multimask" in record.get("sam", {}):
        exported["multimask_output"] = bool(record["sam"]["multimask"])
    if "image_size" in record.get("detector", {}):  # a sam-head's has none: SAM's size
        exported["detector_image_size"] = int(record["detector"]["image_size"])
    problems = [
        _sentence(name, value, getattr(settings, name), directory)
        for name, value in exported.items()
        if value != getattr(settings, name)
    ]
    if backend == "tensorrt":
        problems += _engine_mismatches(settings, directory)
    elif backend == "onnxruntime":
        try:
            check_fp32(settings.precision)
        except ModelLoadError as exc:
            problems.append(str(exc))
    return problems


def _engine_mismatches(settings: Settings, directory: Path) -> list[str]:
    """max_lesions above the decoder engine's box profile; a precision the engines lack."""
    problems = []
    decoder = _read_json(directory / "sam_decoder.engine.json") or {}
    boxes = decoder.get("profiles", {}).get("boxes", {}).get("max")
    if boxes and settings.max_lesions > int(boxes[0]):
        problems.append(
            _sentence("max_lesions", f"at most {boxes[0]}", settings.max_lesions, directory)
        )
    encoder = _read_json(directory / "sam_encoder.engine.json") or {}
    built = str(encoder.get("precision", ""))
    if built and settings.precision != "auto" and not built.startswith(settings.precision):
        problems.append(_sentence("precision", built, settings.precision, directory))
    return problems


def _sentence(name: str, exported: object, in_force: object, directory: Path) -> str:
    baked = BAKED_INTO_EXPORT[name]
    shown = str(in_force).lower() if isinstance(in_force, bool) else in_force
    was = str(exported).lower() if isinstance(exported, bool) else exported
    return (
        f"LESIONSEG_{name.upper()}={shown} but the export in {directory} was made with "
        f"{was} ({baked.recorded_in}): set it back (unset the variable) or {baked.how_to_change}"
        f" with LESIONSEG_{name.upper()}={shown}"
    )


def check_baked_settings(settings: Settings, directory: Path) -> None:
    """Raise :class:`ModelLoadError` with :func:`baked_mismatches`' sentences, if any."""
    problems = baked_mismatches(settings, directory)
    if problems:
        raise ModelLoadError("; ".join(problems))
