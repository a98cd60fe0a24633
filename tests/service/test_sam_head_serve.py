"""A sam-head bundle served end to end by a real `bentoml serve` on the default backend
(OpenVINO): exported and imported as `LESIONSEG_MODEL_DIR=DIR make serve` does (`python -m
export onnx --if-stale`, `python -m service.model_store`, then `bentoml serve`), one server for
every test here. `/segment` answers with the lesions `lesionseg predict` finds on the same
backend (a CT slice and the 3-slice NIfTI around it, whose middle slice the head sees with its
neighbours), and concurrent requests share the model runner's encoder batches (the head runs in
the API process, on the embeddings, so the runner's detector is never called)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.load import scrape
from lesionseg.cli import main as cli_main
from lesionseg.datasets.examples import write_examples
from lesionseg.io.masks import decode_rle
from lesionseg.measure.evaluation import dice
from lesionseg.models.detectors import HEAD_ONNX
from service.launcher import REPO_ROOT, running_server
from tests.sam_head_bundle import write_sam_head_bundle

from .conftest import png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKEND = {"LESIONSEG_BACKEND": "openvino"}  # the default on the CPU, named: the test is about it


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_sam_head_bundle(tmp_path_factory.mktemp("sam-head") / "bundle")


@pytest.fixture(scope="module")
def examples(lits, tmp_path_factory) -> dict[str, Path]:
    png, *_series, nifti = write_examples(lits, tmp_path_factory.mktemp("examples"), 110)
    return {"png": png, "nifti": nifti}


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """`make serve`'s steps after `make data`, with the bundle in LESIONSEG_MODEL_DIR, a store
    and job directory of its own, batches of up to 4 and no per-image cache (the batching
    test needs the runner for every image)."""
    tmp = tmp_path_factory.mktemp("sam-head-serve")
    (tmp / "prometheus").mkdir()
    env = {
        **BACKEND,
        "LESIONSEG_MODEL_DIR": str(bundle),
        "BENTOML_HOME": str(tmp / "bentoml"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
        "LESIONSEG_JOBS_DIR": str(tmp / "jobs"),
        "LESIONSEG_MAX_BATCH_SIZE": "4",
        "LESIONSEG_EMBEDDING_CACHE_MB": "0",
    }
    for step in (["export", "onnx", "--if-stale"], ["service.model_store"]):  # make export models
        done = subprocess.run(
            [sys.executable, "-m", *step],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    with running_server(env, tmp / "serve.log", timeout=600) as url:
        yield url


@pytest.fixture
def cli(bundle, monkeypatch, tmp_path):
    """`lesionseg predict` with the bundle on the same backend; returns the JSON it wrote."""
    for name, value in {**BACKEND, "LESIONSEG_MODEL_DIR": str(bundle)}.items():
        monkeypatch.setenv(name, value)

    def predict(path: Path) -> dict:
        out = tmp_path / "out"
        assert cli_main(["predict", str(path), "--out", str(out)]) == 0
        return json.loads((out / f"{Path(path.name.removesuffix('.gz')).stem}.json").read_text())

    return predict


def segment(url: str, name: str, data: bytes) -> dict:
    response = httpx.post(f"{url}/segment", files={"image": (name, data)}, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_lesions(service: dict, cli: dict) -> None:
    """Frame by frame the same lesions: labels, boxes, scores and masks."""
    frames = list(zip(service.get("frames", [service]), cli.get("frames", [cli]), strict=True))
    assert sum(len(ours["lesions"]) for ours, _ in frames) > 0, "nothing was compared"
    for ours, theirs in frames:
        assert [x["label"] for x in ours["lesions"]] == [x["label"] for x in theirs["lesions"]]
        for a, b in zip(ours["lesions"], theirs["lesions"], strict=True):
            np.testing.assert_allclose(a["box"], b["box"], atol=0.05)
            assert abs(a["score"] - b["score"]) < 1e-3, (a["score"], b["score"])
            assert dice(decode_rle(a["mask"]), decode_rle(b["mask"])) >= 0.98


def test_the_service_names_the_head_it_runs(server, examples, bundle):
    models = segment(server, "slice.png", examples["png"].read_bytes())["models"]
    assert models["backend"] == "openvino"
    assert models["bundle"]["name"] == "sam-head-test"
    detector = models["detector"]
    assert (detector["kind"], detector["weights"], detector["precision"]) == (
        "sam-head",
        HEAD_ONNX,
        "fp32",
    )
    assert detector["classes"] == {"0": "tumour"}


@pytest.mark.parametrize("example", ["png", "nifti"])
def test_segment_finds_what_the_cli_finds(server, examples, cli, example):
    path = examples[example]
    assert_same_lesions(segment(server, path.name, path.read_bytes()), cli(path))


def test_concurrent_requests_share_the_encoder_batches(server, lits):
    # Six slices of six sizes: an answer routed to the wrong caller would show.
    crops = [(128, 128), (120, 110), (112, 128), (100, 100), (128, 96), (90, 120)]
    images = [lits.slice(102 + 4 * i).image[:h, :w] for i, (h, w) in enumerate(crops)]
    payloads = [png_bytes(im) for im in images]
    reference = [segment(server, "i.png", p) for p in payloads]  # one at a time
    before = scrape(server)
    with ThreadPoolExecutor(len(payloads)) as pool:
        concurrent = list(pool.map(lambda p: segment(server, "i.png", p), payloads))
    after = scrape(server)
    count = {k: after[k] - before[k] for k in ("batch_embed_sum", "batch_embed_count")}
    # Every image is embedded (the head detects on the embedding), in shared batches; the
    # runner's YOLO path is never taken.
    assert count["batch_embed_sum"] == len(payloads), count
    assert count["batch_embed_count"] < len(payloads), f"no batching of the encoder: {count}"
    assert after["batch_detect_sum"] == 0, after
    for (h, w), ref, got in zip(crops, reference, concurrent, strict=True):
        assert (got["height"], got["width"]) == (h, w)
        assert_same_lesions(got, ref)
