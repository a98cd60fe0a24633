"""Issue 11 end to end: `lesionseg train` on a dataset, then `LESIONSEG_MODEL_DIR=DIR make serve`
serves the bundle it wrote and `/segment` answers with that bundle's classes."""

from __future__ import annotations

import json

import httpx
import pytest

from lesionseg.train.train import main as train
from service.launcher import REPO_ROOT, running_server
from tests.datasets.fixtures import write_nnunet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = REPO_ROOT / "data" / "examples" / "lits117-z110.png"


@pytest.fixture(scope="module")
def bundle(lits, tmp_path_factory):
    """A YOLO bundle trained for one epoch on three LiTS slabs as an nnU-Net dataset, the tumour
    label only, named ``e2e-tumour`` (``--detector auto`` and the sam-head: tests/test_train.py
    and tests/service/test_sam_head_serve.py; here the train-then-serve path)."""
    root = tmp_path_factory.mktemp("train")
    dataset = write_nnunet(lits, root / "nnunet")
    out = root / "bundle"
    args = [str(dataset), "--out", str(out), "--labels", "tumour", "--window", "abdomen"]
    args += ["--detector", "yolo", "--epochs", "1", "--batch", "4", "--sam", "none"]
    args += ["--max-val-frames", "4"]
    args += ["--val-cases", "lits117_z110", "--name", "e2e-tumour"]
    args += ["--workdir", str(root / "work")]
    assert train(args) == 0
    return out


def test_bundle_record(bundle):
    record = json.loads((bundle / "model.json").read_text())
    assert record["format"] == "lesionseg-bundle/1"
    assert record["name"] == "e2e-tumour" and record["classes"] == ["tumour"]
    assert record["window"] == "abdomen"
    assert record["split"]["method"] == "case" and record["split"]["val"] == ["lits117_z110"]
    assert 0 < record["detector"]["score_threshold"] < 1
    for name in ("detector.pt", "evaluation.csv", "evaluation.md", "evaluation.png"):
        assert (bundle / name).is_file(), name


def test_make_serve_serves_the_trained_bundle(bundle, tmp_path):
    env = {
        "LESIONSEG_MODEL_DIR": str(bundle),
        "BENTOML_HOME": str(tmp_path / "bentoml"),  # a store of its own: new versions
        "LESIONSEG_JOBS_DIR": str(tmp_path / "jobs"),
        "LESIONSEG_MAX_BATCH_SIZE": "1",
    }
    with running_server(env, tmp_path / "serve.log", timeout=900, make_serve=True) as url:
        files = {"image": ("slice.png", EXAMPLE.read_bytes(), "image/png")}
        # The service's floor: a one-epoch detector's boxes are few and unsure.
        answer = httpx.post(
            f"{url}/segment", files=files, data={"score_threshold": "0.01"}, timeout=300
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    models = body["models"]
    assert models["bundle"]["name"] == "e2e-tumour", models
    assert list(models["bundle"]["classes"]) == ["tumour"], models
    assert body["lesions"], "a score threshold of 0.01 should leave some box"
    assert {lesion["label"] for lesion in body["lesions"]} == {"tumour"}
