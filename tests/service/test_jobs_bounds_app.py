"""The /jobs routes within their bounds, in-process with a stand-in for the models: a full
queue answers 503 (an API key's full share 429) and drops nothing; the worker deletes the jobs
past the retention, whose ids then answer 404."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from starlette.testclient import TestClient

from lesionseg.settings import Settings
from service import job_worker as jobs_module
from service.auth import ApiKeyMiddleware, ApiKeys
from service.jobs import Jobs
from service.metrics import JOB_STORE_BYTES, JOBS_PURGED
from tests.pacs import StandIn

CT = Path(get_testdata_file("CT_small.dcm")).read_bytes()
KEYS = ("a" * 32, "b" * 32)


def submit(client: TestClient, key: str | None = None, **fields):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    files = [("files", ("ct.dcm", CT, "application/dicom"))]
    return client.post("/jobs", files=files, data=fields, headers=headers)


@pytest.fixture
def waiting() -> StandIn:
    """Models never ready: every accepted job stays queued."""
    service = StandIn()
    service.ready = False
    return service


def test_a_full_queue_is_503_and_keeps_every_accepted_job(waiting, tmp_path):
    settings = Settings(jobs_dir=tmp_path / "jobs", max_queued_jobs=2)
    with TestClient(Jobs(settings, lambda: waiting).app) as client:
        accepted = [submit(client, transaction_id=f"study-{n}") for n in range(2)]
        assert [r.status_code for r in accepted] == [202, 202]
        full = submit(client, transaction_id="study-3")
        assert full.status_code == 503, full.text
        assert "LESIONSEG_MAX_QUEUED_JOBS=2" in full.json()["error"]
        assert int(full.headers["Retry-After"]) >= 1
        # A client retrying an accepted submission still learns its job, full queue or not.
        retried = submit(client, transaction_id="study-0")
        assert retried.status_code == 409 and retried.json()["job_id"] == accepted[0].json()["id"]
        for response in accepted:
            assert client.get(response.headers["Location"]).json()["state"] == "queued"


def test_one_api_key_fills_only_its_share(waiting, tmp_path):
    settings = Settings(jobs_dir=tmp_path / "jobs", max_queued_jobs=10, max_requests_per_key=1)
    jobs = Jobs(settings, lambda: waiting)
    keys = ApiKeys(hashlib.sha256(k.encode()).digest() for k in KEYS)
    with TestClient(ApiKeyMiddleware(jobs.app, keys=keys)) as client:
        assert submit(client, KEYS[0]).status_code == 202
        second = submit(client, KEYS[0])
        assert second.status_code == 429, second.text
        assert "LESIONSEG_MAX_REQUESTS_PER_KEY=1" in second.json()["error"]
        assert int(second.headers["Retry-After"]) >= 1
        assert submit(client, KEYS[1]).status_code == 202  # another key has its own share


def test_the_worker_deletes_jobs_past_the_retention(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs_module, "PURGE_INTERVAL_S", 0.1)
    monkeypatch.setattr(jobs_module, "IDLE_POLL_S", 0.1)
    retention_s = 1.0
    settings = Settings(jobs_dir=tmp_path / "jobs", job_retention_hours=retention_s / 3600)
    service = StandIn()
    jobs = Jobs(settings, lambda: service)
    purged_before = JOBS_PURGED._value.get()
    with TestClient(jobs.app) as client:
        location = submit(client).headers["Location"]
        deadline = time.monotonic() + 30
        while (status := client.get(location)).json()["state"] != "done":
            assert time.monotonic() < deadline, status.text
            time.sleep(0.05)
        job_dir = jobs.store.job_dir(status.json()["id"])
        assert not (job_dir / "input").exists()  # gone once the result was written
        assert client.get(f"{location}/result").status_code == 200
        assert JOB_STORE_BYTES._value.get() > 0
        while client.get(location).status_code != 404:
            assert time.monotonic() < deadline, "the job was never purged"
            time.sleep(0.05)
        ended = time.time() - status.json()["finished_at"]
        assert ended >= retention_s
        assert client.get(f"{location}/result").status_code == 404
        assert not job_dir.exists()
    assert JOBS_PURGED._value.get() == purged_before + 1
