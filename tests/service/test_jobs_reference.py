"""POST /jobs by reference in-process: the request checks (400s), the queue bound, and the
worker fetching from a real Orthanc, waiting while it is down, failing on an unknown series
(a stand-in for the models: tests.pacs.StandIn; the real models and `bentoml serve` are in
tests/service/test_jobs_api.py)."""

from __future__ import annotations

import io

import pydicom
import pytest
from starlette.testclient import TestClient

from lesionseg.pacs.dicomweb import StowClient
from lesionseg.settings import Settings
from service.jobs import Jobs
from tests.pacs import StandIn
from tests.test_dicomweb import poll
from tests.test_wado import ct_series, reference_of, sop_uid

STUDY, SERIES = "1.2.840.1", "1.2.840.1.2"


def ended(status: dict) -> bool:
    return status["state"] in ("done", "failed")


@pytest.fixture
def service() -> StandIn:
    return StandIn()


def jobs_client(service: StandIn, **settings) -> TestClient:
    return TestClient(Jobs(Settings(**settings), lambda: service).app)


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"json": {"study": STUDY}}, "needs both study and series"),
        ({"json": {"study": STUDY, "series": "1.2.x"}}, "series must be a DICOM UID"),
        ({"json": {"study": "1" * 65, "series": SERIES}}, "at most 64 characters"),
        ({"json": {"study": STUDY, "series": SERIES, "files": []}}, "unknown field(s) ['files']"),
        ({"json": {"study": STUDY, "series": 1.2}}, "series must be a string"),
        ({"json": {"study": STUDY, "series": SERIES, "sr": "maybe"}}, "sr must be true or false"),
        ({"json": [STUDY, SERIES]}, "must be an object"),
        ({"content": b"{", "headers": {"Content-Type": "application/json"}}, "not valid JSON"),
        ({"data": {"study": STUDY, "series": SERIES}, "files": [("files", ("a", b"DICM"))]},
         "not both"),
        ({"data": {"series": SERIES}}, "needs both study and series"),
        ({"json": {"study": STUDY, "series": SERIES, "propagate": True}}, "propagate needs boxes"),
    ],
)  # fmt: skip
def test_bad_references_are_400(service, tmp_path, request_kwargs, message):
    url = "http://127.0.0.1:9/dicom-web"  # never reached: refused before any fetch
    with jobs_client(service, jobs_dir=tmp_path, dicomweb_url=url) as client:
        response = client.post("/jobs", **request_kwargs)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_a_reference_without_an_archive_is_400(service, tmp_path):
    with jobs_client(service, jobs_dir=tmp_path) as client:
        for kwargs in ({"json": {"study": STUDY, "series": SERIES}},
                       {"data": {"study": STUDY, "series": SERIES}}):  # fmt: skip
            response = client.post("/jobs", **kwargs)
            assert response.status_code == 400
            assert "LESIONSEG_DICOMWEB_URL, which is not set" in response.json()["error"]
        big = client.post(
            "/jobs", content=b" " * 70_000, headers={"Content-Type": "application/json"}
        )
        assert big.status_code == 400 and "over 65536 bytes" in big.json()["error"]


def test_references_keep_the_queue_bound_and_transaction_ids(service, tmp_path):
    service.ready = False  # nothing runs: the jobs stay queued
    url = "http://127.0.0.1:9/dicom-web"
    with jobs_client(service, jobs_dir=tmp_path, dicomweb_url=url, max_queued_jobs=1) as client:
        body = {"study": STUDY, "series": SERIES, "transaction_id": "ref-1", "sr": True}
        accepted = client.post("/jobs", json=body)
        assert accepted.status_code == 202, accepted.text
        status = accepted.json()
        assert (status["study"], status["series"], status["n_files"]) == (STUDY, SERIES, 0)
        assert (status["state"], status["push_state"]) == ("queued", "pending")
        again = client.post("/jobs", json=body)
        assert again.status_code == 409 and again.json()["job_id"] == status["id"]
        full = client.post("/jobs", json={**body, "transaction_id": "ref-2"})
        assert full.status_code == 503 and "LESIONSEG_MAX_QUEUED_JOBS" in full.json()["error"]
        assert client.get(status["location"]).json()["series"] == SERIES


@pytest.mark.integration
def test_a_job_by_reference_is_fetched_segmented_and_pushed(orthanc, service, tmp_path):
    files = ct_series()
    StowClient(orthanc.dicomweb_url).store(files)
    reference = reference_of(files[0])
    settings = {"jobs_dir": tmp_path, "dicomweb_url": orthanc.dicomweb_url}
    with jobs_client(service, **settings) as client:
        by_json = client.post(
            "/jobs", json={"study": reference.study, "series": reference.series, "window": "40,400"}
        )
        by_form = client.post("/jobs", data={"study": reference.study, "series": "1.2.3.4"})
        assert by_json.status_code == by_form.status_code == 202, (by_json.text, by_form.text)
        done = poll(client, by_json.json()["location"], lambda s: s["push_state"] == "pushed")
        failed = poll(client, by_form.json()["location"], ended)
        seg = pydicom.dcmread(io.BytesIO(client.get(done["result"]).content))
    assert (done["state"], done["n_files"], done["series"]) == ("done", 3, reference.series)
    assert service.calls == [(3, "40,400")]  # the unknown series never reached the models
    assert failed["state"] == "failed" and failed["reason"].startswith(
        f"series 1.2.3.4 of study {reference.study} is not in {orthanc.dicomweb_url}"
    )
    stored = orthanc.instance_file(str(seg.SOPInstanceUID))
    assert stored.Modality == "SEG" and stored.StudyInstanceUID == reference.study
    referenced = stored.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == reference.series
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID in map(sop_uid, files)


@pytest.mark.integration
def test_a_job_waits_while_the_archive_is_down_and_runs_when_it_is_back(orthanc, service, tmp_path):
    files = ct_series(2)
    StowClient(orthanc.dicomweb_url).store(files)
    reference = reference_of(files[0])
    settings = {"jobs_dir": tmp_path, "dicomweb_url": orthanc.dicomweb_url, "dicomweb_timeout_s": 5,
                "push_initial_delay_s": 0.2, "push_max_delay_s": 0.8}  # fmt: skip
    try:
        orthanc.stop()
        with jobs_client(service, **settings) as client:
            body = {"study": reference.study, "series": reference.series}
            location = client.post("/jobs", json=body).json()["location"]
            status = poll(client, location, lambda s: s["fetch_attempts"] >= 3)
            assert status["state"] == "queued" and status["n_files"] == 0, status
            assert status["reason"].startswith("waiting for the archive: the archive http://")
            assert "unreachable" in status["reason"] and "next try in" in status["reason"]
        orthanc.start()  # and the service restarted meanwhile: the job is not lost
        with jobs_client(service, **settings) as client:
            status = poll(client, location, lambda s: s["push_state"] == "pushed")
        assert (status["state"], status["reason"], status["n_files"]) == ("done", None, 2)
        assert service.calls == [(2, None)]
    finally:
        if not orthanc.running:
            orthanc.start()


# --- the contract: documented with an archive, and the same answers as the service ----------


@pytest.fixture(scope="module")
def reference_schema() -> dict:
    """The JSON body of POST /jobs in the contract with an archive configured (valid OpenAPI;
    the form's study and series fields are described, not in the schema)."""
    import jsonschema
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    from service.app import LesionSeg
    from service.openapi import contract

    spec = contract(LesionSeg, Settings(dicomweb_url="http://pacs:8042/dicom-web"))
    jsonschema.validators.validator_for(OPENAPI_31)(OPENAPI_31).validate(spec)
    content = spec["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert (
        "application/json"
        not in contract(LesionSeg, Settings())["paths"]["/jobs"]["post"]["requestBody"]["content"]
    )  # without an archive, no reference is documented
    return content["application/json"]["schema"]


@pytest.mark.parametrize(
    "body",
    [{"study": STUDY, "series": SERIES}, {"study": STUDY}, {"study": "", "series": SERIES},
     {"study": STUDY, "series": "1.02.3", "sr": True, "push": "no", "window": None},
     {"study": STUDY, "series": SERIES, "sr": 1}, {"study": STUDY, "series": SERIES, "x": 1},
     {"study": STUDY, "series": SERIES + "."}, {"study": STUDY, "series": "1" * 65},
     {"study": STUDY, "series": SERIES, "propagate": True, "boxes": [[1, 2, 3, 4, 0]]},
     {"study": STUDY, "series": SERIES, "propagate": "yes", "boxes": []},
     {"study": STUDY, "series": SERIES, "propagate": False, "transaction_id": "é"},
     {"study": STUDY, "series": SERIES, "boxes": [[1, 2, 3]]}],
)  # fmt: skip
def test_the_json_reference_check_is_the_contract(service, tmp_path, reference_schema, body):
    import jsonschema_rs

    documented = jsonschema_rs.validator_for(reference_schema).is_valid(body)
    service.ready = False
    url = "http://127.0.0.1:9/dicom-web"
    with jobs_client(service, jobs_dir=tmp_path, dicomweb_url=url) as client:
        status = client.post("/jobs", json=body).status_code
    assert (status == 202) == documented, status
