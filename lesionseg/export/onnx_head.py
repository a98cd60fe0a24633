"""The SAM-head detector -> ONNX (``detector-head.onnx``, dynamic batch), checked against torch.

A sam-head bundle's ``detector.pt`` (:mod:`lesionseg.models.sam_head_net`) is exported with
one named input, ``embeddings`` (B, slices * C, h, w), and one output, ``raw`` (B, K + 4, h, w);
only the batch axis is dynamic (the SAM grid is fixed by the encoder). The head's config is
written into the file's metadata (``sam_head_config``, JSON), so that a runtime without torch
knows the classes, context and stride. The check runs torch and ONNX Runtime on the real SAM
embeddings of consecutive LiTS validation slices, each with its neighbours (the first and last
slice of the run without one, as at a volume's ends): the raw outputs' largest difference and
the decoded boxes at the served threshold and at the service's score floor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lesionseg.datasets.lits import LitsCase
from lesionseg.export.checks import head_agreement
from lesionseg.models.backends.onnx_head import CONFIG_KEY, OnnxHeadRunner
from lesionseg.models.detectors import HEAD_ONNX
from lesionseg.models.sam_head import SamHeadDetector
from lesionseg.models.sam_head_net import SamHeadNet, TorchHeadRunner, load_head
from lesionseg.models.segmenter import Segmenter
from lesionseg.settings import Settings
from lesionseg.types import ImageEmbedding

OPSET = 17
CHECK_SLICES = range(104, 116)  # 12 consecutive validation slices, most with tumours


def export_head_onnx(net: SamHeadNet, path: Path, grid: tuple[int, int] = (64, 64)) -> Path:
    """Write ``net`` to ``path`` as ONNX (dynamic batch), its config in the metadata."""
    import onnx

    config = net.config
    dummy = torch.randn(2, config.slices * config.embedding_channels, *grid)
    torch.onnx.export(
        net.eval().cpu(),
        (dummy,),
        str(path),
        input_names=["embeddings"],
        output_names=["raw"],
        dynamic_axes={"embeddings": {0: "batch"}, "raw": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, json.dumps(config.to_dict())
    onnx.save(model, str(path))
    return Path(path)


def check_embeddings(
    settings: Settings, case: LitsCase
) -> tuple[list[ImageEmbedding], list[list[ImageEmbedding | None]]]:
    """Torch SAM embeddings of :data:`CHECK_SLICES` and each one's neighbours (k-1, k+1; None
    at the run's ends)."""
    segmenter = Segmenter.from_settings(settings)
    embeddings = segmenter.embed([case.slice(z).image for z in CHECK_SLICES])
    return embeddings, run_neighbours(embeddings)


def run_neighbours(embeddings: list[ImageEmbedding]) -> list[list[ImageEmbedding | None]]:
    """Per embedding of a run of consecutive slices its (k-1, k+1), None at the run's ends."""
    padded = [None, *embeddings, None]
    return [[padded[i], padded[i + 2]] for i in range(len(embeddings))]


def export_head(settings: Settings, out_dir: Path, case: LitsCase) -> dict:
    """Export the sam-head detector of ``settings`` (backend torch: the reference) to
    ``out_dir / HEAD_ONNX`` and check it; returns the export record's "detector" entry."""
    net = load_head(settings.detector_weights)
    path = export_head_onnx(net, Path(out_dir) / HEAD_ONNX)
    options = dict(
        nms_iou_threshold=settings.nms_iou_threshold, max_detections=settings.max_lesions
    )
    reference = SamHeadDetector(
        TorchHeadRunner(net), net.config, settings.detector_weights, **options
    )
    candidate = SamHeadDetector(OnnxHeadRunner(path), net.config, path, **options)
    embeddings, neighbours = check_embeddings(settings, case)
    record = {
        "kind": "sam-head",
        "source": Path(settings.detector_weights).name,
        "file": HEAD_ONNX,
        "classes": list(net.config.classes),
        "config": net.config.to_dict(),
        "checked_slices": [CHECK_SLICES.start, CHECK_SLICES.stop - 1],
    }
    for name, threshold in (
        ("parity", settings.score_threshold),
        ("parity_at_floor", settings.detector_score_floor),
    ):
        record[name] = head_agreement(reference, candidate, embeddings, neighbours, threshold)
    print(
        "detector head parity:", json.dumps({k: record[k] for k in ("parity", "parity_at_floor")})
    )
    return record
