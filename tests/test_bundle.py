"""Model bundles: the reader's checks, the fingerprint, and what the settings in force take from
a bundle (lesionseg.models.bundle_settings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from lesionseg.errors import ModelLoadError
from lesionseg.models import bundle_settings
from lesionseg.models.bundle import FORMAT, SHIPPED_BUNDLE, Bundle, detector_class_names
from lesionseg.models.bundle_settings import (
    bundle_in_force,
    effective_settings,
    exports_dir,
    served_bundle,
)
from lesionseg.settings import Settings


def write_bundle(directory: Path, **changes) -> Path:
    """A copy of the shipped bundle with model.json keys replaced (dicts merged one level).
    Its SAM fine-tune is copied too unless the caller's ``sam`` names other weights."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHIPPED_BUNDLE / "detector.pt", directory / "detector.pt")
    if (SHIPPED_BUNDLE / "sam.pt").is_file() and not (directory / "sam.pt").exists():
        shutil.copyfile(SHIPPED_BUNDLE / "sam.pt", directory / "sam.pt")
    record = json.loads((SHIPPED_BUNDLE / "model.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(record.get(key), dict):
            record[key] = {**record[key], **value}
        else:
            record[key] = value
    (directory / "model.json").write_text(json.dumps(record))
    return directory


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "sam.pt").write_bytes(b"a fine-tune delta")
    return write_bundle(
        tmp_path / "b",
        name="brain-mr",
        detector={"score_threshold": 0.4, "box_margin": 0.1, "image_size": 320},
        sam={"weights": "sam.pt", "recipe": "lora"},
        window="liver",
    )


@pytest.fixture(autouse=True)
def no_lesionseg_env(monkeypatch):
    for name in ("MODEL_DIR", "SCORE_THRESHOLD", "DEFAULT_WINDOW", "SAM_PATH", "EXPORT_DIR"):
        monkeypatch.delenv(f"LESIONSEG_{name}", raising=False)


def test_the_shipped_bundle_reads():
    bundle = Bundle.load(SHIPPED_BUNDLE)
    assert bundle.record["format"] == FORMAT and bundle.name
    assert bundle.classes == tuple(detector_class_names(bundle.detector.weights))
    assert bundle.detector.weights == SHIPPED_BUNDLE / "detector.pt"
    assert len(bundle.fingerprint) == 64


def test_a_bundle_reads_with_its_values(bundle_dir):
    bundle = Bundle.load(bundle_dir)
    shipped = Bundle.load(SHIPPED_BUNDLE)
    assert (bundle.name, bundle.classes, bundle.window) == ("brain-mr", shipped.classes, "liver")
    assert bundle.detector.score_threshold == 0.4 and bundle.detector.box_margin == 0.1
    assert bundle.sam.weights == bundle_dir / "sam.pt" and bundle.sam.recipe == "lora"
    assert [p.name for p in bundle.files()] == ["model.json", "detector.pt", "sam.pt"]


def test_fingerprint_follows_the_files_not_the_place(bundle_dir, tmp_path):
    before = Bundle.load(bundle_dir).fingerprint
    Bundle.load(bundle_dir).copy_to(tmp_path / "copy")
    assert Bundle.load(tmp_path / "copy").fingerprint == before
    (bundle_dir / "sam.pt").write_bytes(b"another delta")
    assert Bundle.load(bundle_dir).fingerprint != before
    write_bundle(bundle_dir, name="brain-mr", sam={"weights": "sam.pt"}, window="lung")
    assert Bundle.load(bundle_dir).window == "lung"


def broken(directory: Path, case: str) -> str:
    """Break a bundle one way; return a piece of the expected message."""
    record = directory / "model.json"
    if case == "no directory":
        shutil.rmtree(directory)
        return "not found"
    if case == "no model.json":
        record.unlink()
        return "model.json not found"
    if case == "not JSON":
        record.write_text("{nope")
        return "not valid JSON"
    if case == "unknown format":
        write_bundle(directory, format="lesionseg-bundle/9")
        return "lesionseg-bundle/9"
    if case == "no detector weights":
        (directory / "detector.pt").unlink()
        return "detector.pt"
    if case == "no sam weights":
        write_bundle(directory, sam={"weights": "sam.pt"})
        (directory / "sam.pt").unlink(missing_ok=True)
        return "sam.pt"
    if case == "weights outside":
        write_bundle(directory, detector={"weights": "../detector.pt"})
        return "outside the bundle"
    if case == "other classes":
        write_bundle(directory, classes=["not-its-class"])
        return str(list(Bundle.load(SHIPPED_BUNDLE).classes))  # what detector.pt says
    if case == "bad threshold":
        write_bundle(directory, detector={"score_threshold": 2})
        return "score_threshold"
    assert case == "not a checkpoint"
    (directory / "detector.pt").write_bytes(b"not a zip")
    return "ultralytics weights"


CASES = [
    "no directory",
    "no model.json",
    "not JSON",
    "unknown format",
    "no detector weights",
    "no sam weights",
    "weights outside",
    "other classes",
    "bad threshold",
    "not a checkpoint",
]


@pytest.mark.parametrize("case", CASES)
def test_a_broken_bundle_fails_loudly_naming_it(tmp_path, case):
    directory = write_bundle(tmp_path / "b")
    expected = broken(directory, case)
    with pytest.raises(ModelLoadError) as info:
        Bundle.load(directory)
    assert expected in str(info.value) and str(directory) in str(info.value)


def effective(**fields) -> Settings:
    return effective_settings(Settings(**fields))


def test_settings_take_the_bundle(bundle_dir):
    settings = effective(model_dir=bundle_dir)
    assert bundle_in_force(settings).name == "brain-mr"
    assert settings.detector_weights == bundle_dir / "detector.pt"
    assert (settings.score_threshold, settings.box_margin) == (0.4, 0.1)
    assert settings.detector_image_size == 320 and settings.default_window == "liver"
    assert (settings.sam_family, settings.sam_path) == ("litemedsam", bundle_dir / "sam.pt")
    assert effective_settings(settings) == settings  # applying it again changes nothing


def test_settings_alone_read_no_bundle(tmp_path):
    settings = Settings(model_dir=tmp_path / "missing")  # constructing reads no file
    assert settings.detector_weights is None and settings.score_threshold == 0.25
    with pytest.raises(ModelLoadError, match="missing"):
        effective_settings(settings)


def test_without_model_dir_the_shipped_bundle_is_in_force():
    settings = effective()
    shipped = Bundle.load(SHIPPED_BUNDLE)
    assert settings.model_dir == SHIPPED_BUNDLE
    assert settings.detector_weights == shipped.detector.weights
    assert settings.default_window == shipped.window and settings.sam_path == shipped.sam.weights


def test_without_a_shipped_bundle_the_settings_stay_as_they_are(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_settings, "SHIPPED_BUNDLE", tmp_path)  # as in a bento
    settings = Settings(score_threshold=0.5)
    assert effective_settings(settings) is settings and bundle_in_force(settings) is None


def test_explicit_settings_win_over_the_bundle(bundle_dir, monkeypatch):
    monkeypatch.setenv("LESIONSEG_MODEL_DIR", str(bundle_dir))
    monkeypatch.setenv("LESIONSEG_SCORE_THRESHOLD", "0.6")
    monkeypatch.setenv("LESIONSEG_DEFAULT_WINDOW", "")  # no default: the file's window
    settings = effective(box_margin=0.0)
    assert settings.model_dir == bundle_dir and settings.detector_image_size == 320
    assert (settings.score_threshold, settings.box_margin) == (0.6, 0.0)
    assert settings.default_window == ""
    assert effective(score_threshold=0.3).score_threshold == 0.3  # constructor over env


def test_sam_family_and_path_come_as_a_pair(bundle_dir, tmp_path):
    settings = effective(model_dir=bundle_dir, sam_family="hf", sam_path=tmp_path)
    assert (settings.sam_family, settings.sam_path) == ("hf", tmp_path)
    assert effective(model_dir=bundle_dir, sam_path=None).sam_path is None  # the base SAM


def test_a_bad_window_fails_at_start_up(tmp_path):
    with pytest.raises(ValidationError, match="kidney"):
        effective(model_dir=write_bundle(tmp_path / "b", window="kidney"))


def test_exports_are_keyed_by_the_models(bundle_dir, tmp_path):
    shipped = exports_dir(effective(cache_dir=tmp_path))
    ours = exports_dir(effective(cache_dir=tmp_path, model_dir=bundle_dir))
    assert shipped.parent == ours.parent == tmp_path / "exports"
    assert ours.name.startswith("brain-mr-") and shipped != ours
    Bundle.load(bundle_dir).copy_to(tmp_path / "copy")  # same files elsewhere: same export
    assert exports_dir(effective(cache_dir=tmp_path, model_dir=tmp_path / "copy")) == ours
    multimask = effective(cache_dir=tmp_path, model_dir=bundle_dir, multimask_output=True)
    assert exports_dir(multimask) != ours
    explicit = effective(model_dir=bundle_dir, export_dir=tmp_path / "x")
    assert exports_dir(explicit) == tmp_path / "x"


def test_the_response_names_the_bundle_and_the_values_in_force(bundle_dir):
    served = served_bundle(effective(model_dir=bundle_dir, score_threshold=0.7))
    assert served["name"] == "brain-mr" and len(served["fingerprint"]) == 64
    assert (served["score_threshold"], served["box_margin"], served["window"]) == (
        0.7,
        0.1,
        "liver",
    )
