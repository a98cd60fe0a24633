"""``lesionseg train`` end to end on the LiTS slabs written in every dataset layout, with the
tiniest settings: each run writes a bundle the service can load. Also a SAM fine-tune whose
sam.pt round-trips, a time budget, Ctrl-C and a bad dataset (slow tier)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lesionseg.models.bundle import FORMAT as BUNDLE_FORMAT
from lesionseg.models.bundle import Bundle
from lesionseg.models.sam import load_sam
from lesionseg.train.train import main as train

from .datasets import fixtures

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SLABS = ((10, 13), (60, 63), (110, 113))  # three cases of three slices
SMALL = ["--batch", "4", "--imgsz", "64", "--max-val-frames", "2"]  # every run
HEAD = ["--head-epochs", "1", "--head-views", "1"]  # the sam-head's tiniest settings
TINY = ["--epochs", "1", "--sam", "none", *SMALL, *HEAD]
TUMOUR = ["--labels", "tumour"]

# layout -> (writer, its options, extra command-line arguments, the bundle's classes)
LAYOUTS = {
    "nnunet": (fixtures.write_nnunet, {}, [*TUMOUR, "--window", "abdomen"], ["tumour"]),
    "folders": (fixtures.write_folders, {}, TUMOUR, ["tumour"]),
    "busi": (fixtures.write_busi, {"normal": 2}, [], ["tumour"]),  # with negatives
    "dicom-seg": (fixtures.write_dicom, {}, ["--window", "abdomen"], ["liver", "tumour"]),
    "dicom-rtstruct": (fixtures.write_dicom, {"truth": "rtstruct"}, TUMOUR, ["tumour"]),
    "coco": (fixtures.write_coco, {}, [], ["liver", "tumour"]),
}


@pytest.fixture(scope="module", autouse=True)
def _torch_state():
    """ultralytics switches torch to deterministic algorithms; the next tests get it back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def written(lits, tmp_path_factory):
    """layout name -> its folder, written on first use."""
    root, paths = tmp_path_factory.mktemp("train-layouts"), {}

    def get(name: str) -> Path:
        if name not in paths:
            writer, options, _, _ = LAYOUTS[name]
            paths[name] = writer(lits, root / name, slabs=SLABS, **options)
        return paths[name]

    return get


def _train(dataset: Path, out: Path, *args: str) -> dict:
    started = time.time()
    assert train([str(dataset), "--out", str(out), "--workdir", str(out) + "-work", *args]) == 0
    print(f"lesionseg train {dataset.name}: {time.time() - started:.1f} s")
    return _check_bundle(out)


def _check_bundle(out: Path) -> dict:
    """A bundle the service loads: model.json, detector names = classes, the table."""
    from lesionseg.models.detector import UltralyticsDetector
    from lesionseg.models.sam_head_net import load_head

    record = json.loads((out / "model.json").read_text())
    assert record["format"] == BUNDLE_FORMAT
    bundle = Bundle.load(out)  # checks model.json's keys, files and the detector's names
    assert list(bundle.classes) == record["classes"]
    size = record["detector"]["image_size"]
    if record["detector"]["architecture"] == "sam-head":
        names = dict(enumerate(load_head(out / "detector.pt").config.classes))
    else:
        names = UltralyticsDetector(out / "detector.pt", image_size=size).names
    assert list(names.values()) == record["classes"] and list(names) == list(range(len(names)))
    assert 0.0 <= record["detector"]["score_threshold"] <= 1.0
    with (out / "evaluation.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["row"] == "GT boxes, SAM zero-shot" and float(rows[0]["lesion_dice"]) > 0.3
    assert "| row | detector |" in (out / "evaluation.md").read_text()
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # lesionseg evaluate of the bundle on the validation side, every frame
    held_out = json.loads((out / "held-out" / "evaluation.json").read_text())
    assert held_out["bundle"]["fingerprint"] == bundle.fingerprint
    assert held_out["selection"]["parts"] == record["split"]["val"] and held_out["frames"] >= 1
    return record


# auto trains both detectors (and picks) on every layout; each kind alone on a volume (the
# readers and the phases are the same: CI time is kept under its limit).
RUNS = [(layout, "auto") for layout in LAYOUTS] + [("nnunet", "yolo"), ("nnunet", "sam-head")]


@pytest.mark.parametrize("layout, detector", RUNS)
def test_train_writes_a_bundle_from_every_layout(layout, detector, written, tmp_path):
    _, _, args, classes = LAYOUTS[layout]
    record = _train(written(layout), tmp_path / "bundle", *TINY, *args, "--detector", detector)
    assert record["classes"] == classes
    assert record["dataset"]["format"] == layout.split("-")[0]
    split, cases = record["split"], record["dataset"]["cases"]
    assert split["method"] == "case" and len(split["val"]) == max(1, round(cases * 0.2))
    assert len(split["train"]) + len(split["val"]) == cases
    assert record["window"] == ("abdomen" if "--window" in args else None)
    detector_record = record["detector"]
    assert detector_record["epochs_run"] == 1
    # The shipped detector competes when its classes are the dataset's (LiTS: tumour) and a
    # YOLO is trained, and a one-epoch fine-tune may lose to it; the bundle then ships it at
    # its own size. A sam-head runs at SAM's 256 px.
    trained = {"auto": {"yolo", "sam-head"}}.get(detector, {detector})
    assert set(record["detectors"]) == trained == set(detector_record["kinds_trained"])
    tried = {r["detector"] for r in record["metrics"]["table"] if r["detector"] != "-"}
    shipped = {"shipped"} if classes == ["tumour"] and "yolo" in trained else set()
    assert tried == trained | shipped
    assert detector_record["selected"] in tried
    expected_size = 64 if detector_record["selected"] == "yolo" else 256
    assert detector_record["image_size"] == expected_size
    head = detector_record["selected"] == "sam-head"
    assert (detector_record["architecture"] == "sam-head") == head
    for kind, kept in record["detectors"].items():  # the one not selected, kept in logs/
        where = "detector.pt" if kind == detector_record["selected"] else "logs/"
        assert (
            kept["weights"].startswith(where) and (tmp_path / "bundle" / kept["weights"]).is_file()
        )
    assert record["sam"] == {
        "family": "litemedsam",
        "weights": None,
        "recipe": "none",
        "selected": "zero-shot",
    }
    assert not (tmp_path / "bundle" / "sam.pt").exists()
    if len(classes) > 1:  # a row per class
        rows = [r["row"] for r in record["metrics"]["table"]]
        assert [r for r in rows if r.startswith("selected, class")] == [
            f"selected, class {c}" for c in classes
        ]


def test_from_scratch_never_reads_the_shipped_detector_and_records_the_start_commit(
    written, tmp_path, monkeypatch
):
    """--from-scratch trains without the shipped bundle (neither start nor candidate); the
    record's commit and dirty flag are the ones taken before any work (no workdir yet)."""
    from lesionseg.train import train as train_module

    def refuse(*args):
        raise AssertionError("--from-scratch read the shipped detector")

    taken = []

    def git_state():
        taken.append((tmp_path / "bundle-work").exists())
        return {"git_commit": "0123456789ab", "git_dirty": True}

    monkeypatch.setattr(train_module, "keep_shipped_detector", refuse)
    monkeypatch.setattr(train_module, "git_state", git_state)
    args = [*TINY, "--from-scratch", "--detector", "yolo"]
    record = _train(written("busi"), tmp_path / "bundle", *args)
    assert taken == [False]  # once, before the run made its workdir
    assert (record["git_commit"], record["git_dirty"]) == ("0123456789ab", True)
    assert record["detector"]["start"] == "random init"
    tried = {r["detector"] for r in record["metrics"]["table"] if r["detector"] != "-"}
    assert tried == {"yolo"} and record["detector"]["selected"] == "yolo"


def test_one_volume_is_split_by_slab_and_sliced_along_every_axis(lits, tmp_path):
    """The shipped bundle's recipe in small: one volume, slab split, --axes all (the head's
    slices; the YOLO reads the same frames and runs a minute longer)."""
    dataset = fixtures.write_nnunet(lits, tmp_path / "one", slabs=((100, 114),))
    slab = ["--slab-gap", "2", "--val-fraction", "0.25", "--axes", "all"]
    slab += ["--detector", "sam-head"]
    with pytest.warns(UserWarning, match="one case: splitting it by slab"):
        record = _train(dataset, tmp_path / "bundle", *TINY, *LAYOUTS["nnunet"][2], *slab)
    split = record["split"]
    assert split["method"] == "slab" and split["gap"] == 2
    assert (split["train_slices"], split["val_slices"]) == ([0, 7], [10, 13])
    # 8 axial training slices, and 128 + 128 slices across them (lesion-free ones capped)
    assert record["dataset"]["axes"] == "all"
    assert record["detectors"]["sam-head"]["slices"]["train"] > 8 + 64


def test_sam_decoder_fine_tune_round_trips(written, tmp_path):
    out = tmp_path / "bundle"
    record = _train(
        written("folders"),
        out,
        *[*SMALL, *TUMOUR, "--epochs", "1", "--detector", "yolo"],
        *["--sam", "decoder", "--sam-epochs", "1", "--sam-steps", "2"],
    )
    sam = record["sam"]
    assert sam["recipe"] == "decoder" and sam["epochs_run"] == 1 and sam["sha256"]
    rows = [r["row"] for r in record["metrics"]["table"]]
    assert "GT boxes, SAM decoder fine-tune" in rows
    if sam["selected"] == "decoder":
        assert sam["weights"] == "sam.pt" and Bundle.load(out).sam.weights == out / "sam.pt"
        path = out / "sam.pt"
    else:  # the fine-tune lost to the zero-shot SAM: kept in logs/, not served
        assert sam["weights"] is None and not (out / "sam.pt").exists()
        path = out / "logs" / "sam.not-selected.pt"
    assert load_sam("litemedsam", path).spec.sha256 == sam["sha256"]


def test_a_tiny_time_budget_still_writes_a_bundle(written, tmp_path):
    """The budget is spent before the detector starts: it trains a few seconds, SAM not at
    all, and the bundle is valid all the same."""
    record = _train(
        written("folders"),
        tmp_path / "bundle",
        # 400 epochs: far more than fit in the detector's minimum of 10 s (50 did, on a quiet
        # machine, ~0.2 s an epoch of these 64 px frames).
        *[*SMALL, *TUMOUR, "--epochs", "400", "--sam", "decoder", "--time-budget", "0.05"],
    )
    assert record["training"]["time_budget_min"] == 0.05
    assert record["detector"]["epochs_run"] < 400
    assert record["sam"]["recipe"] == "decoder (stopped before its first epoch)"
    assert record["sam"]["weights"] is None
    log = json.loads((tmp_path / "bundle" / "logs" / "detector.training-log.json").read_text())
    assert log[-1]["time"] < 30, "the detector trained far past the budget"


def test_epochs_cap_a_time_budget(written, tmp_path):
    """ultralytics' time mode would fill the budget with epochs; --epochs stays the cap."""
    args = LAYOUTS["nnunet"][2]
    record = _train(written("nnunet"), tmp_path / "bundle", *TINY, *args, "--time-budget", "10")
    assert record["detector"]["epochs_run"] == 1
    assert record["training"]["seconds"] < 120


def test_ctrl_c_stops_training_and_writes_the_bundle(written, tmp_path):
    out, work = tmp_path / "bundle", tmp_path / "work"
    command = [sys.executable, "-m", "lesionseg.cli", "train", str(written("folders"))]
    command += ["--out", str(out), "--workdir", str(work), *TUMOUR, *SMALL]
    command += ["--epochs", "200", "--sam", "decoder", "--detector", "yolo"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    results = work / "train" / "results.csv"
    deadline = time.time() + 120
    while not results.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # the first epoch is done
    assert process.poll() is None, process.communicate()[0][-3000:]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output[-3000:]
    assert "Ctrl-C" in output
    record = _check_bundle(out)
    assert record["detector"]["interrupted"] is True and record["training"]["interrupted"]
    assert 1 <= record["detector"]["epochs_run"] < 200
    assert record["sam"]["recipe"] == "decoder (skipped: Ctrl-C during detector training)"


TUMOURS = [f"tumour/lits117_z{z:03d}" for a, b in SLABS for z in range(a, b)]


@pytest.mark.parametrize(
    "layout, args, message",
    [
        ("folders", [], r"lits117_z061\.png"),  # a mask that is no PNG
        ("busi", ["--val-cases", "tumour/lits117_z010,ghost"], r"\['ghost'\]"),
        (
            "busi",
            ["--val-cases", "normal/normal_0,normal/normal_1"],
            r"validation side \(normal/normal_0, normal/normal_1\) holds no lesion",
        ),
        (
            "busi",
            ["--val-cases", ",".join(TUMOURS)],
            r"training side \(normal/normal_0, .*no lesion",
        ),
    ],
    ids=["unreadable-mask", "unknown-val-case", "val-without-lesion", "train-without-lesion"],
)
def test_bad_data_exits_2_with_a_message(layout, args, message, written, tmp_path, capsys):
    dataset = tmp_path / layout
    shutil.copytree(written(layout), dataset)
    if layout == "folders":
        (dataset / "masks" / "lits117_z061.png").write_bytes(b"not a png")
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "model.json").write_text("{}")  # an earlier bundle
    command = [str(dataset), "--out", str(out), "--workdir", str(tmp_path / "w"), *TINY, *args]
    assert train(command) == 2
    error = capsys.readouterr().err
    assert error.startswith("lesionseg train: error:")
    assert re.search(message, error), error
    if "training side" not in message:  # refused before the old bundle is cleared
        assert (out / "model.json").read_text() == "{}"
