"""Fine-tuning recipes: one tiny step each on a few real LiTS slices, and the loader round trip.

``lesionseg train`` itself is tested end to end in test_train.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lesionseg.datasets.lits import SPLITS
from lesionseg.models.sam_delta import apply_delta, is_delta, make_delta
from lesionseg.train.common import dice_bce_loss, frame_samples, masks_to_model_frame, perturb_boxes
from lesionseg.transforms import mask_to_box


def lits_samples(lits_volume, split: str, step: int) -> list:
    """Samples of every ``step``-th slice of a LiTS slab (slices without lesions dropped)."""
    slab = SPLITS[split]
    frames = lits_volume.frames(0, (slab.start, slab.stop), prefix="lits117")
    return frame_samples(list(frames)[::step])


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.10])
def test_perturb_boxes_bounded_valid_and_seeded(shift):
    boxes = np.array([[10, 20, 30, 40], [0, 0, 3, 3], [100, 110, 128, 128]], np.float32)
    out = perturb_boxes(boxes, (128, 128), shift, np.random.default_rng(1))
    again = perturb_boxes(boxes, (128, 128), shift, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)
    assert np.abs(out - boxes).max() <= shift * 128 + 1  # +1: the 1-px minimum size
    assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
    assert out.min() >= 0 and out.max() <= 128
    if shift == 0:
        np.testing.assert_array_equal(out, boxes)
    else:
        assert not np.array_equal(out, boxes)


def test_dice_bce_loss_prefers_the_right_mask():
    target = torch.zeros(2, 16, 16)
    target[:, 4:10, 4:10] = 1
    good, bad = dice_bce_loss(20 * (2 * target - 1), target), dice_bce_loss(-target * 5, target)
    assert good < 0.05 < bad


def test_frame_samples_match_connected_components(lits, lits_volume):
    samples = lits_samples(lits_volume, "val", step=7)
    assert samples and all(len(s.boxes) == len(s.masks) > 0 for s in samples)
    for s in samples:
        sl = lits.slice(int(s.name.rsplit("_", 1)[1]))  # "lits117/a0_107" -> slice 107
        assert len(s.boxes) == (sl.areas >= 10).sum()  # outlines of < 10 px are dropped
        np.testing.assert_array_equal(s.boxes, sl.boxes[sl.areas >= 10])
        for box, mask in zip(s.boxes, s.masks, strict=True):
            np.testing.assert_array_equal(box, mask_to_box(mask))
            assert mask.sum() >= 10
    target = masks_to_model_frame(samples[0].masks, 256)  # 128 px slice -> 256 frame
    assert target.shape == (len(samples[0].masks), 256, 256)
    assert abs(target.sum() - 4 * samples[0].masks.sum()) <= 0.1 * 4 * samples[0].masks.sum()


def test_delta_merges_lora_exactly_like_peft():
    from peft import LoraConfig, get_peft_model

    from lesionseg.train.sam_lora import lora_factors

    torch.manual_seed(0)
    net = nn.ModuleDict(
        {"encoder": nn.ModuleDict({"qkv": nn.Linear(6, 9), "out": nn.Linear(9, 2)})}
    )
    base = {k: v.clone() for k, v in net.state_dict().items()}
    model = get_peft_model(net, LoraConfig(r=2, lora_alpha=4, target_modules=["encoder.qkv"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p)  # peft starts B at zero: make the update non-trivial
    factors = lora_factors(model)
    assert list(factors) == ["qkv.weight"]
    merged = model.merge_and_unload().state_dict()
    base_stripped = {k.split(".", 1)[1]: v for k, v in base.items()}
    delta = make_delta(
        base_stripped, base_stripped, family="x", base_sha256="0", name="t", lora=factors
    )
    assert is_delta(delta) and delta["tensors"] == {}
    ours = apply_delta(base_stripped, delta)
    torch.testing.assert_close(ours["qkv.weight"], merged["encoder.qkv.weight"])
    assert not torch.equal(ours["qkv.weight"], base_stripped["qkv.weight"])
    torch.testing.assert_close(ours["out.weight"], base_stripped["out.weight"])


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["litemedsam", "hf"])
def test_decoder_only_step_trains_only_the_mask_decoder(
    family, lits_volume, tiny_hf_sam_dir, tmp_path
):
    from lesionseg.models.sam import load_sam
    from lesionseg.train.sam_decoder import train_decoder
    from lesionseg.train.sam_train import image_key

    modules = load_sam(family, tiny_hf_sam_dir if family == "hf" else None)
    enc, dec = _snapshot(modules.encoder), _snapshot(modules.decoder)
    train = lits_samples(lits_volume, "train", step=45)[:2]
    rows = train_decoder(modules, train, [], epochs=1, cache=tmp_path, max_boxes=2)
    assert np.isfinite(rows[0]["train_loss"])
    changed = _changed(dec, modules.decoder)
    assert changed and all("mask_decoder" in k for k in changed), sorted(changed)[:5]
    if family == "litemedsam":  # HF's encoder wrapper shares the model with the decoder's
        assert not _changed(enc, modules.encoder)
    cached = {p.stem for p in tmp_path.glob("embeddings-*/*.pt")}  # per image, by its pixels
    assert cached == {image_key(s.image) for s in train} and len(cached) == 2


@pytest.mark.slow
def test_lora_step_hf_saves_a_merged_samodel(lits_volume, tiny_hf_sam_dir, tmp_path):
    from lesionseg.models.sam import load_sam
    from lesionseg.train.sam_lora import merge, train_lora
    from lesionseg.train.sam_train import save_sam

    modules = load_sam("hf", tiny_hf_sam_dir)
    model, rows = train_lora(modules, lits_samples(lits_volume, "train", step=45)[:1], [], epochs=1)
    assert np.isfinite(rows[0]["train_loss"])
    assert merge(modules, model) is None
    record = {"base": {"sha256": modules.spec.sha256}}
    source = {"git_commit": "0123456789ab", "git_dirty": True}  # taken when the run started
    path = save_sam(modules, tmp_path / "tiny-lora", record, [], tmp_path, source=source)
    assert not any("lora" in k for k in modules.decoder.model.state_dict())
    reloaded = load_sam("hf", path)
    written = json.loads(path.with_suffix(".json").read_text())
    assert written["checkpoint"]["sha256"] and written.items() >= source.items()
    before = load_sam("hf", tiny_hf_sam_dir).decoder.model.state_dict()
    after = reloaded.decoder.model.state_dict()
    # A random tiny model passes almost no gradient to its encoder; the decoder's LoRA moves.
    assert any(not torch.equal(before[k], after[k]) for k in before if "v_proj" in k)


@pytest.mark.slow
def test_lora_step_litemedsam_and_delta_round_trip_through_settings(lits, lits_volume, tmp_path):
    """One LoRA step on LiteMedSAM, merged, saved as a delta the way `lesionseg train` saves a
    bundle's sam.pt, loaded by LESIONSEG_SAM_PATH."""
    from lesionseg.models.sam import load_sam
    from lesionseg.models.segmenter import Segmenter
    from lesionseg.settings import Settings
    from lesionseg.train.sam_lora import merge, train_lora
    from lesionseg.train.sam_train import save_litemedsam_delta

    modules = load_sam("litemedsam", None)
    train = lits_samples(lits_volume, "train", step=45)[:1]
    model, rows = train_lora(modules, train, [], epochs=1, max_boxes=1, lr=1e-3)
    trained, total = model.get_nb_trainable_parameters()
    print(f"LoRA trainable: {trained} of {total} = {100 * trained / total:.2f} %")
    assert 0.005 < trained / total < 0.06
    assert np.isfinite(rows[0]["train_loss"])
    factors = merge(modules, model)  # asserts our merge == peft's merge_and_unload
    assert len(factors) == 72 and any(float(f["B"].abs().max()) > 0 for f in factors.values())
    path = tmp_path / "sam.pt"
    sha = save_litemedsam_delta(modules, path, name="test-lora", lora=factors)
    assert path.stat().st_size < 3_000_000
    tuned = Segmenter.from_settings(Settings(backend="torch", sam_path=path))
    base = Segmenter.from_settings(Settings(backend="torch", sam_family="litemedsam"))
    assert tuned.spec.name == "LiteMedSAM+test-lora" and tuned.spec.sha256 == sha
    assert sha != base.spec.sha256
    sl = lits.slice(110)
    base_pred = base.predict(base.embed([sl.image]), [sl.boxes])[0]
    tuned_pred = tuned.predict(tuned.embed([sl.image]), [sl.boxes])[0]
    assert np.abs(base_pred.low_res_logits - tuned_pred.low_res_logits).max() > 1e-3


@pytest.mark.slow
def test_shipped_bundle_sam_loads_matches_its_record_and_changes_masks(lits, tmp_path):
    """The shipped bundle's SAM fine-tune (a delta) loads from the store's copy, is the
    checkpoint its record names, and changes masks against zero-shot LiteMedSAM."""
    import shutil

    from lesionseg.models.bundle import SHIPPED_BUNDLE, Bundle
    from lesionseg.models.segmenter import Segmenter
    from lesionseg.settings import Settings

    bundle = Bundle.load(SHIPPED_BUNDLE)
    path = bundle.sam.weights
    assert path is not None and path.stat().st_size < 10_000_000
    # The model store keeps the file as weights.pth: a delta is recognised by its content.
    stored = tmp_path / "weights.pth"
    shutil.copyfile(path, stored)
    tuned = Segmenter.from_settings(Settings(backend="torch", sam_path=stored))
    assert tuned.spec.sha256 == bundle.record["sam"]["sha256"]
    assert tuned.spec.name == f"LiteMedSAM+{bundle.name}-{bundle.sam.recipe}"
    base = Segmenter.from_settings(Settings(backend="torch", sam_family="litemedsam"))
    slices = list(lits.slices("val", step=9))
    ours = tuned.predict(tuned.embed([s.image for s in slices]), [s.boxes for s in slices])
    theirs = base.predict(base.embed([s.image for s in slices]), [s.boxes for s in slices])
    assert any(not np.array_equal(a.masks, b.masks) for a, b in zip(theirs, ours, strict=True))


@pytest.mark.slow
def test_unet_step_changes_weights(lits):
    from lesionseg.train.unet import build_unet, predict_unet, train_unet

    torch.manual_seed(0)
    model = build_unet()
    before = _snapshot(model)
    slices = list(lits.slices("train", step=40))
    rows = train_unet(model, slices, slices[:1], epochs=1, batch=3, max_steps=1)
    assert np.isfinite(rows[0]["train_loss"]) and 0 <= rows[0]["val_image_dice"] <= 1
    assert _changed(before, model)
    assert predict_unet(model, [slices[0].image]).shape == (1, 128, 128)


def test_yolo_labels_of_real_lits_slices(lits, lits_volume, tmp_path):
    """The detector's training labels on real slices equal the LiTS tumour outlines' boxes.
    (Training itself: test_train.py.)"""
    from lesionseg.train.train_detector import write_yolo_dataset

    val = list(lits_volume.frames(0, (110, 111), prefix="lits117"))
    write_yolo_dataset({"val": val}, ["lesion"], tmp_path / "ds")
    sl = lits.slice(110)
    (label,) = (tmp_path / "ds/labels/val").glob("*a0_110.txt")
    lines = label.read_text().splitlines()
    assert len(lines) == len(sl.boxes) > 0
    for line, (x0, y0, x1, y1) in zip(lines, sl.boxes, strict=True):
        cls, cx, cy, w, h = (float(v) for v in line.split())
        assert cls == 0
        np.testing.assert_allclose(
            [cx, cy, w, h],
            [(x0 + x1) / 256, (y0 + y1) / 256, (x1 - x0) / 128, (y1 - y0) / 128],
            atol=1e-5,
        )
