"""`make bench-detectors`: the verdicts from hand-made samples, and a tiny real run of the
script (the fixture head, openvino: it needs both bundles' exports, hence slow)."""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks.detectors import main
from benchmarks.detectors_report import PARTS, Sample, summary, verdicts
from benchmarks.untrained_head import BUNDLE_NAME
from lesionseg.models.bundle import SHIPPED_BUNDLE, Bundle


def _rows(single_ms: tuple[float, float], series_ms: tuple[float, float]) -> list[dict]:
    """Rows of one sample each: (yolo, sam-head) wall ms per part, half of it embed."""
    rows = []
    for part, pair in (("single", single_ms), ("series", series_ms)):
        for role, ms in zip(("yolo", "sam-head"), pair, strict=True):
            sample = Sample(ms / 1000, 1, 1, 2, {"embed": ms / 2, "mask_decode": ms / 2})
            rows.append({"role": role, "part": part, **summary([sample])})
    return rows


@pytest.mark.parametrize(
    ("single", "series", "expected"),
    [
        ((100, 115), (1000, 1000), ["met", "met"]),  # at the targets: met
        ((100, 116), (1000, 1001), ["missed", "missed"]),
        ((100, 80), (1000, 1200), ["met", "missed"]),
    ],
)
def test_verdicts_hold_sam_head_to_the_issue_targets(single, series, expected):
    lines = verdicts(_rows(single, series))
    assert [line.split("**")[1] for line in lines] == expected
    assert lines[0].startswith("single image") and "≤ 1.15" in lines[0]
    assert lines[1].startswith("CT series") and "≤ 1.00" in lines[1]


def test_summary_takes_medians_and_counts_missing_stages_as_zero():
    samples = [
        Sample(0.1, 1, 0, 0, {"detect": 10.0}),  # no box: nothing embedded
        Sample(0.5, 1, 1, 3, {"detect": 12.0, "embed": 400.0, "mask_decode": 80.0}),
        Sample(0.4, 1, 1, 1, {"detect": 11.0, "embed": 350.0, "mask_decode": 30.0}),
    ]
    row = summary(samples)
    assert (row["median_ms"], row["calls"], row["frames"]) == (400.0, 3, 1)
    assert (row["detect_ms"], row["embed_ms"], row["mask_decode_ms"]) == (11.0, 350.0, 30.0)
    assert row["detect_embed_ms"] == 361.0
    assert (row["embedded"], row["boxes"], row["frames_per_s"]) == (0.67, 1.33, 2.5)


@pytest.mark.slow
def test_a_tiny_fixture_run_writes_both_bundles_with_provenance(tmp_path):
    out = tmp_path / "detectors"
    args = ["--fixture", "--rounds", "1", "--slices", "2", "--series", "4", "--out", str(out)]
    rows = main([*args, "--backend", "openvino"])
    with out.with_suffix(".csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(rows) == 4
    by = {(r["role"], r["part"]): r for r in written}
    assert set(by) == {(role, part) for role in ("yolo", "sam-head") for part in PARTS}
    for row in written:
        assert row["commit"] and row["cpu"] and row["date"] and row["v_openvino"]
        assert row["backend"] == "openvino" and row["fixture"] == "True"
        assert float(row["median_ms"]) > 0 and float(row["embed_ms"]) > 0
    assert by[("yolo", "single")]["fingerprint"] == Bundle.load(SHIPPED_BUNDLE).fingerprint
    assert by[("yolo", "single")]["detector_weights"] == "detector.onnx"
    head = by[("sam-head", "series")]
    assert head["bundle"] == BUNDLE_NAME and head["detector_weights"] == "detector-head.onnx"
    assert head["head"].startswith("fixture: an untrained")
    # sam-head embeds every frame of the series; YOLO at most those
    assert (head["frames"], head["calls"], float(head["embedded"])) == ("4", "1", 4.0)
    assert float(by[("yolo", "series")]["embedded"]) <= 4
    assert by[("sam-head", "single")]["calls"] == "2"  # 2 slices x 1 round, warm-up left out
    assert head["series_slices"] == "62-65"
    report = out.with_suffix(".md").read_text()
    assert "FIXTURE HEAD, NOT A TRAINED ONE" in report
    assert report.count("(target ≤") == 2


def test_the_shipped_bundle_s_not_selected_head_becomes_a_sam_head_bundle(tmp_path):
    from benchmarks.trained_head import write_trained_head_bundle

    shipped = json.loads((SHIPPED_BUNDLE / "model.json").read_text())
    if shipped["detector"]["selected"] == "sam-head":
        pytest.skip("the shipped bundle serves its SAM head: nothing to build")
    (row,) = [r for r in shipped["metrics"]["table"] if r["row"].startswith("automatic, sam-head")]
    bundle = Bundle.load(write_trained_head_bundle(SHIPPED_BUNDLE, tmp_path / "head"))
    assert bundle.settings_values()["detector_kind"] == "sam-head"
    assert (bundle.detector.score_threshold, bundle.detector.box_margin) == (
        row["score_threshold"],
        row["box_margin"],
    )
    assert bundle.sam.weights is None  # zero-shot: the pair the head was tuned with
    head = SHIPPED_BUNDLE / shipped["detectors"]["sam-head"]["weights"]
    assert bundle.detector.weights.read_bytes() == head.read_bytes()


def test_a_bundle_that_trained_no_head_is_refused(tmp_path):
    from benchmarks.trained_head import write_trained_head_bundle
    from lesionseg.errors import LesionSegError

    (tmp_path / "model.json").write_text(json.dumps({"name": "x", "detectors": {"yolo": {}}}))
    with pytest.raises(LesionSegError, match="trained no SAM head"):
        write_trained_head_bundle(tmp_path, tmp_path / "out")
