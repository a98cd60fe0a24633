"""`make bench-gpu` starts and degrades per engine: its CPU dry run (these machines have no GPU)."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import torch

from benchmarks import gpu, payloads
from benchmarks.gpu import ENGINES, SERVERS, http_section, main
from benchmarks.payloads import EXAMPLE
from lesionseg.datasets.examples import write_examples


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: nothing to refuse")
def test_without_cuda_it_refuses_to_write_gpu_results(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "gpu")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_dry_run_times_torch_on_cpu_and_records_every_other_engine_as_skipped(lits, tmp_path):
    if not EXAMPLE.is_file():  # `make data` writes it; a bare pytest run needs it too
        write_examples(lits, EXAMPLE.parent, 110)
    out = tmp_path / "gpu"
    assert main(["--dry-run", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    timed = [r for r in rows if r["status"] == "ok"]
    assert [(r["engine"], r["batch"], r["device"]) for r in timed] == [
        ("torch-fp32", "1", "cpu"),
        ("torch-fp32", "2", "cpu"),
    ]
    assert all(float(r["ms_per_img"]) > 0 and float(r["img_per_s"]) > 0 for r in timed)
    skipped = {(r["section"], r["engine"]): r["status"] for r in rows if r["status"] != "ok"}
    assert set(skipped) == {("encoder", e) for e in ENGINES if e != "torch-fp32"} | {
        ("http", s) for s in SERVERS
    }
    assert all(s.startswith("skipped: ") and len(s) > len("skipped: ") for s in skipped.values())
    text = out.with_suffix(".md").read_text()
    assert "DRY RUN on CPU" in text and "INCOMPLETE" not in text and "## Not run" not in text
    assert ("no GPU:" in text) != torch.cuda.is_available()


def test_skip_http_records_every_server_as_skipped_with_the_reason():
    args = argparse.Namespace(skip_http="not carried: too big", dry_run=False, servers=["a", "b"])
    assert http_section(args) == [
        {"section": "http", "engine": s, "status": "skipped: not carried: too big"}
        for s in ("a", "b")
    ]


def test_rows_measured_before_a_run_is_stopped_are_in_the_files(tmp_path, monkeypatch):
    """benchmarks/gpu_device.sh stops the bench at its time limit: what it measured stays."""

    head = {"section": "encoder", "engine": "torch-fp32", "status": "ok", "precision": "fp32"}

    def two_rows_then_stopped(args, image):
        for batch in (1, 2):
            yield {**head, "batch": batch, "ms_per_img": 3.0}
        raise KeyboardInterrupt  # what a signal from `timeout` does to the sweep

    monkeypatch.setattr(gpu, "encoder_section", two_rows_then_stopped)
    monkeypatch.setattr(payloads, "read_example", lambda: np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "gpu"
    with pytest.raises(KeyboardInterrupt):
        main(["--dry-run", "--out", str(out)])
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [(r["engine"], r["batch"]) for r in rows] == [("torch-fp32", "1"), ("torch-fp32", "2")]
    text = out.with_suffix(".md").read_text()
    assert "| torch-fp32 | fp32 | 2 |" in text
    # ... and the report says the run is incomplete, and what did not run
    assert text.startswith("# GPU benchmark — DRY RUN on CPU, not GPU figures — INCOMPLETE")
    assert "every engine and server ran" not in text
    not_run = text.split("## Not run (the run ended before them)\n\n")[1].splitlines()
    assert not_run == [f"- encoder {e}: batch 1, 2" for e in ENGINES if e != "torch-fp32"] + [
        f"- http {s}" for s in SERVERS
    ]


def test_an_engine_stopped_mid_sweep_lists_its_batches_not_run():
    args = argparse.Namespace(engines=["a", "b", "c"], batches=[1, 2, 4], servers=["s"])
    rows = [
        {"section": "encoder", "engine": "a", "status": "ok", "batch": 1},
        {"section": "encoder", "engine": "b", "status": "skipped: no CUDA", "batch": None},
        {"section": "encoder", "engine": "c", "status": "ok", "batch": 1},
        {"section": "encoder", "engine": "c", "status": "ok", "batch": 2},
    ]
    assert gpu.not_run(args, rows) == ["encoder a: batch 2, 4", "encoder c: batch 4", "http s"]
    rows += [{"section": "encoder", "engine": e, "status": "ok", "batch": 4} for e in "ac"]
    rows += [{"section": "encoder", "engine": "a", "status": "ok", "batch": 2}]
    rows += [{"section": "http", "engine": "s", "status": "skipped: no bentoml"}]
    assert gpu.not_run(args, rows) == []
