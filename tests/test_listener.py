"""The DICOM listener (lesionseg/pacs/listener.py) with pynetdicom as the sender: C-ECHO, series
that become jobs, bad input refused with the right DIMSE status (and the listener alive after),
callers outside the allow-list rejected, and a listener SIGKILLed while 100 instances arrive:
every instance acknowledged with success ends in a job. No BentoML: the jobs wait in the store.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import BasicTextSRStorage, CTImageStorage, Verification

from lesionseg.errors import SettingsError
from lesionseg.pacs.job_bounds import JobBounds
from lesionseg.pacs.job_store import JobStore
from lesionseg.pacs.listener import DicomListener
from lesionseg.pacs.spool import SeriesSpool, spool_root
from lesionseg.settings import Settings
from lesionseg.settings.callers import AllowedCallers
from service.launcher import REPO_ROOT, free_port
from tests.pacs import part10

PATIENT = "Secret^Patient"


def ct_series(n: int, series: str | None = None) -> list[pydicom.Dataset]:
    """``n`` slices of pydicom-data's CT_small as one new series, 2.5 mm apart, in reverse
    order of position (a sender's order need not be the slices')."""
    series = series or generate_uid()
    slices = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientName = PATIENT
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * (n - k)]
        ds.InstanceNumber = n - k
        slices.append(ds)
    return slices


def sender(ae_title: str = "CT1") -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(BasicTextSRStorage)
    ae.add_requested_context(Verification)
    return ae


def store_inputs(jobs_dir: Path) -> dict[str, list[str]]:
    """SOP instance UIDs of each job's inputs, in the job's order."""
    store = JobStore(jobs_dir)
    with store.db.transaction() as db:
        ids = [r[0] for r in db.execute("SELECT id FROM jobs ORDER BY created_at").fetchall()]
    return {
        i: [
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in store.inputs(i)
        ]
        for i in ids
    }


@pytest.fixture
def listening(tmp_path):
    """A listener on a free loopback port, closed default (loopback callers only), 0.3 s quiet."""
    settings = Settings(jobs_dir=tmp_path / "jobs", series_quiet_s=0.3, max_queued_jobs=5)
    listener = DicomListener(settings, port=free_port(), host="127.0.0.1")
    listener.start()
    deadline = time.monotonic() + 10
    while not listener.listening:
        assert time.monotonic() < deadline, "the listener never bound its port"
        time.sleep(0.05)
    yield listener
    listener.stop()


def test_allowed_callers_parse_and_match():
    closed = AllowedCallers.parse(None)
    assert closed.allows("ANY", "127.0.0.1") and closed.allows("ANY", "::1")
    assert not closed.allows("ANY", "10.0.0.7")
    callers = AllowedCallers.parse("ORTHANC@10.0.0.7, CT1, *@10.0.0.9")
    assert callers.allows("ORTHANC", "10.0.0.7") and callers.allows("ORTHANC", "::ffff:10.0.0.7")
    assert not callers.allows("ORTHANC", "10.0.0.8")
    assert callers.allows("CT1", "192.168.1.1") and callers.allows("WHOEVER", "10.0.0.9")
    assert not callers.allows("WHOEVER", "127.0.0.1")  # a list replaces the loopback default
    for bad in ("X@not-an-ip", "*", "A_TITLE_LONGER_THAN_16", "@10.0.0.1"):
        with pytest.raises(SettingsError, match="LESIONSEG_DICOM_ALLOWED_CALLERS"):
            AllowedCallers.parse(bad)


def test_a_quiet_series_becomes_one_job_in_slice_order(listening):
    slices = ct_series(3)
    assoc = sender().associate("127.0.0.1", listening.port, ae_title="LESIONSEG")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    for ds in slices:
        assert assoc.send_c_store(ds).Status == 0x0000
    assert assoc.send_c_store(slices[0]).Status == 0x0000  # a duplicate replaces its copy
    assoc.release()
    jobs = wait_for_jobs(listening.settings.jobs_dir, {str(ds.SOPInstanceUID) for ds in slices})
    ((job_id, uids),) = jobs.items()
    assert uids == [str(ds.SOPInstanceUID) for ds in reversed(slices)]  # by position
    job = listening.store.get(job_id)
    assert (job.state, job.push_state) == ("queued", "none")  # no LESIONSEG_DICOMWEB_URL
    assert listening.store.options(job_id) == {"sr": True}
    assert listening.spool.pending() == {}
    assert not any((spool_root(listening.settings.jobs_dir) / ".claimed").iterdir())


def wait_for_jobs(jobs_dir: Path, uids: set[str], timeout: float = 30) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = store_inputs(jobs_dir)
        if uids <= {u for job in jobs.values() for u in job}:
            return jobs
        assert time.monotonic() < deadline, f"{len(uids)} instances, jobs: {jobs}"
        time.sleep(0.2)


def test_bad_input_gets_its_status_once_and_the_listener_keeps_going(
    listening, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    truncated = tmp_path / "truncated.dcm"
    good, no_series, cut = ct_series(3)
    cut.save_as(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-5000])  # cut in the pixel data
    del no_series.SeriesInstanceUID
    report = pydicom.Dataset()  # a SOP class the listener does not take
    report.SOPClassUID, report.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    assoc = sender().associate("127.0.0.1", listening.port, ae_title="LESIONSEG")
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.rejected_contexts] == [BasicTextSRStorage]
    with pytest.raises(ValueError, match="No presentation context"):
        assoc.send_c_store(report)
    assert assoc.send_c_store(truncated).Status == 0xC210
    assert assoc.send_c_store(no_series).Status == 0xA900
    assert assoc.send_c_store(good).Status == 0x0000  # the same association goes on
    with monkeypatch.context() as patch:  # a full volume: out of resources, nothing acknowledged
        patch.setattr(listening.spool, "put", full_volume)
        assert assoc.send_c_store(ct_series(1)[0]).Status == 0xA700
    assoc.release()

    stranger = sender("STRANGER")
    listening.callers = AllowedCallers.parse("PACS@127.0.0.1")
    refused = stranger.associate("127.0.0.1", listening.port, ae_title="LESIONSEG")
    assert refused.is_rejected
    rejection = refused.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 3)
    assert sender("PACS").associate("127.0.0.1", listening.port).send_c_echo().Status == 0

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lesionseg")]
    for uid, status in ((cut.SOPInstanceUID, "0xC210"), (no_series.SOPInstanceUID, "0xA900")):
        assert len([m for m in messages if uid in m]) == 1, messages
        assert any(uid in m and status in m for m in messages)
    assert len([m for m in messages if "STRANGER" in m]) == 1
    assert len([m for m in messages if BasicTextSRStorage in m and "'CT1'" in m]) == 1
    assert not any(PATIENT in m or "Patient" in m for m in messages)
    wait_for_jobs(listening.settings.jobs_dir, {str(good.SOPInstanceUID)})


def full_volume(*_) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def run_listener(jobs_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "LESIONSEG_JOBS_DIR": str(jobs_dir), "LESIONSEG_SERIES_QUIET_S": "0.5"}
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lesionseg.pacs.listener", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def send_until_refused(port, slices, acked: set[str], on_ack=lambda n: None) -> None:
    """Send the slices not acknowledged yet, in order, on one association; stop at the first
    failure (the listener gone). ``on_ack(len(acked))`` after each success."""
    assoc = sender().associate("127.0.0.1", port, ae_title="LESIONSEG")
    for ds in slices if assoc.is_established else []:
        if str(ds.SOPInstanceUID) in acked:
            continue
        if assoc.send_c_store(ds).get("Status") != 0x0000:
            break
        acked.add(str(ds.SOPInstanceUID))
        on_ack(len(acked))
    assoc.release()


def wait_for_echo(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        assoc = sender().associate("127.0.0.1", port, ae_title="LESIONSEG")
        if assoc.is_established:
            status = assoc.send_c_echo().Status
            assoc.release()
            if status == 0x0000:
                return
        time.sleep(0.2)


def test_instances_acknowledged_before_a_sigkill_all_end_in_jobs(tmp_path):
    jobs_dir, port, log = tmp_path / "jobs", free_port(), tmp_path / "listener.log"
    slices, acked = ct_series(100), set()
    proc = run_listener(jobs_dir, port, log)
    killer = threading.Thread(target=proc.kill)  # lands while the next instances are sent
    try:
        wait_for_echo(port, proc, log)
        send_until_refused(port, slices, acked, lambda n: n == 30 and killer.start())
        killer.join()
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert 30 <= len(acked) < len(slices), "the kill came too late to test anything"
        proc = run_listener(jobs_dir, port, log)
        wait_for_echo(port, proc, log)
        send_until_refused(port, slices, acked)
        assert len(acked) == len(slices)
        jobs = wait_for_jobs(jobs_dir, acked, timeout=60)
        assert sum(map(len, jobs.values())) >= len(slices)
    finally:
        proc.kill()
        proc.wait()


def test_a_full_queue_or_a_crash_mid_claim_loses_no_series(tmp_path):
    store = JobStore(tmp_path / "jobs", JobBounds(max_queued=1))
    spool = SeriesSpool(spool_root(tmp_path / "jobs"), store, quiet_s=0.1)
    (ct,) = ct_series(1)
    store.submit([io.BytesIO(part10(ct))])  # takes the queue's one place
    (first,), (second,) = ct_series(1), ct_series(1)
    for ds in (first, second):
        spool.put(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), part10(ds))
    later = time.time() + 1
    assert spool.tick(later) == []  # refused: both series stay (claimed) in the spool
    assert len(list(spool.claimed.iterdir())) == 2
    store.fail(store.claim_next().id, "done with")
    assert len(spool.tick(later)) == 1  # one place, one series
    store.fail(store.claim_next().id, "done with")
    # A crash between recording the job and removing the claim: the claim comes back.
    claim = next(spool.claimed.iterdir())
    kept = tmp_path / "kept"
    shutil.copytree(claim, kept)
    (job,) = spool.tick(later)
    kept.rename(claim)
    assert spool.tick(later) == [] and not any(spool.claimed.iterdir())  # a duplicate: dropped
    assert store.find(f"dicom-{claim.name}").id == job.id


def test_the_service_starts_it_after_the_store_and_counts_what_it_does(tmp_path):
    from service.listener import DicomIngest
    from service.metrics import DICOM_ASSOCIATIONS

    port = free_port()
    ingest = DicomIngest(Settings(jobs_dir=tmp_path / "jobs", dicom_port=port))
    assert not ingest.ready()
    before = DICOM_ASSOCIATIONS.labels("accepted")._value.get()
    recovered = []

    async def serve() -> None:
        ingest.start(after=lambda: bool(recovered))
        await asyncio.sleep(0.3)
        assert not ingest.ready()  # the job store is not recovered yet: nothing listens
        recovered.append(True)
        while not ingest.ready():
            await asyncio.sleep(0.05)
        assoc = await asyncio.to_thread(sender().associate, "127.0.0.1", port, ae_title="LESIONSEG")
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        await ingest.stop()

    asyncio.run(serve())
    assert DICOM_ASSOCIATIONS.labels("accepted")._value.get() == before + 1
    assert DicomIngest(Settings(jobs_dir=tmp_path / "jobs")).ready()  # no port: nothing to wait
