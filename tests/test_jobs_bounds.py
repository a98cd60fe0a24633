"""The job store's bounds (lesionseg/pacs/job_bounds.py): the queue's length and one owner's
share of it, the inputs deleted once a job has ended, and the retention, on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from lesionseg.errors import DuplicateJobError, JobNotFoundError
from lesionseg.pacs.job_bounds import JobBounds, JobQueueFullError
from lesionseg.pacs.job_store import JobStore
from lesionseg.settings import Settings

HOUR = 3600.0


@pytest.fixture
def upload(tmp_path) -> list[Path]:
    path = tmp_path / "upload.dcm"
    path.write_bytes(b"DICM" + b"\1" * 1000)
    return [path]


def store_dirs(store: JobStore) -> set[str]:
    return {p.name for p in store.root.iterdir() if p.is_dir()}


def test_bounds_come_from_the_settings():
    settings = Settings(
        max_queued_jobs=7, max_requests_per_key=2, job_retention_hours=1.5, keep_job_inputs=True
    )
    assert JobBounds.from_settings(settings) == JobBounds(7, 2, 5400.0, True)
    assert JobBounds.from_settings(Settings()) == JobBounds(100, None, 72 * HOUR, False)


def test_a_full_queue_refuses_keeps_nothing_and_frees_a_place_when_a_job_ends(tmp_path, upload):
    store = JobStore(tmp_path / "jobs", JobBounds(max_queued=2))
    first = store.submit(upload, transaction_id="a")
    store.submit(upload)
    store.claim_next()  # running counts as queued: it holds its inputs still
    with pytest.raises(JobQueueFullError, match="LESIONSEG_MAX_QUEUED_JOBS=2") as full:
        store.submit(upload)
    assert (full.value.limit, full.value.per_owner) == (2, False)
    assert len(store_dirs(store)) == 2  # nothing of the refused job was kept
    # A retried submission of an accepted job is still told which one it is.
    with pytest.raises(DuplicateJobError) as duplicate:
        store.submit(upload, transaction_id="a")
    assert duplicate.value.job_id == first.id
    store.complete(first.id, b"SEG", {"frames": 1})
    assert store.submit(upload).state == "queued"  # the done job left the queue


def test_one_owner_has_its_share_and_others_theirs(tmp_path, upload):
    store = JobStore(tmp_path, JobBounds(max_queued=10, max_per_owner=2))
    for _ in range(2):
        store.submit(upload, owner="key-a")
    with pytest.raises(JobQueueFullError, match="LESIONSEG_MAX_REQUESTS_PER_KEY=2") as full:
        store.submit(upload, owner="key-a")
    assert full.value.per_owner
    store.submit(upload, owner="key-b")
    store.submit(upload)  # no owner (no API keys): only the queue's bound counts
    assert len(store_dirs(store)) == 4


@pytest.mark.parametrize("keep", [False, True])
def test_inputs_go_once_the_job_ends_unless_kept(tmp_path, upload, keep):
    store = JobStore(tmp_path, JobBounds(keep_inputs=keep))
    done, failed = store.submit(upload), store.submit(upload)
    store.claim_next(), store.claim_next()
    store.complete(done.id, b"SEG", {"frames": 1})
    store.fail(failed.id, "not a DICOM file")
    for job in (done, failed):
        assert (store.job_dir(job.id) / "input").exists() == keep
    assert store.result_path(done.id).read_bytes() == b"SEG"  # the result stays


def test_a_job_past_the_retention_is_gone_files_and_row(tmp_path, upload):
    store = JobStore(tmp_path, JobBounds(retention_s=72 * HOUR, keep_inputs=True))
    done, failed, running = (store.submit(upload, now=0.0) for _ in range(3))
    for _ in range(3):
        store.claim_next(now=1.0)
    store.complete(done.id, b"S" * 2**20, {"frames": 1}, now=10.0)
    store.fail(failed.id, "not a DICOM file", now=20.0)
    held = store.bytes_held()
    assert held > 3 * 1004 + 2**20  # three inputs, one result, the database

    assert store.purge_expired(now=10.0 + 72 * HOUR - 1) == []  # not yet
    assert store.get(done.id).state == "done"
    assert store.purge_expired(now=10.0 + 72 * HOUR) == [done.id]
    assert store.purge_expired(now=20.0 + 72 * HOUR) == [failed.id]  # failed jobs expire too
    for job in (done, failed):
        with pytest.raises(JobNotFoundError):
            store.get(job.id)
        assert not store.job_dir(job.id).exists()
    assert store_dirs(store) == {running.id}  # a job not ended is never purged
    assert store.purge_expired(now=1e12) == []
    assert store.bytes_held() < held - 2**20 + 2**16  # the database's log may grow a little
    assert JobStore(tmp_path).get(running.id).state == "running"


def test_without_a_retention_nothing_is_purged(tmp_path, upload):
    store = JobStore(tmp_path)
    job = store.submit(upload, now=0.0)
    store.claim_next()
    store.complete(job.id, b"SEG", {}, now=1.0)
    assert store.purge_expired(now=1e12) == []
    assert store.get(job.id).state == "done"


def test_a_purge_cut_short_leaves_an_orphan_that_the_next_start_removes(tmp_path, upload):
    store = JobStore(tmp_path)
    kept = store.submit(upload)
    orphan = tmp_path / ("f" * 32)  # a job directory whose row a purge deleted
    (orphan / "input").mkdir(parents=True)
    (orphan / "input" / "0000.dcm").write_bytes(b"DICM")
    JobStore(tmp_path).recover()
    assert store_dirs(store) == {kept.id}
