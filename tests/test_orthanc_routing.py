"""The Orthanc routing of docs/pacs-integration.md as the page writes it: a real Orthanc with the
page's `orthanc.json` settings and Lua script (a 1-s StableAge, the modality pointed at this
test's listener) sends a real CT series, uploaded to it over its REST API, to the DICOM listener
alone (lesionseg/pacs/listener.py: no models, no BentoML). Every instance reaches the spool and
the series becomes one job, in slice order; a SEG series is not routed. With
"DicomAlwaysAllowStore": false, Orthanc takes a C-STORE from the AE title of its lesionseg entry
(results back by C-STORE) and refuses one from another AE title."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import httpx
import pydicom
import pytest
from pynetdicom import AE

from lesionseg.datasets.examples import lits_ct
from lesionseg.pacs.job_store import Job
from lesionseg.pacs.listener import DicomListener, ListenerHooks
from lesionseg.pacs.spool import CLAIMED_DIR
from lesionseg.settings import Settings
from service.launcher import REPO_ROOT, free_port
from tests.pacs import OrthancServer, ct_small, make_test_seg, orthanc_missing

pytestmark = [pytest.mark.integration]

PAGE = REPO_ROOT / "docs" / "pacs-integration.md"
SECTION = "## Routing studies from Orthanc"
STABLE_AGE_S = 1  # Orthanc's StableAge for the test (the page's is 60 s)
QUIET_S = 1.0  # LESIONSEG_SERIES_QUIET_S for the test (the default is 10 s)


def docs_block(language: str) -> str:
    """The first fenced ``language`` block of the page's section on Orthanc routing."""
    text = PAGE.read_text()
    section = text[text.index(SECTION) + len(SECTION) :]
    section = section[: section.find("\n## ")]
    found = re.search(rf"^```{language}\n(.*?)^```$", section, re.S | re.M)
    assert found, f"no ```{language} block under {SECTION!r} in {PAGE}"
    return found.group(1)


def docs_orthanc_config() -> dict:
    """The page's `orthanc.json` settings."""
    return json.loads(docs_block("json"))


def docs_modality() -> tuple[str, dict]:
    """The name and entry of the page's one `DicomModalities` entry: lesionseg."""
    ((name, entry),) = docs_orthanc_config()["DicomModalities"].items()
    return name, entry


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    """(Orthanc configured as the page says, the listener it routes to, the jobs recorded)."""
    if reason := orthanc_missing():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("routing")
    config = docs_orthanc_config()
    name, entry = docs_modality()
    (script,) = config["LuaScripts"]
    jobs: list[Job] = []
    settings = Settings(
        jobs_dir=root / "jobs",
        series_quiet_s=QUIET_S,
        dicom_ae_title=entry["AET"],
        dicom_allowed_callers=f"{config['DicomAet']}@127.0.0.1",  # the page's AE@host form
    )
    listener = DicomListener(
        settings, port=free_port(), host="127.0.0.1", hooks=ListenerHooks(job=jobs.append)
    )
    extra = {
        **config,
        "StableAge": STABLE_AGE_S,
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {name: {**entry, "Host": "127.0.0.1", "Port": listener.port}},
    }
    orthanc = OrthancServer(root / "orthanc", extra=extra, lua={script: docs_block("lua")})
    listener.start()
    try:
        deadline = time.monotonic() + 10
        while not listener.listening:
            assert time.monotonic() < deadline, "the listener never bound its port"
            time.sleep(0.05)
        orthanc.start()
        try:
            yield orthanc, listener, jobs
        finally:
            orthanc.stop()
    finally:
        listener.stop()


def store_jobs(orthanc: OrthancServer) -> list[dict]:
    """Orthanc's jobs that send to a DICOM modality (C-STORE SCU), with their details."""
    found = httpx.get(f"{orthanc.url}/jobs", params={"expand": ""}, timeout=10).json()
    return [job for job in found if job["Type"] == "DicomModalityStore"]


def test_a_ct_series_sent_to_orthanc_reaches_the_listener_as_one_job(routed, lits, caplog):
    orthanc, listener, jobs = routed
    caplog.set_level(logging.INFO, logger="lesionseg.pacs.listener")
    seg = httpx.post(f"{orthanc.url}/instances", content=make_test_seg(ct_small()), timeout=30)
    assert seg.status_code == 200, seg.text  # first: stable before the CT, never routed
    files = lits_ct(lits, range(104, 116), patient=("Routing^Test", "ROUTE1"))
    for data in reversed(files):  # the order of arrival need not be the slices'
        stored = httpx.post(f"{orthanc.url}/instances", content=data, timeout=30)
        assert stored.status_code == 200, stored.text
    source = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    series = str(source[0].SeriesInstanceUID)

    deadline = time.monotonic() + 60
    while not jobs:  # StableAge, Orthanc's C-STOREs, the listener's quiet period
        assert time.monotonic() < deadline, (orthanc.log_tail(), store_jobs(orthanc))
        time.sleep(0.2)

    (job,) = jobs
    assert job.transaction_id.startswith(f"dicom-{series}.") and job.n_files == len(files)
    inputs = [pydicom.dcmread(path) for path in listener.store.inputs(job.id)]
    assert [str(ds.SOPInstanceUID) for ds in inputs] == [str(ds.SOPInstanceUID) for ds in source]
    for received, sent in zip(inputs, source, strict=True):  # as uploaded, by slice position
        assert received.SeriesInstanceUID == series
        assert received.PixelData == sent.PixelData
    assert listener.spool.pending() == {}  # nothing left behind in the spool
    assert not list((listener.spool.root / CLAIMED_DIR).iterdir())
    assert f"series {series} ({len(files)} instances) is job {job.id}" in caplog.text

    (sent,) = store_jobs(orthanc)  # one asynchronous Orthanc job, for the CT series only
    assert sent["State"] == "Success", sent
    assert sent["Content"]["InstancesCount"] == len(files), sent


def c_store(orthanc: OrthancServer, calling_ae: str) -> int | None:
    """Status of a C-STORE of a new SEG (a result: not routed) to Orthanc from ``calling_ae``;
    None if the association was refused."""
    dataset = pydicom.dcmread(io.BytesIO(make_test_seg(ct_small())))
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    called = docs_orthanc_config()["DicomAet"]
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_store(dataset).get("Status", -1))
    finally:
        assoc.release()


def test_orthanc_takes_results_by_c_store_from_the_lesionseg_entry_only(routed):
    orthanc, *_ = routed
    _, entry = docs_modality()
    assert c_store(orthanc, entry["AET"]) == 0x0000
    assert c_store(orthanc, "INTRUDER") != 0x0000, "an unknown AE title could store"
