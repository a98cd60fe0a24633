"""Shared fixtures: real data and models are loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lesionseg.models.bundle_settings import effective_settings
from lesionseg.settings import Settings
from tests.server_limits import SERVER_LIMITS

# Every server a test starts inherits these limits, not the production defaults.
os.environ.update(SERVER_LIMITS)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """PyTorch settings (the shipped bundle in force): the reference every other runtime is
    compared with."""
    return effective_settings(Settings(backend="torch"))


@pytest.fixture(scope="session")
def exported(settings, tmp_path_factory) -> tuple[Path, dict]:
    """The default models exported to ONNX by the project's exporter (no int8), and its record."""
    from lesionseg.export.onnx import export_onnx

    directory = tmp_path_factory.mktemp("exports")
    return directory, export_onnx(settings, directory, int8=False)


@pytest.fixture(scope="session")
def lits(settings):
    from lesionseg.datasets.lits import LitsCase

    return LitsCase(settings.cache_dir)


@pytest.fixture(scope="session")
def lits_volume(lits):
    """The LiTS case as a training Volume (lesionseg.datasets): tumours the one class, the
    slices' CT window. ``lits_volume.frames(0, (100, 128))`` are the validation slices as
    Frames, with the instances of ``lits.slice(z)``."""
    from lesionseg.datasets import Volume
    from lesionseg.datasets.lits import TUMOUR_LABEL
    from lesionseg.io.images import window_ct

    return Volume(window_ct(lits.ct), (lits.labels == TUMOUR_LABEL).astype(np.uint16))


@pytest.fixture(scope="session")
def litemedsam(settings):
    from lesionseg.models.segmenter import Segmenter

    return Segmenter.from_settings(settings)


@pytest.fixture(scope="session")
def detector(settings):
    from lesionseg.models.detector import Detector

    return Detector.from_settings(settings)


@pytest.fixture(scope="session")
def tiny_hf_sam_dir(tmp_path_factory) -> Path:
    """A randomly initialised, tiny transformers SamModel saved like a user's checkpoint."""
    import torch
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            output_channels=32,
            image_size=256,
            patch_size=16,
            global_attn_indexes=[1],
            window_size=4,
            num_pos_feats=16,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=32, image_size=256, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32,
            mlp_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
    )
    directory = tmp_path_factory.mktemp("tiny-sam")
    SamModel(config).eval().save_pretrained(directory)
    return directory


def disk(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    """(H, W, 3) uint8 dark image with a bright disk: a toy 'lesion'."""
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w), 30, np.uint8)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 220
    return np.repeat(img[:, :, None], 3, axis=2)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc with the DICOMweb plugin on 127.0.0.1 (free ports, temp storage).

    Tests that stop it must start it again before they return (see tests/pacs.py)."""
    from tests.pacs import OrthancServer, orthanc_missing

    if reason := orthanc_missing():
        pytest.skip(reason)
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL on 127.0.0.1 (tests/postgres.py); ``postgres.database()`` gives each
    test a fresh database's URL. Without PostgreSQL the tests skip, except in CI (``CI`` set),
    where they fail: CI's machines have it."""
    from tests.postgres import PostgresServer, postgres_missing

    if reason := postgres_missing():
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def served_export() -> Path:
    """The ONNX export of the models in force (what `make serve` serves), exported now when
    missing or stale (~1 min); unlike ``exported``, reused across sessions."""
    from lesionseg.export.onnx import ensure_onnx

    return ensure_onnx(effective_settings(Settings()))


def assert_same_detections(reference, ours, lits, *, min_iou: float, max_score_diff: float):
    """``ours`` detects what ``reference`` (ultralytics) does on the LiTS validation slab, at the
    served threshold and at the service's score floor
    (lesionseg.export.checks.detector_agreement)."""
    from lesionseg.export.checks import detector_agreement

    served = effective_settings(Settings())
    for threshold in (served.score_threshold, served.detector_score_floor):
        parity = detector_agreement(reference, ours, lits, score_threshold=threshold)
        assert parity["boxes"] >= parity["images"], parity  # real detections were compared
        assert parity["images_with_same_count"] == parity["images"], parity
        assert parity["images_with_same_classes"] == parity["images"], parity
        assert parity["min_box_iou"] >= min_iou, parity
        assert parity["max_score_diff"] < max_score_diff, parity
