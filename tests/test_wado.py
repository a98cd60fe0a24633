"""QIDO-RS + WADO-RS of one series from a real Orthanc (DICOMweb plugin) on loopback, the
multipart reader, and the fetch step of a job by reference in the job store (no models, no
BentoML)."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from lesionseg.errors import InputError
from lesionseg.pacs.dicomweb import StowClient
from lesionseg.pacs.job import SeriesReference
from lesionseg.pacs.job_fetch import fetch_job, next_fetch_at, wait_for_archive
from lesionseg.pacs.job_store import JobStore
from lesionseg.pacs.wado import FetchError, SeriesNotFoundError, WadoClient, split_multipart
from lesionseg.settings import Settings
from service.launcher import free_port
from tests.pacs import ct_small, part10


def ct_series(n: int = 3) -> list[bytes]:
    """``n`` CT_small.dcm slices as one new series of CT_small's study, 5 mm apart."""
    series = generate_uid()
    files = []
    for i in range(n):
        ds = ct_small()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient[2] += 5.0 * i
        files.append(part10(ds))
    return files


def reference_of(data: bytes) -> SeriesReference:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return SeriesReference(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))


def sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def stored(orthanc) -> tuple[SeriesReference, list[bytes]]:
    """A three-instance CT series stored in the Orthanc (STOW-RS)."""
    files = ct_series()
    StowClient(orthanc.dicomweb_url).store(files)
    return reference_of(files[0]), files


# --- against a real Orthanc ------------------------------------------------------------------


@pytest.mark.integration
def test_lists_and_retrieves_the_series_as_stored(orthanc, stored, tmp_path):
    reference, files = stored
    client = WadoClient(orthanc.dicomweb_url)
    assert sorted(client.list_instances(reference)) == sorted(map(sop_uid, files))
    fetched = client.retrieve(reference, tmp_path, max_bytes=10 * 2**20)
    assert [p.name for p in fetched] == ["0000.dcm", "0001.dcm", "0002.dcm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in fetched]  # no .body
    by_uid = {sop_uid(data): data for data in files}
    for path in fetched:
        got = pydicom.dcmread(path)
        sent = pydicom.dcmread(io.BytesIO(by_uid[str(got.SOPInstanceUID)]))
        assert got.PixelData == sent.PixelData  # transfer-syntax=*: as stored
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


@pytest.mark.integration
def test_unknown_series_or_study_is_not_found(orthanc, stored, tmp_path):
    reference, _ = stored
    client = WadoClient(orthanc.dicomweb_url)
    for unknown in (
        SeriesReference(reference.study, "1.2.3.4"),
        SeriesReference("1.2.3.4", reference.series),
    ):
        with pytest.raises(SeriesNotFoundError, match="is not in") as listed:
            client.list_instances(unknown)  # Orthanc: 200 and an empty list
        assert not listed.value.retryable
        assert f"series {unknown.series} of study {unknown.study}" in str(listed.value)
        with pytest.raises(SeriesNotFoundError):
            client.retrieve(unknown, tmp_path, max_bytes=2**20)  # Orthanc: 404


@pytest.mark.integration
def test_limits_refusals_and_an_archive_down(orthanc, stored, tmp_path):
    reference, _ = stored
    with pytest.raises(FetchError, match="LESIONSEG_MAX_UPLOAD_BYTES") as large:
        WadoClient(orthanc.dicomweb_url).retrieve(reference, tmp_path, max_bytes=50_000)
    assert not large.value.retryable
    with pytest.raises(SeriesNotFoundError, match=r"HTTP 404.*DICOMweb root") as wrong_root:
        WadoClient(f"{orthanc.url}/no-such-root").list_instances(reference)
    assert not wrong_root.value.retryable
    down = WadoClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2)
    for call in (down.list_instances, lambda r: down.retrieve(r, tmp_path, max_bytes=2**20)):
        with pytest.raises(FetchError, match="unreachable") as unreachable:
            call(reference)
        assert unreachable.value.retryable


@pytest.mark.integration
def test_fetch_step_gives_a_job_its_inputs_or_a_reason(orthanc, stored, tmp_path):
    reference, files = stored
    settings = Settings(jobs_dir=tmp_path, dicomweb_url=orthanc.dicomweb_url, max_frames=3)
    store, client = JobStore(tmp_path), WadoClient.from_settings(settings)
    job = store.submit([], reference=reference, transaction_id="ref-1")
    assert (job.study, job.series, job.n_files) == (reference.study, reference.series, 0)
    (store.job_dir(job.id) / ".fetching").mkdir()  # a fetch cut short by a crash
    (store.job_dir(job.id) / ".fetching" / "0000.dcm").write_bytes(b"half")
    fetched = fetch_job(store, client, store.claim_next(), settings)
    assert (fetched.state, fetched.n_files, fetched.reason) == ("running", 3, None)
    assert sorted(map(sop_uid, map(Path.read_bytes, store.inputs(job.id)))) == sorted(
        map(sop_uid, files)
    )
    assert not (store.job_dir(job.id) / ".fetching").exists()
    assert fetch_job(store, client, fetched, settings) == fetched  # fetched once

    small = settings.model_copy(update={"max_frames": 2})
    too_many = store.submit([], reference=reference)
    failed = fetch_job(store, client, store.claim_next(), small)
    assert failed.id == too_many.id and failed.state == "failed"
    assert "3 instances, over the limit of 2 frames (LESIONSEG_MAX_FRAMES)" in failed.reason

    unknown = store.submit([], reference=SeriesReference(reference.study, "1.2.3"))
    failed = fetch_job(store, client, store.claim_next(), settings)
    assert failed.id == unknown.id and failed.state == "failed"
    assert failed.reason.startswith(f"series 1.2.3 of study {reference.study} is not in")

    no_archive = store.submit([], reference=reference)
    failed = fetch_job(store, None, store.claim_next(), settings)
    assert failed.id == no_archive.id and "LESIONSEG_DICOMWEB_URL" in failed.reason


def test_an_archive_down_requeues_with_back_off_and_the_queue_moves_on(tmp_path):
    settings = Settings(jobs_dir=tmp_path, push_initial_delay_s=2.0, push_max_delay_s=5.0)
    store = JobStore(tmp_path)
    down = WadoClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2)
    waiting = store.submit([], reference=SeriesReference("1.2", "1.2.3"), now=1.0)
    upload = tmp_path / "upload.dcm"
    upload.write_bytes(b"DICM")
    later = store.submit([upload], now=2.0)
    for delay in (2.0, 4.0, 5.0):  # doubling, capped by push_max_delay_s
        job = store.claim_next(now=10.0**10)  # as late as it gets: the waiting job is due
        assert job.id == waiting.id
        before = time.time()
        job = fetch_job(store, down, job, settings)
        assert before + delay <= job.fetch_next_at <= time.time() + delay
        assert (job.state, job.n_files) == ("queued", 0)
        assert job.reason.startswith("waiting for the archive: the archive http://127.0.0.1")
    assert store.get(waiting.id).fetch_attempts == 3
    assert store.claim_next().id == later.id  # the waiting job does not hold up the queue
    assert store.claim_next() is None
    assert next_fetch_at(store) == store.get(waiting.id).fetch_next_at
    store.recover()  # a restart keeps it waiting, attempts and all
    assert store.get(waiting.id).fetch_attempts == 3
    wait_for_archive(store, waiting.id, "not running: ignored", retry_in_s=1.0)
    assert store.get(waiting.id).reason.startswith("waiting for the archive")


# --- the store ---------------------------------------------------------------------------------


def test_a_reference_is_checked_and_recorded(tmp_path):
    store = JobStore(tmp_path)
    with pytest.raises(InputError, match="DICOM UID: digits and dots"):
        SeriesReference("1.2.x", "1.2.3")
    for bad in ("", "1..2", "1.2.", ".1", "1.2\n", "1" * 65, "1.2 "):
        with pytest.raises(InputError, match="series must be a DICOM UID"):
            SeriesReference("1.2", bad)
    SeriesReference("1." + "2" * 62, "1.002.3")  # 64 characters; a leading zero let through
    upload = tmp_path / "upload.dcm"
    upload.write_bytes(b"DICM")
    with pytest.raises(InputError, match="not both"):
        store.submit([upload], reference=SeriesReference("1.2", "1.2.3"))
    with pytest.raises(InputError, match="or a study/series reference"):
        store.submit([])
    job = store.submit([], reference=SeriesReference("1.2", "1.2.3"), push=True)
    assert JobStore(tmp_path).get(job.id).to_dict() | {} == job.to_dict()
    assert job.to_dict()["study"] == "1.2" and job.to_dict()["series"] == "1.2.3"
    assert not (store.job_dir(job.id) / "input").exists()  # fetched by the worker


# The table as the release before jobs by reference created it (job_db.py at 558acea).
OWNED_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, transaction_id TEXT, owner TEXT, state TEXT NOT NULL, reason TEXT,
    window TEXT, n_files INTEGER NOT NULL, push_state TEXT NOT NULL,
    push_attempts INTEGER NOT NULL DEFAULT 0, push_next_at REAL, push_error TEXT,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, pushed_at REAL
)
"""


def test_a_store_written_before_references_keeps_working(tmp_path):
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute(OWNED_SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, transaction_id, owner, state, n_files, push_state, "
            "created_at) VALUES ('a1', 'tx', 'k', 'queued', 1, 'none', 5.0)"
        )
    (tmp_path / "a1" / "input").mkdir(parents=True)
    store = JobStore(tmp_path)
    old = store.get("a1")
    assert (old.study, old.series, old.fetch_attempts, old.fetch_next_at) == (None, None, 0, None)
    assert store.find("tx", "k") == old
    assert store.claim_next().id == "a1"
    job = store.submit([], reference=SeriesReference("1.2", "1.2.3"))
    assert JobStore(tmp_path).get(job.id).series == "1.2.3"


# --- the multipart reader --------------------------------------------------------------------


def write_body(tmp_path: Path, body: bytes) -> Path:
    path = tmp_path / "body"
    path.write_bytes(body)
    (tmp_path / "out").mkdir()
    return path


@pytest.mark.parametrize("preamble", [b"", b"a preamble\r\n"])
def test_multipart_parts_are_split_exactly(tmp_path, preamble):
    parts = [b"DICM--b\r\n\r\n--c\r\n--", b"", b"\r\n\r\n"]  # no CRLF--b inside
    body = preamble + b"".join(
        b"--b\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Length: %d\r\n\r\n%s\r\n" % (len(p), p)
        for p in parts[:2]
    )
    body += b"--b  \r\n\r\n%s\r\n--b--\r\nepilogue" % parts[2]  # no headers, padding
    files = split_multipart(write_body(tmp_path, body), b"b", tmp_path / "out")
    assert [p.read_bytes() for p in files] == parts


@pytest.mark.parametrize(
    ("body", "message", "retryable"),
    [
        (b"", "cut short", True),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM", "cut short", True),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b", "cut short", True),
        (b"--b\r\nContent-Type: text/html\r\n\r\n<html>\r\n--b--", "text/html", False),
        (b"no boundary at all", "cut short", True),
        (b"--b--\r\n", "holds no instance", True),
    ],
)
def test_multipart_faults(tmp_path, body, message, retryable):
    with pytest.raises(FetchError, match=message) as fault:
        split_multipart(write_body(tmp_path, body), b"b", tmp_path / "out")
    assert fault.value.retryable == retryable
