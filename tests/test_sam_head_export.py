"""A sam-head bundle's export (lesionseg.export.onnx_head): the record and its check, and the
head in torch, ONNX Runtime and OpenVINO on real SAM embeddings of LiTS slices with their
neighbours: the same raw output within tolerance and the same boxes above the threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lesionseg.errors import ModelLoadError
from lesionseg.export.checks import head_agreement
from lesionseg.export.onnx_head import run_neighbours
from lesionseg.models.backends.onnx_head import OnnxHeadRunner
from lesionseg.models.backends.openvino_head import OpenVinoHeadRunner
from lesionseg.models.bundle_settings import effective_settings, export_key
from lesionseg.models.detectors import HEAD_ONNX, load_sam_head
from lesionseg.models.sam_head import HeadConfig
from lesionseg.models.sam_head_net import SamHeadNet
from lesionseg.settings import Settings
from tests.sam_head_bundle import write_sam_head_bundle

pytestmark = pytest.mark.slow

SLICES = range(106, 113)  # 7 consecutive validation slices, with tumours


@pytest.fixture(scope="module")
def head_settings(tmp_path_factory) -> Settings:
    """Torch settings of a sam-head bundle (a seeded random head over the shipped SAM)."""
    bundle = write_sam_head_bundle(tmp_path_factory.mktemp("sam-head") / "bundle")
    return effective_settings(Settings(backend="torch", model_dir=bundle))


@pytest.fixture(scope="module")
def head_export(head_settings, served_export, tmp_path_factory):
    """The bundle exported by the project's exporter (its SAM files reused from the served
    export), and its record."""
    from lesionseg.export.onnx import export_onnx

    directory = tmp_path_factory.mktemp("sam-head-export")
    return directory, export_onnx(head_settings, directory, int8=False, sam_from=[served_export])


@pytest.fixture(scope="module")
def slab(litemedsam, lits):
    """Real SAM embeddings of :data:`SLICES` and each one's (k-1, k+1), None at the slab's ends."""
    embeddings = litemedsam.embed([lits.slice(z).image for z in SLICES])
    return embeddings, run_neighbours(embeddings)


def test_the_export_holds_the_head_instead_of_a_yolo(head_export, head_settings):
    directory, record = head_export
    names = {p.name for p in directory.iterdir()}
    assert {HEAD_ONNX, "sam_encoder.onnx", "sam_decoder.onnx", "export.json"} <= names
    assert "detector.onnx" not in names and "detector.pt" not in names
    assert (directory / "bundle" / "detector.pt").is_file()  # the bundle's copy
    assert record["key"] == export_key(head_settings)
    assert json.loads((directory / "export.json").read_text())["detector"]["kind"] == "sam-head"
    assert (
        record["detector"]["config"] == HeadConfig.from_dict(record["detector"]["config"]).to_dict()
    )


@pytest.mark.parametrize("parity", ["parity", "parity_at_floor"])
def test_the_exports_own_check_found_the_same_boxes(head_export, parity):
    check = head_export[1]["detector"][parity]
    assert check["boxes"] >= check["images"] == 12  # real boxes were compared
    assert check["raw_max_abs_err"] < 1e-4
    assert check["images_with_same_count"] == check["images_with_same_classes"] == 12
    assert check["min_box_iou"] >= 0.999 and check["max_score_diff"] < 1e-4


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_head_matches_torch_on_lits_slices(head_export, head_settings, slab, backend):
    reference = load_sam_head(head_settings)
    exported = load_sam_head(
        head_settings.model_copy(update={"backend": backend, "export_dir": head_export[0]})
    )
    assert exported.weights.name == HEAD_ONNX and exported.runner.precision == "fp32"
    assert exported.config == reference.config
    for threshold in (head_settings.score_threshold, head_settings.detector_score_floor):
        check = head_agreement(reference, exported, *slab, threshold)
        assert check["raw_max_abs_err"] < 1e-4, check
        assert check["boxes"] >= check["images"], check
        assert check["images_with_same_count"] == check["images"], check
        assert check["images_with_same_classes"] == check["images"], check
        assert check["min_box_iou"] >= 0.999 and check["max_score_diff"] < 1e-4, check


def test_openvino_runs_the_head_in_fp32_whatever_the_precision(head_export, head_settings):
    settings = head_settings.model_copy(
        update={"backend": "openvino", "export_dir": head_export[0], "precision": "auto"}
    )
    assert load_sam_head(settings).runner.precision == "fp32"


def test_the_batch_axis_is_dynamic(head_export, slab):
    path = head_export[0] / HEAD_ONNX
    onnx, openvino = OnnxHeadRunner(path), OpenVinoHeadRunner(path, threads=2)
    embeddings = slab[0]
    batch = np.stack([np.concatenate([e.features] * 3) for e in embeddings])  # (7, 768, 64, 64)
    whole = onnx.run(batch)
    assert whole.shape == (len(embeddings), 5, 64, 64)
    for size in (1, 3):
        np.testing.assert_allclose(onnx.run(batch[:size]), whole[:size], atol=1e-5)
        np.testing.assert_allclose(openvino.run(batch[:size]), whole[:size], atol=1e-4)


def test_embeddings_of_another_shape_are_refused(head_export):
    runner = OnnxHeadRunner(head_export[0] / HEAD_ONNX)
    with pytest.raises(ValueError, match=r"takes \(B, 768, h, w\) embeddings"):
        runner.run(np.zeros((1, 256, 64, 64), np.float32))


def test_an_onnx_file_without_the_head_config_is_refused(tmp_path):
    net = SamHeadNet(HeadConfig(classes=("tumour",))).eval()
    path = tmp_path / HEAD_ONNX
    torch.onnx.export(net, (torch.zeros(1, 768, 64, 64),), str(path), dynamo=False)
    for runner in (OnnxHeadRunner, OpenVinoHeadRunner):
        with pytest.raises(ModelLoadError, match=r"no sam-head config.*make export"):
            runner(path)
