"""Serving exported models (backends onnxruntime, openvino) imports no torch, torchvision,
ultralytics, transformers, monai or peft: what a lean serving image (requirements-serve.lock)
relies on."""

import json
import os
import subprocess
import sys

import pytest

from service.launcher import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_serving_imports_no_torch(served_export, backend):
    env = {
        **os.environ,
        "LESIONSEG_BACKEND": backend,
        "LESIONSEG_EXPORT_DIR": str(served_export),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.serve_without_torch"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["runtime_imported"] and result["heavy_imported"] == []
    # The example slice has tumours: detection and SAM really ran.
    assert result["lesions"] > 0 and len(result["labels"]) == result["lesions"]
    assert min(result["mask_pixels"]) > 0
