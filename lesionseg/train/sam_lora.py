"""SAM LoRA fine-tuning with ``peft``: rank-8 adapters on the encoder and decoder linear layers.

After the SAM-on-BraTS recipe: LoRA on the attention and MLP linears of the image encoder and
the mask decoder (LiteMedSAM's TinyViT: ``qkv``, ``proj``, ``fc1``, ``fc2``; SAM ViT: ``qkv``,
``proj``, ``lin1``, ``lin2``; the two-way transformer: ``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``, ``lin1``, ``lin2``), everything else frozen, box perturbation, Dice + BCE, Adam.
The encoder runs in every step (no cache), so this costs ~30x decoder-only on CPU.
``lesionseg train DATASET --sam lora`` runs it (:mod:`lesionseg.train.train`).

The adapters are merged (``merge_and_unload``) before anything is saved: LiteMedSAM on the
shipped base is written as a delta of the LoRA factors (``lesionseg.models.sam_delta``; loading it
merges them again, checked equal to peft's merge here), HF SAM by ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lesionseg.models.sam import SamModules, load_sam
from lesionseg.models.sam_delta import apply_delta
from lesionseg.train.common import EpochLog, Sample, Stopper, seed_everything
from lesionseg.train.loop import run_epochs
from lesionseg.train.sam_train import (
    embed,
    evaluate_gt_boxes,
    images_tensor,
    sam_state,
    sample_loss,
)

LORA_TARGETS = (
    "qkv",
    "proj",
    "fc1",
    "fc2",
    "lin1",
    "lin2",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
)
DEFAULT_MAX_SHIFT = 0.05


def add_lora(modules: SamModules, rank: int = 8, alpha: int = 16):
    """Wrap encoder and decoder in one peft LoRA model; return it (adapters trainable only).

    The targets are the ``nn.Linear`` layers whose name ends in one of :data:`LORA_TARGETS`.
    """
    from peft import LoraConfig, get_peft_model

    container = nn.ModuleDict({"encoder": modules.encoder, "decoder": modules.decoder})
    names = [
        n
        for n, m in container.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in LORA_TARGETS
    ]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=names)
    model = get_peft_model(container, config)
    trained, total = model.get_nb_trainable_parameters()
    print(
        f"LoRA r={rank} on {len(names)} linear layers: trainable parameters {trained:,} of "
        f"{total:,} ({100 * trained / total:.2f} %)"
    )
    return model


def lora_factors(peft_model) -> dict[str, dict]:
    """{state-dict key of the base weight: {"A" (r, in), "B" (out, r), "scale"}} per adapter.

    Keys drop the container's first component ("encoder."/"decoder."), which gives the keys of
    the LiteMedSAM state dict.
    """
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            key = name.split(".", 1)[1] + ".weight"
            out[key] = {
                "A": module.lora_A["default"].weight.detach().clone(),
                "B": module.lora_B["default"].weight.detach().clone(),
                "scale": float(module.scaling["default"]),
            }
    return out


def merge(modules: SamModules, peft_model) -> dict[str, dict] | None:
    """peft's ``merge_and_unload`` into ``modules`` (in place); LiteMedSAM: the LoRA factors.

    For LiteMedSAM the factors are checked to reproduce peft's merged weights exactly.
    """
    factors = lora_factors(peft_model) if modules.spec.family == "litemedsam" else None
    base = sam_state(load_sam("litemedsam", None)) if factors is not None else None
    peft_model.merge_and_unload()
    if factors is None:
        return None
    ours = apply_delta(base, {"tensors": {}, "lora": factors})
    merged = sam_state(modules)
    worst = max(float((ours[k] - merged[k]).abs().max()) for k in factors)
    assert worst < 1e-5, f"LoRA factors do not reproduce peft's merge (max diff {worst})"
    return factors


def train_lora(
    modules: SamModules,
    train: Sequence[Sample],
    val: Sequence[Sample],
    *,
    epochs: int,
    rank: int = 8,
    lr: float = 3e-4,
    max_shift: float = DEFAULT_MAX_SHIFT,
    max_boxes: int = 4,
    steps_per_epoch: int | None = None,
    seed: int = 0,
    log: EpochLog | None = None,
    stopper: Stopper | None = None,
):
    """Add LoRA, train it, return (peft model, rows). ``merge`` it before saving.

    With validation samples the adapters of the epoch with the best validation lesion Dice
    are kept; ``stopper`` ends training early (time budget, Ctrl-C), keeping the best so far.
    """
    rng = seed_everything(seed)
    model = add_lora(modules, rank=rank)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def loss(i: int) -> torch.Tensor:
        embedding = modules.encoder(images_tensor(modules, [train[i].image]))  # with grad
        return sample_loss(modules, embedding, train[i], rng, max_shift, max_boxes)

    def validate() -> dict[str, float]:  # the encoder changes: embed again every epoch
        return evaluate_gt_boxes(modules, val, embed(modules, [s.image for s in val]))

    rows = run_epochs(
        model,
        optimiser,
        loss,
        validate if val else None,
        samples=len(train),
        epochs=epochs,
        rng=rng,
        max_steps=steps_per_epoch,
        stopper=stopper,
        log=log,
        name="SAM LoRA",
    )
    return model, rows
