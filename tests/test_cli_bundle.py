"""`lesionseg predict` with a bundle: export on first use (and say so), --model, DICOM input."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

import lesionseg.export.onnx as exporter
from lesionseg.cli import main as cli_main
from lesionseg.datasets.examples import lits_ct
from lesionseg.models.backends.onnx_runner import export_is_current
from lesionseg.models.bundle import SHIPPED_BUNDLE
from lesionseg.models.bundle_settings import effective_settings, export_key
from lesionseg.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_exports(exported, tmp_path, monkeypatch):
    """No export yet where the CLI looks; SAM files may come from the session's export (the
    CLI looks for them under cache_dir/exports), so that the first use costs seconds."""
    monkeypatch.setenv("LESIONSEG_EXPORT_DIR", str(tmp_path / "exports"))
    monkeypatch.setattr(exporter, "sibling_exports", lambda settings: [exported[0]])
    return tmp_path / "exports"


def test_predict_exports_on_first_use_and_says_so(fresh_exports, lits, tmp_path, capsys):
    image = tmp_path / "slice.png"
    Image.fromarray(lits.slice(110).image).save(image)
    assert cli_main(["predict", str(image), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"exporting lits117 to ONNX on first use (~1 min) -> {fresh_exports}" in err
    assert export_is_current(fresh_exports, export_key(effective_settings(Settings())))
    assert json.loads((tmp_path / "out" / "slice.json").read_text())["lesions"]
    assert cli_main(["predict", str(image), "--out", str(tmp_path / "out")]) == 0
    assert "exporting" not in capsys.readouterr().err  # once only


def test_predict_with_model_serves_that_bundle_on_dicom(fresh_exports, lits, tmp_path):
    bundle = tmp_path / "liver-bundle"
    shutil.copytree(SHIPPED_BUNDLE, bundle)
    record = json.loads((bundle / "model.json").read_text())
    (bundle / "model.json").write_text(json.dumps(record | {"name": "liver", "window": "liver"}))
    (ct,) = lits_ct(lits, [110])
    (tmp_path / "ct.dcm").write_bytes(ct)
    out = tmp_path / "out"
    assert (
        cli_main(["predict", str(tmp_path / "ct.dcm"), "--model", str(bundle), "--out", str(out)])
        == 0
    )
    result = json.loads((out / "ct.json").read_text())
    assert result["models"]["bundle"]["name"] == "liver"
    assert result["source"]["window"] == [30.0, 150.0]  # the bundle's window: none was given
    args = ["predict", str(tmp_path / "ct.dcm"), "--model", str(bundle), "--window", "lung"]
    assert cli_main([*args, "--out", str(out)]) == 0
    assert json.loads((out / "ct.json").read_text())["source"]["window"] == [-600.0, 1500.0]
