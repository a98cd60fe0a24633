"""Model bundles: the directory ``lesionseg train`` writes and the service serves.

A bundle holds ``model.json`` (format ``lesionseg-bundle/1``), ``detector.pt`` (ultralytics
YOLO weights whose ``names`` are the bundle's classes, in order; or, with
``detector.architecture`` ``"sam-head"``, a head over the SAM embedding,
:mod:`lesionseg.models.sam_head`) and optionally ``sam.pt`` (a LiteMedSAM fine-tune delta,
:mod:`lesionseg.models.sam_delta`; absent = the base LiteMedSAM). The shipped default is
``lesionseg/models/lits117/``, package data. The settings in force take the detector, SAM,
thresholds, box margin and window from the bundle in force
(``LESIONSEG_MODEL_DIR``) for every field the user did not set:
:func:`lesionseg.models.bundle_settings.effective_settings`.

Reading a bundle never imports torch or ultralytics, and never runs code from its files: the
class names are read from the checkpoint's pickle with every class replaced by a stub.
"""

from __future__ import annotations

import codecs
import collections
import copyreg
import functools
import hashlib
import io
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lesionseg.checksums import file_sha256
from lesionseg.errors import ModelLoadError
from lesionseg.models.sam_head import ARCHITECTURE as SAM_HEAD
from lesionseg.models.sam_head import HEAD_FORMAT

FORMAT = "lesionseg-bundle/1"
RECORD_FILE = "model.json"
BUNDLE_SUBDIR = "bundle"  # where an export or a BentoML store model keeps its bundle's copy
SHIPPED_BUNDLE = Path(__file__).resolve().parent / "lits117"  # package data (pyproject.toml)


class _DetectorRecord(BaseModel):
    weights: str = Field(min_length=1)
    architecture: str | None = None
    image_size: int = Field(ge=32, le=4096)
    score_threshold: float = Field(ge=0.0, le=1.0)
    box_margin: float = Field(0.0, ge=-0.25, le=1.0)
    nms_iou_threshold: float = Field(gt=0.0, le=1.0)


class _SamRecord(BaseModel):
    family: Literal["litemedsam", "hf"]
    weights: str | None = None
    recipe: str | None = None


class _Record(BaseModel):
    """The keys of model.json the server reads; the rest (metrics, training, ...) is kept."""

    model_config = ConfigDict(extra="allow")

    format: str
    name: str = Field(min_length=1)
    classes: list[str] = Field(min_length=1)
    detector: _DetectorRecord
    sam: _SamRecord
    window: str | None = None
    modality: str | None = None


@dataclass(frozen=True)
class DetectorConfig:
    """weights: the .pt file; image_size: inference size (px, longest side); score_threshold,
    box_margin (fraction of the box size, see lesionseg.transforms.expand_boxes) and
    nms_iou_threshold as tuned by training."""

    weights: Path
    image_size: int
    score_threshold: float
    box_margin: float
    nms_iou_threshold: float
    architecture: str | None = None


@dataclass(frozen=True)
class SamConfig:
    """family: 'litemedsam' or 'hf'; weights: a checkpoint or fine-tune delta, None = base."""

    family: str
    weights: Path | None
    recipe: str | None = None


@dataclass(frozen=True)
class Bundle:
    """A model bundle read and checked by :meth:`load`.

    Attributes:
        directory: the bundle's directory (absolute).
        name: its name (model.json ``name``).
        classes: lesion class names, index = detector class id.
        modality: the DICOM Modality it was trained on ("CT", "MR", ...; None: unknown), the
            uploads its window applies to.
        window: the intensity window its images were trained with (a preset or
            "center,width"), None = the file's own window / a min-max stretch.
        fingerprint: sha256 hex over model.json and the weight files (names and contents).
        record: the whole of model.json.
    """

    directory: Path
    name: str
    classes: tuple[str, ...]
    detector: DetectorConfig
    sam: SamConfig
    window: str | None
    modality: str | None
    fingerprint: str
    record: dict = field(repr=False, compare=False)

    @classmethod
    def load(cls, directory: Path | str) -> Bundle:
        """Read ``directory/model.json`` and check it against the weight files.

        Raises ModelLoadError (naming the file) for a missing directory or model.json, invalid
        JSON or keys, an unknown format version, missing weights, or classes that differ from
        the detector's names. Cached until a file in the directory changes.
        """
        directory = Path(directory).expanduser().resolve()
        if not directory.is_dir():
            raise ModelLoadError(
                f"model bundle {directory} not found: LESIONSEG_MODEL_DIR (or --model) must name "
                f"a directory written by `lesionseg train` ({RECORD_FILE}, detector.pt)"
            )
        stamp = tuple(
            sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in _files(directory))
        )
        return _load(directory, stamp)

    def settings_values(self) -> dict[str, object]:
        """The :class:`~lesionseg.settings.Settings` fields this bundle supplies (by name)."""
        return {
            "detector_weights": self.detector.weights,
            "detector_kind": "sam-head" if self.detector.architecture == SAM_HEAD else "yolo",
            "detector_image_size": self.detector.image_size,
            "score_threshold": self.detector.score_threshold,
            "box_margin": self.detector.box_margin,
            "nms_iou_threshold": self.detector.nms_iou_threshold,
            "sam_family": self.sam.family,
            "sam_path": self.sam.weights,
            "default_window": self.window,
            "default_window_modality": self.modality,
        }

    def files(self) -> list[Path]:
        """model.json and the weight files: what serving the bundle needs."""
        weights = [self.detector.weights, self.sam.weights]
        return [self.directory / RECORD_FILE, *(w for w in weights if w is not None)]

    def copy_to(self, target: Path) -> None:
        """Copy :meth:`files` into ``target`` (same names): a bundle with this fingerprint."""
        target = Path(target)
        for path in self.files():
            destination = target / path.relative_to(self.directory)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(path.read_bytes())


def detector_class_names(weights: Path) -> list[str]:
    """Class names of an ultralytics .pt checkpoint or a sam-head checkpoint
    (:mod:`lesionseg.models.sam_head_net`), in class-id order, without running it."""
    try:
        with zipfile.ZipFile(weights) as archive:
            member = next(n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl")
            checkpoint = _StubUnpickler(io.BytesIO(archive.read(member))).load()
        if isinstance(checkpoint, dict) and checkpoint.get("format") == HEAD_FORMAT:
            return [str(c) for c in checkpoint["config"]["classes"]]
        names = checkpoint["model"].__dict__["names"]
        if isinstance(names, list | tuple):
            names = dict(enumerate(names))
        return [str(names[i]) for i in sorted(int(k) for k in names)]
    except (OSError, zipfile.BadZipFile, StopIteration, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"cannot read {weights} as ultralytics weights: {exc}") from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ModelLoadError(
            f"{weights} holds no detector class names (model.names): save it with ultralytics"
        ) from exc


# --- internals ------------------------------------------------------------------------------


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_file()]


@functools.lru_cache(maxsize=16)
def _load(directory: Path, _stamp: tuple) -> Bundle:
    path = directory / RECORD_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found: {directory} is not a model bundle; write one with "
            "`lesionseg train DATASET --out DIR`"
        )
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    version = raw.get("format") if isinstance(raw, dict) else None
    if version != FORMAT:
        raise ModelLoadError(
            f"{path} has format {version!r}; this lesionseg reads {FORMAT!r}: retrain the "
            "bundle with this version's `lesionseg train`, or upgrade lesionseg"
        )
    try:
        record = _Record.model_validate(raw)
    except ValidationError as exc:
        raise ModelLoadError(f"{path} is not a valid bundle record: {exc}") from exc
    detector_weights = _inside(directory, record.detector.weights, path)
    sam_weights = _inside(directory, record.sam.weights, path) if record.sam.weights else None
    names = detector_class_names(detector_weights)
    if names != record.classes:
        raise ModelLoadError(
            f"{path} lists classes {record.classes} but {detector_weights.name} detects "
            f"{names}: write model.json and the weights from the same training run"
        )
    files = [path, detector_weights] + ([sam_weights] if sam_weights else [])
    lines = (f"{p.relative_to(directory).as_posix()}\0{cached_sha256(p)}\n" for p in files)
    return Bundle(
        directory=directory,
        name=record.name,
        classes=tuple(record.classes),
        detector=DetectorConfig(
            weights=detector_weights,
            image_size=record.detector.image_size,
            score_threshold=record.detector.score_threshold,
            box_margin=record.detector.box_margin,
            nms_iou_threshold=record.detector.nms_iou_threshold,
            architecture=record.detector.architecture,
        ),
        sam=SamConfig(record.sam.family, sam_weights, record.sam.recipe),
        window=record.window or None,
        modality=record.modality or None,
        fingerprint=hashlib.sha256("".join(lines).encode()).hexdigest(),
        record=raw,
    )


def _inside(directory: Path, name: str, record: Path) -> Path:
    """``directory/name``, which must exist inside the bundle."""
    path = (directory / name).resolve()
    if not path.is_relative_to(directory):
        raise ModelLoadError(f"{record} names {name!r}, outside the bundle: keep weights in it")
    if not path.exists():
        raise ModelLoadError(
            f"{record} names weights {name!r}, but {path} is missing: copy the whole bundle"
        )
    return path


def cached_sha256(path: Path) -> str:
    """sha256 hex of a file, hashed again only when its size or modification time changes."""
    stat = path.stat()
    return _cached_sha256(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, _mtime_ns: int, _size: int) -> str:
    return file_sha256(path)


class _Stub:
    """Stands in for every class in a checkpoint: keeps the pickled attributes, runs nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = state[0]
        if isinstance(state, dict):
            self.__dict__.update(state)


def _reconstruct(cls: type, base: type, state: object) -> object:
    if issubclass(cls, _Stub):
        return object.__new__(cls)
    return copyreg._reconstructor(cls, base, state)


_REAL_GLOBALS = {  # the only globals a checkpoint gets; every other one becomes a _Stub
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("copyreg", "_reconstructor"): _reconstruct,
    ("_codecs", "encode"): codecs.encode,
}


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        return _REAL_GLOBALS.get((module, name)) or type(name, (_Stub,), {})

    def persistent_load(self, pid: object) -> None:
        return None  # tensor storages: not needed for the names
