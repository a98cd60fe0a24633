"""SAM training helpers shared by the decoder-only and LoRA recipes (both SAM families).

They drive the project's own modules (:mod:`lesionseg.models.sam`), so a trained model runs
through exactly the code the service runs:
``encoder(images (B, 3, S, S)) -> (B, C, h, w)`` and
``decoder(embedding (1, C, h, w), boxes (N, 4) in the S x S frame, ...) -> (N, 1, m, m)``.
The modules stay in eval mode while training (TinyViT's BatchNorm keeps its statistics; SAM
has no dropout), gradients flow all the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lesionseg.measure.evaluation import EVAL_MIN_AREA, dice
from lesionseg.models.backends.torch_runner import TorchSamRunner
from lesionseg.models.sam import LITEMEDSAM_SHA256, SamModules, load_sam
from lesionseg.models.sam_delta import make_delta
from lesionseg.models.segmenter import Segmenter
from lesionseg.train.common import (
    Sample,
    dice_bce_loss,
    masks_to_model_frame,
    mean,
    perturb_boxes,
    write_record,
)
from lesionseg.transforms import preprocess, resized_hw, scale_boxes


def images_tensor(modules: SamModules, images: Sequence[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 images -> (B, 3, S, S) float32, the model's preprocessing."""
    spec = modules.spec
    return torch.from_numpy(
        np.stack([preprocess(im, spec.image_size, spec.normalisation) for im in images])
    )


@torch.no_grad()
def embed(modules: SamModules, images: Sequence[np.ndarray], *, batch: int = 4) -> torch.Tensor:
    """Encoder outputs (B, C, h, w) of ``images``, ``batch`` at a time, with a progress bar."""
    out = []
    for start in tqdm(range(0, len(images), batch), desc="embed", leave=False):
        out.append(modules.encoder(images_tensor(modules, images[start : start + batch])))
    return torch.cat(out)


def encoder_key(modules: SamModules) -> str:
    """16 hex digits of a sha256 over the encoder's tensors (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in modules.encoder.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def image_key(image: np.ndarray) -> str:
    """16 hex digits of a sha256 over an image's shape and pixels."""
    return hashlib.sha256(f"{image.shape}".encode() + image.tobytes()).hexdigest()[:16]


def cached_embeddings(
    modules: SamModules, images: Sequence[np.ndarray], cache: Path
) -> torch.Tensor:
    """:func:`embed` of ``images`` ((H, W, 3) uint8) -> (B, C, h, w), cached per image and
    encoder.

    One file per image (``<cache>/embeddings-<encoder key>/<image key>.pt``), both keys
    checksums (of the encoder's weights, of the pixels), so an interrupted run, and every
    recipe or benchmark that uses the same encoder (a decoder-only fine-tune shares the
    base's), reuse what was computed.
    """
    folder = Path(cache) / f"embeddings-{encoder_key(modules)}"
    paths = [folder / f"{image_key(im)}.pt" for im in images]
    missing = [(im, p) for im, p in zip(images, paths, strict=True) if not p.is_file()]
    folder.mkdir(parents=True, exist_ok=True)
    for start in tqdm(range(0, len(missing), 4), desc="embed (cached)", leave=False):
        batch = missing[start : start + 4]
        with torch.no_grad():
            features = modules.encoder(images_tensor(modules, [im for im, _ in batch]))
        for (_, path), f in zip(batch, features, strict=True):
            torch.save(f.clone(), path)
    return torch.stack([torch.load(p, weights_only=True) for p in paths])


def sample_loss(
    modules: SamModules,
    embedding: torch.Tensor,
    sample: Sample,
    rng: np.random.Generator,
    max_shift: float,
    max_boxes: int = 4,
) -> torch.Tensor:
    """Dice + BCE of the decoder on up to ``max_boxes`` of a slice's lesions, boxes perturbed.

    Args:
        embedding: (1, C, h, w) encoder output of ``sample.image`` (with or without grad).
        max_shift: box perturbation, fraction of the longest image side (0 = exact boxes).
        max_boxes: lesions drawn at random per step (the decoder's cost grows with boxes).
    """
    spec = modules.spec
    hw = sample.image.shape[:2]
    pick = np.sort(rng.permutation(len(sample.boxes))[:max_boxes])
    boxes = perturb_boxes(sample.boxes[pick], hw, max_shift, rng)
    model_boxes = torch.from_numpy(scale_boxes(boxes, hw, resized_hw(hw, spec.image_size)))
    n = len(boxes)
    mask_input = torch.zeros(n, 1, spec.mask_size, spec.mask_size)
    logits, _ = modules.decoder(embedding, model_boxes, mask_input, torch.zeros(1))
    logits = F.interpolate(logits[:, :1], (spec.image_size,) * 2, mode="bilinear")[:, 0]
    target = torch.from_numpy(masks_to_model_frame(sample.masks[pick], spec.image_size))
    return dice_bce_loss(logits, target)  # (N, S, S) vs (N, S, S)


def evaluate_gt_boxes(
    modules: SamModules,
    samples: Sequence[Sample],
    embeddings: torch.Tensor,
    *,
    min_area: int = EVAL_MIN_AREA,
) -> dict[str, float]:
    """Lesion-level Dice and IoU with exact ground-truth boxes, through :class:`Segmenter`.

    Only lesions of ``min_area`` px or more are counted.
    """
    segmenter = Segmenter(TorchSamRunner(modules))
    feats = embeddings.numpy()
    predictions = segmenter.predict(
        [segmenter.wrap(f, s.image.shape[:2]) for f, s in zip(feats, samples, strict=True)],
        [s.boxes for s in samples],
    )
    dices, ious = [], []
    for sample, pred in zip(samples, predictions, strict=True):
        for mask, gt in zip(pred.masks, sample.masks, strict=True):
            if gt.sum() >= min_area:
                d = dice(mask, gt)
                dices.append(d)
                ious.append(d / (2 - d))
    return {"val_lesion_dice": mean(dices), "val_lesion_iou": mean(ious), "val_lesions": len(dices)}


def sam_state(modules: SamModules) -> dict[str, torch.Tensor]:
    """LiteMedSAM state dict (keys of ``build_lite_medsam()``) from the wrapper modules."""
    assert modules.spec.family == "litemedsam"
    state = {**modules.encoder.state_dict(), **modules.decoder.state_dict()}
    return {k: v.detach().clone() for k, v in state.items()}


def save_litemedsam_delta(
    modules: SamModules, path: Path, *, name: str, lora: dict[str, dict] | None = None
) -> str:
    """Write a LiteMedSAM fine-tune of the shipped base as a :mod:`lesionseg.models.sam_delta` file
    at
    ``path``, reload it the way the service does, and return the loaded model's sha256."""
    assert modules.spec.family == "litemedsam"
    base = load_sam("litemedsam", None)
    delta = make_delta(
        sam_state(base),
        sam_state(modules),
        family="litemedsam",
        base_sha256=LITEMEDSAM_SHA256,
        name=name,
        lora=lora,
    )
    torch.save(delta, path)
    return load_sam("litemedsam", path).spec.sha256


def save_sam(
    modules: SamModules,
    out: Path,
    record: dict,
    val: Sequence[Sample],
    cache: Path,
    *,
    source: dict,
    lora: dict[str, dict] | None = None,
) -> Path:
    """Write the fine-tuned SAM, reload it the way the service does, validate, write the record.

    LiteMedSAM on the shipped base: ``<out>.pt``, a :mod:`lesionseg.models.sam_delta` delta (fp16
    replaced tensors; LoRA factors, which ``lora`` names). Any other base: the full state dict
    ``<out>.pth``. Hugging Face: ``<out>/`` by ``save_pretrained``. The record gets the
    checkpoint's sha256 and the validation metrics *of the reloaded file*; ``source`` is
    :func:`lesionseg.provenance.git_state` taken when the training started.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    family = modules.spec.family
    if family == "litemedsam":
        base = load_sam("litemedsam", None)
        tuned = sam_state(modules)
        if record["base"]["sha256"] == LITEMEDSAM_SHA256:
            path = out.with_suffix(".pt")
            delta = make_delta(
                sam_state(base),
                tuned,
                family=family,
                base_sha256=LITEMEDSAM_SHA256,
                name=out.name,
                lora=lora,
            )
            torch.save(delta, path)
        else:
            path = out.with_suffix(".pth")
            torch.save(tuned, path)
    else:
        path = out
        modules.decoder.model.save_pretrained(path)
    reloaded = load_sam(family, path)
    record["checkpoint"] = {
        "file": path.name,
        "sha256": reloaded.spec.sha256,
        "bytes": path.stat().st_size if path.is_file() else None,
    }
    if val:
        emb = cached_embeddings(reloaded, [s.image for s in val], cache)
        record["validation"] = {
            "gt_boxes": evaluate_gt_boxes(reloaded, val, emb),
            "min_lesion_px": EVAL_MIN_AREA,
        }
    write_record(out.with_suffix(".json"), record, source)
    print(f"wrote {path} and {out.with_suffix('.json')}: {record.get('validation')}")
    return path
