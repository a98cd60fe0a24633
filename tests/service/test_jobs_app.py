"""The /jobs routes, worker and lifecycle in-process, with a stand-in for the models.

The stand-in writes a real SEG with highdicom (tests.pacs.make_test_seg); the real models are
exercised by tests/service/test_jobs_api.py.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from starlette.testclient import TestClient

from lesionseg.settings import Settings
from service.jobs import Jobs
from tests.pacs import StandIn

CT = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def service() -> StandIn:
    return StandIn()


@pytest.fixture
def client(service, tmp_path):
    jobs = Jobs(Settings(jobs_dir=tmp_path / "jobs"), lambda: service)
    with TestClient(jobs.app) as test_client:
        yield test_client


def wait_for(client: TestClient, location: str, states=("done", "failed"), timeout=30) -> dict:
    deadline = time.monotonic() + timeout
    while (body := client.get(location).json())["state"] not in states:
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    return body


def submit(client: TestClient, *files: bytes, **fields) -> object:
    parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    return client.post("/jobs", files=parts, data=fields)


def test_submit_poll_fetch_and_duplicate(client, service):
    ct = CT.read_bytes()
    response = submit(client, ct, ct, transaction_id="acc-1", window="brain")
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    assert location == response.json()["location"] == f"/jobs/{response.json()['id']}"
    assert response.json()["push_state"] == "none"  # no DICOMweb server configured

    duplicate = submit(client, CT.read_bytes(), transaction_id="acc-1")
    assert duplicate.status_code == 409
    assert duplicate.json()["job_id"] == response.json()["id"]
    assert "acc-1" in duplicate.json()["error"]

    status = wait_for(client, location)
    assert status["state"] == "done", status
    assert status["summary"] == {"frames": 2}
    assert status["created_at"] <= status["started_at"] <= status["finished_at"]
    assert service.calls == [(2, "brain")]  # the duplicate never ran
    result = client.get(status["result"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(result.content))
    assert seg.Modality == "SEG"
    source_uid = pydicom.dcmread(CT).SOPInstanceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source_uid


def test_jobs_wait_for_readiness_and_results_wait_for_jobs(client, service):
    service.ready = False
    location = submit(client, CT.read_bytes()).headers["Location"]
    time.sleep(1.5)
    assert client.get(location).json()["state"] == "queued"
    early = client.get(f"{location}/result")
    assert early.status_code == 409 and early.json()["state"] == "queued"
    assert early.headers["Retry-After"] == "5"
    service.ready = True
    assert wait_for(client, location)["state"] == "done"
    assert client.get(f"{location}/result").status_code == 200


def test_failed_job_says_why(client):
    location = submit(client, b"this is not DICOM").headers["Location"]
    status = wait_for(client, location)
    assert (status["state"], status["reason"]) == ("failed", "file 1 is not a DICOM file")
    result = client.get(f"{location}/result")
    assert result.status_code == 409 and "not a DICOM file" in result.json()["error"]


def test_unknown_jobs_and_bad_submissions(client):
    assert client.get("/jobs/0123abc").status_code == 404
    assert client.get("/jobs/0123abc/result").status_code == 404
    no_files = client.post("/jobs", data={"transaction_id": "x"})
    assert no_files.status_code == 400 and "no files" in no_files.json()["error"]
    assert submit(client, b"").status_code == 400
    push = submit(client, CT.read_bytes(), push="true")
    assert push.status_code == 400 and "LESIONSEG_DICOMWEB_URL" in push.json()["error"]
    assert submit(client, CT.read_bytes(), push="maybe").status_code == 400


def test_jobs_survive_a_restart(service, tmp_path):
    settings = Settings(jobs_dir=tmp_path / "jobs")
    service.ready = False  # the first process never gets to run the job
    with TestClient(Jobs(settings, lambda: service).app) as first:
        location = submit(first, CT.read_bytes(), transaction_id="acc-2").headers["Location"]
    service.ready = True
    with TestClient(Jobs(settings, lambda: service).app) as second:
        assert wait_for(second, location)["state"] == "done"
        assert submit(second, CT.read_bytes(), transaction_id="acc-2").status_code == 409


def test_a_submit_before_the_job_store_is_open_is_503(service, tmp_path):
    jobs = Jobs(Settings(jobs_dir=tmp_path / "jobs"), lambda: service)
    client = TestClient(jobs.app)  # no `with`: the lifespan, which opens the store, has not run
    response = submit(client, CT.read_bytes())
    assert response.status_code == 503, response.text
    assert "starting" in response.json()["error"] and response.headers["Retry-After"] == "2"
