"""The settings in force: :class:`~lesionseg.settings.Settings` with the model bundle applied.

``Settings`` reads the environment only; the bundle in force (``model_dir``, else the one
shipped in the package) is read here, once, by the entry point that makes the settings in
force (the CLI, the service's runner, the export and training scripts). From those settings
come the bundle's entry in a response, the export key and the export directory.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from lesionseg.models.bundle import RECORD_FILE, SHIPPED_BUNDLE, Bundle, cached_sha256
from lesionseg.settings import Settings

# Setting either of these keeps the bundle's SAM out: a family and a checkpoint go together.
_SAM_FIELDS = frozenset({"sam_family", "sam_path"})


def effective_settings(settings: Settings) -> Settings:
    """``settings`` with the bundle in force supplying every model field the user did not set
    (in the environment or the constructor): detector weights and image size, thresholds, box
    margin, SAM family and checkpoint, window and its modality; ``model_dir`` then names the
    bundle. Without ``model_dir`` the shipped bundle is in force where it is present (a bento
    has none: its runner points ``model_dir`` at the model store's copy).

    Reads and hashes the bundle's files (cached until they change); the result is validated
    again, so a bad window in model.json fails here.

    Raises:
        ModelLoadError: the bundle is missing or invalid (the message names the file).
        pydantic.ValidationError: a value the bundle supplies is invalid.
    """
    directory = settings.model_dir
    if directory is None:
        if not (SHIPPED_BUNDLE / RECORD_FILE).is_file():
            return settings
        directory = SHIPPED_BUNDLE
    bundle = Bundle.load(directory)
    explicit = settings.model_fields_set
    supplied = {k: v for k, v in bundle.settings_values().items() if k not in explicit}
    if explicit & _SAM_FIELDS:
        supplied = {k: v for k, v in supplied.items() if k not in _SAM_FIELDS}
    values = {**settings.model_dump(include=explicit), **supplied, "model_dir": bundle.directory}
    return type(settings)(**values)


def bundle_in_force(settings: Settings) -> Bundle | None:
    """The bundle of the settings in force (None when there is none, e.g. in a bento whose
    store models predate bundles)."""
    return Bundle.load(settings.model_dir) if settings.model_dir else None


def served_bundle(settings: Settings) -> dict | None:
    """The ``bundle`` entry of a response's ``models`` block: which bundle is served, and the
    values in force of the settings it supplies (an explicit setting may differ from it)."""
    bundle = bundle_in_force(settings)
    if bundle is None:
        return None
    return {
        "name": bundle.name,
        "fingerprint": bundle.fingerprint,
        "classes": list(bundle.classes),
        "score_threshold": settings.score_threshold,
        "box_margin": settings.box_margin,
        "window": settings.default_window,
        "modality": settings.default_window_modality,
    }


def export_key(settings: Settings) -> str:
    """Name of the export of the models in force, ``<bundle name>-<12 hex>``: a digest of the
    bundle's fingerprint, the detector and SAM weights in force (an explicit setting may replace
    the bundle's) and the options baked into the ONNX files. Other models -> another name, so a
    switch of bundle never serves stale files."""
    bundle = bundle_in_force(settings)
    sam_path = settings.sam_path
    parts = {
        "bundle": bundle.fingerprint if bundle else None,
        "detector": _identity(settings.detector_weights),
        "sam": [settings.sam_family, _identity(sam_path) if sam_path else "base"],
        "multimask": settings.multimask_output,
        "detector_image_size": settings.detector_image_size,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", bundle.name if bundle else "custom").strip("-.")
    return f"{name or 'bundle'}-{digest[:12]}"


def exports_dir(settings: Settings) -> Path:
    """Directory of the exported models in force: ``export_dir``, else
    ``cache_dir/exports/<export key>`` (:func:`export_key`)."""
    return settings.export_dir or settings.cache_dir / "exports" / export_key(settings)


def _identity(path: Path | None) -> str:
    """sha256 of a file; for a directory (a Hugging Face model) its file names, sizes and
    modification times; the path itself when missing (its loader will say so)."""
    if path is None:
        return "none"
    path = Path(path)
    if path.is_file():
        return cached_sha256(path)
    if path.is_dir():
        stats = sorted(
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in path.rglob("*")
            if p.is_file()
        )
        return hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    return f"missing:{path}"
