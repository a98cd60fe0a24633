"""Workers apart from the API, end to end (``python -m service.worker``).

Scale-out: an API that only accepts jobs (``LESIONSEG_JOBS_WORKER=false``) and
two worker processes (``python -m service.worker``) on one real PostgreSQL job table and one
shared jobs directory, pushing to a real Orthanc. 20 jobs; one worker is SIGKILLed while it
runs one: every job is done exactly once (the killed one re-run by the other worker once the
lease expired), every result pushed exactly once, none lost. On one machine
(docs/pacs-integration.md: ``LESIONSEG_JOBS_WORKER=false make serve`` and ``make worker``): the
same with the default sqlite store and one worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pydicom
import pytest
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from lesionseg.settings import Settings
from service.jobs import Jobs
from service.launcher import REPO_ROOT, free_port
from tests.pacs import ct_small, part10

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_JOBS = 20
LEASE_S = 3.0


def study(i: int) -> bytes:
    """CT_small as a study of its own (new UIDs), so that each job's SEG is told apart."""
    ds = ct_small()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in "123")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = f"SCALE{i:02d}"
    return part10(ds)


def start_worker(env: dict, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service.worker", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"worker never ready: {log.read_text()[-3000:]}")


def rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as db:
        return db.execute(
            "SELECT id, state, runs, push_state, push_attempts, lease_owner FROM jobs"
        ).fetchall()


def test_two_workers_one_killed_every_job_done_and_pushed_once(
    model_store, orthanc, postgres, tmp_path
):
    url = postgres.database()
    jobs_dir = tmp_path / "jobs"
    env = {
        **os.environ,
        "LESIONSEG_JOBS_DIR": str(jobs_dir),
        "LESIONSEG_JOBS_DATABASE_URL": url,
        "LESIONSEG_JOB_LEASE_S": str(LEASE_S),
        "LESIONSEG_DICOMWEB_URL": orthanc.dicomweb_url,
        "LESIONSEG_MAX_QUEUED_JOBS": str(N_JOBS),  # the limits this test relies on
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # The API side: accepts jobs into PostgreSQL and runs none (its stand-in never segments).
    api_settings = Settings(
        jobs_dir=jobs_dir, jobs_database_url=url, jobs_worker=False,
        dicomweb_url=orthanc.dicomweb_url, max_queued_jobs=N_JOBS,
    )  # fmt: skip
    api = Jobs(api_settings, lambda: None)  # it never segments
    ports = [free_port(), free_port()]
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(env, p, log) for p, log in zip(ports, logs, strict=True)]
    try:
        studies = {}
        with TestClient(api.app, client=("127.0.0.1", 50000)) as client:
            assert api.worker is None  # LESIONSEG_JOBS_WORKER=false: this process runs none
            for i in range(N_JOBS):
                data = study(i)
                uid = str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).StudyInstanceUID)
                answer = client.post(
                    "/jobs", files={"files": ("ct.dcm", data, "application/dicom")},
                    data={"transaction_id": f"scale-{i}", "push": "true"},
                )  # fmt: skip
                assert answer.status_code == 202, answer.text
                assert answer.json()["queue_position"] == i + 1
                studies[answer.json()["id"]] = uid
        for port, proc, log in zip(ports, workers, logs, strict=True):
            wait_ready(port, proc, log)

        # SIGKILL worker A while it holds a job (its lease names its process id).
        host = socket.gethostname()
        mine = f"{host}-{workers[0].pid}-"
        deadline = time.monotonic() + 240
        while not any(r[1] == "running" and (r[5] or "").startswith(mine) for r in rows(url)):
            assert time.monotonic() < deadline, rows(url)
            time.sleep(0.05)
        killed = next(r[0] for r in rows(url) if r[1] == "running" and r[5].startswith(mine))
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=30)

        deadline = time.monotonic() + 420
        while not all(r[1] == "done" and r[3] == "pushed" for r in rows(url)):
            assert workers[1].poll() is None, logs[1].read_text()[-3000:]
            assert time.monotonic() < deadline, rows(url)
            time.sleep(0.5)
        final = {r[0]: r for r in rows(url)}
        assert set(final) == set(studies)  # none lost, none made up
        assert final[killed][2] == 2  # run again by worker B after A's lease expired
        assert all(r[4] == 1 for r in final.values()), final  # each pushed in one try
        for job_id, uid in studies.items():  # each study got exactly one SEG in the archive
            found = httpx.post(
                f"{orthanc.url}/tools/find",
                json={"Level": "Instance", "Query": {"StudyInstanceUID": uid, "Modality": "SEG"}},
                timeout=10,
            ).json()
            assert len(found) == 1, (job_id, found)
            assert (jobs_dir / job_id / "result.dcm").exists()
        assert not list(jobs_dir.glob("*/.result-*"))  # the killed run left nothing behind
        b_log = logs[1].read_text()
        assert "lesionseg-test-password" not in b_log and "lesionseg-test-password" not in (
            logs[0].read_text()
        )
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_one_machine_sqlite_api_and_one_worker(model_store, tmp_path):
    """The API accepts into the embedded sqlite store and runs nothing; the worker beside it,
    on the same LESIONSEG_JOBS_DIR, runs the jobs; GET /jobs on the API sees them done."""
    jobs_dir = tmp_path / "jobs"
    env = {**os.environ, "LESIONSEG_JOBS_DIR": str(jobs_dir), "OMP_NUM_THREADS": "1"}
    for name in ("PROMETHEUS_MULTIPROC_DIR", "LESIONSEG_DICOMWEB_URL"):
        env.pop(name, None)
    api = Jobs(Settings(jobs_dir=jobs_dir, jobs_worker=False), lambda: None)
    port, log = free_port(), tmp_path / "worker.log"
    worker = None
    try:
        with TestClient(api.app, client=("127.0.0.1", 50000)) as client:
            locations = []
            for i in range(2):
                answer = client.post(
                    "/jobs", files={"files": ("ct.dcm", study(i), "application/dicom")}
                )
                assert answer.status_code == 202, answer.text
                locations.append(answer.headers["Location"])
            time.sleep(1)
            assert {client.get(loc).json()["state"] for loc in locations} == {"queued"}
            worker = start_worker(env, port, log)
            wait_ready(port, worker, log)
            deadline = time.monotonic() + 240
            while (states := [client.get(loc).json()["state"] for loc in locations]) != [
                "done",
                "done",
            ]:
                assert "failed" not in states, [client.get(loc).json() for loc in locations]
                assert time.monotonic() < deadline, (states, log.read_text()[-3000:])
                time.sleep(0.5)
            for loc in locations:
                seg = client.get(f"{loc}/result")
                assert (
                    seg.status_code == 200
                    and pydicom.dcmread(pydicom.filebase.DicomBytesIO(seg.content)).Modality
                    == "SEG"
                )
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "lesionseg_jobs_waiting" in metrics
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:  # uvicorn shuts down, then raises the signal again: -SIGTERM after a clean stop
                assert worker.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()[-3000:]
            except subprocess.TimeoutExpired:
                worker.kill()
                raise
            assert "Application shutdown complete" in log.read_text(), log.read_text()[-3000:]
