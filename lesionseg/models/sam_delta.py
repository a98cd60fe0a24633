"""Fine-tuned SAM weights as a small delta on top of a verified base checkpoint.

A fine-tune changes few tensors (decoder-only) or changes many by a low-rank update (LoRA).
Shipping the whole 39 MB state dict for that is wasteful, so the recipes in ``lesionseg/train/``
save
only what changed, as a ``torch.save`` dict (loadable with ``weights_only=True``):

    {"format": DELTA_FORMAT, "family": "litemedsam", "base_sha256": "...", "name": "...",
     "tensors": {key: tensor},                 # replaced tensors (e.g. fp16 decoder weights)
     "lora": {key: {"A": (r, in), "B": (out, r), "scale": alpha / r}}}   # W += scale * B @ A

Applying the LoRA factors is exactly peft's ``merge_and_unload`` (W + scale * B @ A), so the
loaded model has plain weights: export, ONNX and TensorRT never see an adapter.
"""

from __future__ import annotations

import torch

DELTA_FORMAT = "lesionseg-sam-delta/1"


def is_delta(obj: object) -> bool:
    """True when a loaded checkpoint is a delta written by :func:`make_delta`."""
    return isinstance(obj, dict) and obj.get("format") == DELTA_FORMAT


def make_delta(
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    *,
    family: str,
    base_sha256: str,
    name: str,
    lora: dict[str, dict] | None = None,
    dtype: torch.dtype = torch.float16,
) -> dict:
    """The delta that turns state dict ``base`` into ``tuned``.

    Args:
        base, tuned: state dicts with the same keys.
        lora: per weight key, the factors {"A", "B", "scale"} of a LoRA update; those keys are
            stored as factors, every other changed tensor is stored whole in ``dtype``.
        dtype: storage type of the whole tensors (fp16 halves the file; the recipes validate
            the model after this rounding).
    """
    lora = lora or {}
    assert set(base) == set(tuned), "base and tuned state dicts must have the same keys"
    tensors = {
        k: v.detach().to(dtype if v.is_floating_point() else v.dtype).clone()
        for k, v in tuned.items()
        if k not in lora and not torch.equal(v, base[k])
    }
    factors = {
        k: {
            "A": f["A"].detach().float().clone(),
            "B": f["B"].detach().float().clone(),
            "scale": float(f["scale"]),
        }
        for k, f in lora.items()
    }
    return {
        "format": DELTA_FORMAT,
        "family": family,
        "base_sha256": base_sha256,
        "name": name,
        "tensors": tensors,
        "lora": factors,
    }


def apply_delta(base: dict[str, torch.Tensor], delta: dict) -> dict[str, torch.Tensor]:
    """Return a new state dict: ``base`` with the delta's tensors replaced and LoRA merged."""
    state = dict(base)
    unknown = (set(delta["tensors"]) | set(delta["lora"])) - set(base)
    if unknown:
        raise KeyError(f"delta names tensors the base lacks: {sorted(unknown)[:3]}")
    for key, value in delta["tensors"].items():
        state[key] = value.to(base[key].dtype)
    for key, f in delta["lora"].items():
        update = f["scale"] * (f["B"].float() @ f["A"].float())  # (out, in)
        state[key] = (base[key].float() + update.reshape(base[key].shape)).to(base[key].dtype)
    return state
