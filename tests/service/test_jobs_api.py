"""The /jobs API through the real models in real `bentoml serve` processes, pushing to a real
Orthanc: a job accepted by one server process is done and pushed by the next one; a job by
reference fetches its series from that Orthanc and pushes its SEG back."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lesionseg.pacs.dicomweb import StowClient
from service.launcher import REPO_ROOT, running_server
from tests.service.dicom_inputs import lits_ct

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CT = Path(get_testdata_file("CT_small.dcm"))


def study_file() -> bytes:
    """CT_small.dcm with a birth date added: every patient identifier the logs must not show."""
    ds = pydicom.dcmread(CT)
    ds.PatientBirthDate = "19420817"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def submit(url: str, data: bytes, **fields) -> httpx.Response:
    files = [("files", ("ct.dcm", data, "application/dicom"))]
    return httpx.post(f"{url}/jobs", files=files, data=fields, timeout=60)


def poll(url: str, location: str, until, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while not until(status := httpx.get(f"{url}{location}", timeout=30).json()):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    return status


@pytest.fixture(scope="module")
def restarted(model_store, orthanc, tmp_path_factory):
    """Server 1 accepts a job while its models are still loading and is stopped before it can
    run it; server 2, on the same job store, is yielded with that job and its start time."""
    root = tmp_path_factory.mktemp("jobs-api")
    env = {
        "LESIONSEG_JOBS_DIR": str(root / "jobs"),
        "LESIONSEG_DICOMWEB_URL": orthanc.dicomweb_url,
        "LESIONSEG_PUSH_INITIAL_DELAY_S": "0.5",
        "LESIONSEG_PUSH_MAX_DELAY_S": "2",
        "LESIONSEG_MAX_FRAMES": "8",  # the largest job here: 3 slices fetched by reference
    }
    with running_server(env, root / "first.log", ready_path="/livez") as url:
        response = submit(url, study_file(), transaction_id="study-1")
        assert response.status_code == 202, response.text
        accepted = response.json()
        # still loading the models: the job waits in the queue when the server stops
        assert httpx.get(f"{url}{accepted['location']}").json()["state"] == "queued"
    restart_time = time.time()
    with running_server(env, root / "second.log") as url:
        yield url, accepted, restart_time, root


def test_job_accepted_before_a_restart_is_done_and_pushed_after_it(restarted, orthanc):
    url, accepted, restart_time, _ = restarted
    assert (accepted["transaction_id"], accepted["push_state"]) == ("study-1", "pending")
    status = poll(url, accepted["location"], lambda s: s["state"] in ("done", "failed"))
    assert status["state"] == "done", status
    assert status["started_at"] >= restart_time  # run by the second process
    result = httpx.get(f"{url}{status['result']}", timeout=30)
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(result.content))
    source = pydicom.dcmread(CT)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert status["summary"]["seg"]["sop_instance_uid"] == seg.SOPInstanceUID

    pushed = poll(url, accepted["location"], lambda s: s["push_state"] != "pending")
    assert pushed["push_state"] == "pushed", pushed
    assert orthanc.sop_instance_uids().count(seg.SOPInstanceUID) == 1
    stored = orthanc.instance_file(seg.SOPInstanceUID)
    assert stored.PixelData == seg.PixelData


def test_duplicate_transaction_id_is_409(restarted):
    url, accepted, *_ = restarted
    duplicate = submit(url, CT.read_bytes(), transaction_id="study-1")
    assert duplicate.status_code == 409
    assert duplicate.json()["job_id"] == accepted["id"]
    assert duplicate.json()["location"] == accepted["location"]


def test_unpushed_job_bad_input_and_unknown_ids(restarted):
    url, *_ = restarted
    response = submit(url, CT.read_bytes(), push="false")
    assert response.status_code == 202
    assert response.headers["Location"] == response.json()["location"]
    bad = submit(url, b"not a DICOM file at all", transaction_id="broken-1")
    assert bad.status_code == 202  # accepted; the worker finds out and says why
    status = poll(url, response.json()["location"], lambda s: s["state"] in ("done", "failed"))
    assert (status["state"], status["push_state"]) == ("done", "none"), status
    failed = poll(url, bad.json()["location"], lambda s: s["state"] in ("done", "failed"))
    # the decoder's own InputError message, not the generic internal-error text
    assert failed["state"] == "failed" and "not a readable image" in failed["reason"], failed
    result = httpx.get(f"{url}{bad.json()['location']}/result")
    assert result.status_code == 409 and result.json()["state"] == "failed"
    assert httpx.get(f"{url}/jobs/0000/result").status_code == 404
    assert httpx.get(f"{url}/readyz").status_code == 200


def docs_jobs_example() -> str:
    text = (REPO_ROOT / "docs" / "dicom-pacs.md").read_text()
    section = text[text.index("## Async jobs") :]
    return section[section.index("```python\n") + 10 : section.index("```\n", 10)]


def test_docs_jobs_example_works(restarted, tmp_path, monkeypatch):
    """The Python example of docs/dicom-pacs.md, on a two-file series made from CT_small.dcm."""
    url, *_ = restarted
    for i in range(2):
        ds = pydicom.dcmread(CT)
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{i + 1}"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient[2] += 5.0 * i
        ds.save_as(tmp_path / f"ct-00{i + 1}.dcm")
    code = docs_jobs_example().replace("http://localhost:3000", url)
    code = code.replace('"ACC-0001"', '"readme-example"')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/dicom-pacs.md", "exec"), {})
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG"
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert sorted(r.ReferencedSOPInstanceUID for r in referenced) == [
        f"{pydicom.dcmread(CT).SOPInstanceUID}.{i}" for i in (1, 2)
    ]


def docs_reference_example() -> str:
    text = (REPO_ROOT / "docs" / "dicom-pacs.md").read_text()
    section = text[text.index("## Jobs by reference") :]
    return section[section.index("```python\n") + 10 : section.index("```\n", 10)]


def test_docs_reference_example_fetches_a_series_and_pushes_its_seg_back(restarted, orthanc, lits):
    """The acceptance of issue 22 (2): a real CT series stored in Orthanc, named by UIDs to
    POST /jobs (the example of docs/dicom-pacs.md), is fetched, segmented and its SEG pushed
    to Orthanc, referencing that series."""
    url, *_ = restarted
    files = lits_ct(lits, [106, 110, 114], patient=("Ref^Job", "REF1"))
    StowClient(orthanc.dicomweb_url).store(files)
    source = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for data in files]
    study, series = str(source[0].StudyInstanceUID), str(source[0].SeriesInstanceUID)
    code = docs_reference_example().replace("http://localhost:3000", url)
    code = code.replace("1.2.840.113619.2.55.3.604688119.969.1268071029.320", study)
    code = code.replace("1.2.840.113619.2.55.3.604688119.969.1268071029.321", series)
    code = code.replace('"ACC-0002"', '"reference-example"')
    scope: dict = {}
    exec(compile(code, "docs/dicom-pacs.md", "exec"), scope)
    status = scope["status"]
    assert (status["state"], status["push_state"]) == ("done", "pushed"), status
    assert (status["study"], status["series"], status["n_files"]) == (study, series, 3)
    seg = orthanc.instance_file(status["summary"]["seg"]["sop_instance_uid"])
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == study
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} <= {
        str(ds.SOPInstanceUID) for ds in source
    }
    assert len(seg.SegmentSequence) >= 1  # the LiTS slices have tumours


def test_no_patient_identifiers_in_job_status_or_server_logs(restarted):
    url, accepted, _, root = restarted
    status = poll(url, accepted["location"], lambda s: s["state"] in ("done", "failed"))
    source = pydicom.dcmread(io.BytesIO(study_file()))
    identifiers = [str(source.PatientName), str(source.PatientID), str(source.PatientBirthDate)]
    assert all(identifiers), identifiers
    texts = {"status": json.dumps(status)}
    texts |= {log.name: log.read_text() for log in root.glob("*.log")}
    assert len(texts) == 3
    for name, text in texts.items():
        for identifier in identifiers:
            assert identifier not in text, f"{identifier!r} appears in {name}"
