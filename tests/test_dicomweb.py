"""STOW-RS to a real Orthanc (DICOMweb plugin) on loopback, and pushes that outlive outages.

The SEG is made with highdicom from pydicom-data's CT_small.dcm (tests.pacs), so these tests do
not need the models; tests/service/test_jobs_api.py runs the same path through them.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from starlette.testclient import TestClient

from lesionseg.errors import PushError
from lesionseg.pacs.dicomweb import StowClient
from lesionseg.settings import Settings
from service.jobs import Jobs
from service.launcher import free_port
from tests.pacs import StandIn, ct_small, make_test_seg, part10

pytestmark = pytest.mark.integration

CT = Path(get_testdata_file("CT_small.dcm"))


def test_stow_rs_push_reads_back_over_rest(orthanc):
    seg = make_test_seg(ct_small())
    sent = pydicom.dcmread(io.BytesIO(seg))
    uid = str(sent.SOPInstanceUID)

    assert StowClient(orthanc.dicomweb_url).store([seg]).stored == (uid,)
    stored = orthanc.instance_file(uid)
    assert (stored.Modality, stored.SOPInstanceUID) == ("SEG", uid)
    assert stored.SeriesInstanceUID == sent.SeriesInstanceUID
    assert stored.PixelData == sent.PixelData
    assert stored.StudyInstanceUID == ct_small().StudyInstanceUID  # filed in the source study

    StowClient(orthanc.dicomweb_url).store([seg])  # the same instance again: still one copy
    assert orthanc.sop_instance_uids().count(uid) == 1


def test_refusals_and_outages_are_told_apart(orthanc):
    incomplete = ct_small()
    del incomplete.StudyInstanceUID  # Orthanc files instances by study: it refuses this one
    with pytest.raises(PushError) as refused:
        StowClient(orthanc.dicomweb_url).store([part10(incomplete)])
    assert not refused.value.retryable
    with pytest.raises(PushError, match="not a DICOM Part-10 file") as not_dicom:
        StowClient(orthanc.dicomweb_url).store([b"\0" * 128 + b"DICM-but-not-really"])
    assert not not_dicom.value.retryable
    with pytest.raises(PushError) as wrong_path:
        StowClient(f"{orthanc.url}/no-such-root").store([make_test_seg(ct_small())])
    assert not wrong_path.value.retryable and "404" in str(wrong_path.value)
    closed = StowClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2)
    with pytest.raises(PushError) as unreachable:
        closed.store([make_test_seg(ct_small())])  # nothing listens there
    assert unreachable.value.retryable


def poll(client: TestClient, location: str, until, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not until(status := client.get(location).json()):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


def submit(client: TestClient, data: bytes) -> str:
    response = client.post("/jobs", files=[("files", ("ct.dcm", data))], data={"push": "true"})
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def seg_uid(client: TestClient, location: str, expected: bytes | None = None) -> str:
    """The result is fetchable (and unchanged); returns its SOP Instance UID."""
    result = client.get(f"{location}/result")
    assert result.status_code == 200, result.text
    if expected is not None:
        assert result.content == expected
    return str(pydicom.dcmread(io.BytesIO(result.content)).SOPInstanceUID)


def test_push_survives_pacs_outage_and_service_restart(orthanc, tmp_path):
    settings = Settings(
        jobs_dir=tmp_path / "jobs",
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_timeout_s=5,
        push_initial_delay_s=0.2,
        push_max_delay_s=0.8,
    )
    service = StandIn()
    try:
        # 1. Orthanc goes down; the job finishes; the pusher retries with back-off.
        orthanc.stop()
        with TestClient(Jobs(settings, lambda: service).app) as client:
            first = submit(client, CT.read_bytes())
            status = poll(client, first, lambda s: s["push_attempts"] >= 3)
            assert status["state"] == "done" and status["push_state"] == "retrying", status
            assert "unreachable" in status["push_error"]
            result = client.get(f"{first}/result").content
            uid = seg_uid(client, first, result)
            orthanc.start()  # back on the same ports and storage
            status = poll(client, first, lambda s: s["push_state"] == "pushed")
            assert status["push_attempts"] > 3 and status["push_error"] is None
            assert seg_uid(client, first, result) == uid
            time.sleep(1.0)  # a pushed result is not sent again
            assert client.get(first).json()["push_attempts"] == status["push_attempts"]
        assert orthanc.sop_instance_uids().count(uid) == 1
        assert orthanc.instance_file(uid).Modality == "SEG"

        # 2. Down again, and the service restarts while the push is still retrying.
        orthanc.stop()
        with TestClient(Jobs(settings, lambda: service).app) as client:
            second = submit(client, CT.read_bytes())
            poll(client, second, lambda s: s["push_attempts"] >= 2)
            result = client.get(f"{second}/result").content
        orthanc.start()
        with TestClient(Jobs(settings, lambda: service).app) as restarted:
            status = poll(restarted, second, lambda s: s["push_state"] == "pushed")
            assert status["push_attempts"] >= 3
            uid2 = seg_uid(restarted, second, result)
        assert uid2 != uid and orthanc.sop_instance_uids().count(uid2) == 1
        assert len(service.calls) == 2  # each job segmented once
    finally:
        if not orthanc.running:
            orthanc.start()
