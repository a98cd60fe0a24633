"""A bundle other than the shipped one, served: its classes, box margin and window.

The test bundle is the shipped detector with its class renamed "tumour", window "liver" and a
box margin, exported and imported into a private BentoML store; the service runs in-process in
an interpreter of its own (tests/service/inprocess.py), so that the session's service and
store keep the shipped bundle; one test runs a real `bentoml serve` of it, as
`LESIONSEG_MODEL_DIR=DIR make serve` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest

from lesionseg.datasets.examples import lits_ct
from lesionseg.models.bundle import SHIPPED_BUNDLE, Bundle
from lesionseg.models.bundle_settings import effective_settings
from lesionseg.pipeline.results import filter_detections
from lesionseg.settings import Settings
from service.launcher import REPO_ROOT, running_server

from .conftest import png_bytes

pytestmark = pytest.mark.slow

MARGIN = 0.1
LIVER = [30.0, 150.0]  # the "liver" preset (center, width)


@pytest.fixture(scope="module")
def tumour_bundle(tmp_path_factory):
    """The shipped bundle with its detector's class renamed: a bundle `lesionseg train` could
    have written for another dataset."""
    import torch

    from lesionseg.models.detector import import_yolo

    import_yolo()  # ultralytics' classes, to load the checkpoint
    directory = tmp_path_factory.mktemp("tumour-bundle")
    checkpoint = torch.load(SHIPPED_BUNDLE / "detector.pt", map_location="cpu", weights_only=False)
    checkpoint["model"].names = {0: "tumour"}
    torch.save(checkpoint, directory / "detector.pt")
    record = json.loads((SHIPPED_BUNDLE / "model.json").read_text())
    record |= {"name": "tumour-test", "classes": ["tumour"], "window": "liver"}
    record["detector"] |= {"box_margin": MARGIN}
    if record["sam"]["weights"]:
        shutil.copyfile(SHIPPED_BUNDLE / record["sam"]["weights"], directory / "sam.pt")
        record["sam"]["weights"] = "sam.pt"
    (directory / "model.json").write_text(json.dumps(record))
    return Bundle.load(directory)


@pytest.fixture(scope="module")
def tumour_export(tumour_bundle, exported, tmp_path_factory):
    """The tumour bundle's ONNX export (its SAM files copied from the session's export)."""
    from lesionseg.export.onnx import export_onnx

    directory = tmp_path_factory.mktemp("tumour-export")
    settings = effective_settings(Settings(backend="torch", model_dir=tumour_bundle.directory))
    record = export_onnx(settings, directory, int8=False, sam_from=[exported[0]])
    assert "reused_from" in record["sam"]  # same SAM as the session's export: not re-exported
    return directory


def private_env(tmp, bundle: Bundle) -> dict[str, str]:
    """The environment of a service of ``bundle`` with a store and job directory of its own."""
    (tmp / "prometheus").mkdir(exist_ok=True)
    return {
        "BENTOML_HOME": str(tmp / "bentoml"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
        "LESIONSEG_JOBS_DIR": str(tmp / "jobs"),
        "LESIONSEG_MODEL_DIR": str(bundle.directory),  # as `make serve` has it
    }


@pytest.fixture(scope="module")
def served(tumour_bundle, tumour_export, lits, tmp_path_factory):
    """Responses of the service serving the tumour bundle, keyed by request name."""
    tmp = tmp_path_factory.mktemp("bundle-serving")
    (tmp / "slice.png").write_bytes(png_bytes(lits.slice(110).image))
    (ct,) = lits_ct(lits, [110])
    (tmp / "ct.dcm").write_bytes(ct)
    requests = {
        "png": {"route": "/segment", "files": {"image": tmp / "slice.png"}},
        "dicom": {"route": "/segment", "files": {"image": tmp / "ct.dcm"}},
        "dicom-liver": {
            "route": "/segment",
            "files": {"image": tmp / "ct.dcm"},
            "data": {"window": "liver"},
        },
        "dicom-abdomen": {
            "route": "/segment",
            "files": {"image": tmp / "ct.dcm"},
            "data": {"window": "abdomen"},
        },
        "job": {"route": "/jobs", "files": {"files": tmp / "ct.dcm"}, "poll": True},
    }
    (tmp / "requests.json").write_text(json.dumps(list(requests.values()), default=str))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESIONSEG_")}
    env |= private_env(tmp, tumour_bundle)
    command = [sys.executable, "-m", "tests.service.inprocess", str(tumour_export)]
    command += [str(tmp / "requests.json"), str(tmp / "responses.json")]
    proc = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    responses = json.loads((tmp / "responses.json").read_text())
    for name, response in zip(requests, responses, strict=True):
        assert response["status"] == 200, (name, response)
    return dict(zip(requests, (r["body"] for r in responses), strict=True))


def test_segment_answers_with_the_bundle_classes_and_names_it(served, tumour_bundle):
    body = served["png"]
    assert body["lesions"] and {lesion["label"] for lesion in body["lesions"]} == {"tumour"}
    assert body["models"]["bundle"] == {
        "name": "tumour-test",
        "fingerprint": tumour_bundle.fingerprint,
        "classes": ["tumour"],
        "score_threshold": tumour_bundle.detector.score_threshold,
        "box_margin": MARGIN,
        "window": "liver",
        "modality": tumour_bundle.modality,
    }
    assert body["models"]["detector"]["classes"] == {"0": "tumour"}


def test_detector_boxes_grow_by_the_bundle_margin(served, tumour_bundle, detector, lits):
    image = lits.slice(110).image
    threshold = tumour_bundle.detector.score_threshold
    (raw,) = detector.detect([image], score_threshold=threshold)  # the same weights, in torch
    expected = filter_detections(
        raw, image.shape[:2], score_threshold=threshold, max_lesions=50, box_margin=MARGIN
    )
    boxes = [lesion["box"] for lesion in served["png"]["lesions"]]
    np.testing.assert_allclose(boxes, expected.boxes, atol=0.05)
    plain = filter_detections(raw, image.shape[:2], score_threshold=threshold, max_lesions=50)
    assert not np.allclose(plain.boxes, expected.boxes, atol=0.05)  # the margin shows


def test_dicom_without_window_gets_the_bundle_window(served):
    defaulted, liver, abdomen = served["dicom"], served["dicom-liver"], served["dicom-abdomen"]
    assert defaulted["source"]["window"] == liver["source"]["window"] == LIVER
    assert abdomen["source"]["window"] == [40.0, 400.0]  # a request's window wins
    same = ("box", "label", "area_px")
    assert [{k: x[k] for k in same} for x in defaulted["lesions"]] == [
        {k: x[k] for k in same} for x in liver["lesions"]
    ]


def test_jobs_without_window_get_the_bundle_window(served):
    status = served["job"]
    assert status["state"] == "done", status
    (frame,) = status["summary"]["frames"]
    assert frame["source"]["window"] == LIVER
    labels = {segment["label"] for segment in status["summary"]["seg"]["segments"]}
    assert labels == {"tumour"}


@pytest.mark.integration
def test_bentoml_serve_of_the_bundle(tumour_bundle, tumour_export, lits, tmp_path):
    """`make models` then `make serve` with LESIONSEG_MODEL_DIR: the real server answers with
    the bundle's class and names the bundle."""
    env = private_env(tmp_path, tumour_bundle) | {"LESIONSEG_EXPORT_DIR": str(tumour_export)}
    subprocess.run(
        [sys.executable, "-m", "service.model_store"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=300,
    )
    with running_server(env, tmp_path / "serve.log") as url:
        files = {"image": ("slice.png", png_bytes(lits.slice(110).image), "image/png")}
        response = httpx.post(f"{url}/segment", files=files, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lesions"] and {lesion["label"] for lesion in body["lesions"]} == {"tumour"}
    bundle = body["models"]["bundle"]
    assert (bundle["name"], bundle["fingerprint"]) == ("tumour-test", tumour_bundle.fingerprint)
    assert (bundle["box_margin"], bundle["window"]) == (MARGIN, "liver")
