"""`lesionseg predict` and the service answer the same JSON (masks, boxes, scores, sources,
lesion ids and lesions_3d; timings and the service's store tags aside): both run the one engine
(lesionseg.pipeline.engine) and the one JSON (lesionseg.outputs.result_json). The inputs are the
README's examples (`lesionseg example`, what `make data` writes): a CT slice as PNG, the
3-slice CT DICOM series around it and the NIfTI volume of the same slices. The service runs
in-process on the session's ONNX export; the CLI is pointed at the same export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lesionseg.cli import main as cli_main
from lesionseg.datasets.examples import write_examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def examples(lits, tmp_path_factory) -> dict[str, list[Path]]:
    png, *series, nifti = write_examples(lits, tmp_path_factory.mktemp("examples"), 110)
    return {"png": [png], "dicom-series": series, "nifti": [nifti]}


@pytest.fixture
def cli(exported, monkeypatch, tmp_path):
    """Runs `lesionseg predict` on the service's export; returns the JSON it wrote."""
    monkeypatch.setenv("LESIONSEG_EXPORT_DIR", str(exported[0]))

    def predict(paths: list[Path], *options: str) -> dict:
        out = tmp_path / "out"
        assert cli_main(["predict", *map(str, paths), *options, "--out", str(out)]) == 0
        stem = Path(paths[0].name.removesuffix(".gz")).stem
        return json.loads((out / f"{stem}.json").read_text())

    return predict


def parts(paths: list[Path], field: str) -> list:
    return [(field, (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


def job_summary(client, paths: list[Path], **fields: str) -> dict:
    """The JSON summary of an async job on ``paths`` (what the job worker computed)."""
    accepted = client.post("/jobs", files=parts(paths, "files"), data={"push": "false", **fields})
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 300
    while (status := client.get(accepted.json()["location"]).json())["state"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["state"] == "done", status
    summary = status["summary"]
    del summary["seg"]  # the SEG's UIDs: the job's own answer, beside the JSON
    return summary


def comparable(body: dict) -> dict:
    """The body without what may differ: wall times, and the service's store tags."""
    body = json.loads(json.dumps(body))
    for frame in body.get("frames", [body]):
        del frame["timings_ms"]
    body["models"].pop("store", None)
    return body


def assert_same(service: dict, cli: dict, *, prompted: bool = False) -> None:
    assert "store" in service["models"] and "store" not in cli["models"]
    service, cli = comparable(service), comparable(cli)
    if prompted:  # the CLI loads no detector for caller boxes; the service always has one
        assert "detector" not in cli["models"]
        del service["models"]["detector"]
    assert service.keys() == cli.keys()
    for key in service:  # one key at a time: a failure names it
        assert service[key] == cli[key], key


def test_the_readme_png(client, cli, examples):
    (png,) = examples["png"]
    response = client.post("/segment", files=parts([png], "image"))
    assert response.status_code == 200, response.text
    service = response.json()
    assert service["lesions"], "the example slice shows a lesion"
    assert_same(service, cli([png]))


def test_the_nifti_volume(client, cli, examples):
    (nifti,) = examples["nifti"]
    response = client.post("/segment", files=parts([nifti], "image"))
    assert response.status_code == 200, response.text
    service = response.json()
    assert service["number_of_frames"] == 3 and service["lesions_3d"]
    assert {"lesion_id", "mask"} <= service["frames"][1]["lesions"][0].keys()
    assert_same(service, cli([nifti]))


def test_a_dicom_series(client, cli, examples):
    """The service's JSON of a series of files is the job's summary (as /segment/dicom-seg
    computes it, beside the SEG)."""
    series = examples["dicom-series"]
    service = job_summary(client, series)
    assert service["number_of_frames"] == 3 and service["lesions_3d"]
    assert service["frames"][0]["source"]["format"] == "DICOM"
    assert_same(service, cli(series))


def test_propagation_through_a_dicom_series(client, cli, examples, lits):
    series = examples["dicom-series"]
    boxes = json.dumps([[*lits.slice(110).boxes[0].tolist(), 1]])
    response = client.post(
        "/segment/propagate", files=parts(series, "image"), data={"boxes": boxes}
    )
    assert response.status_code == 200, response.text
    service = response.json()
    (lesion,) = service["lesions_3d"]
    assert 1 in lesion["frames"]
    assert_same(service, cli(series, "--boxes", boxes, "--propagate"), prompted=True)
