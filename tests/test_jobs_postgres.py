"""The job store on a real PostgreSQL (LESIONSEG_JOBS_DATABASE_URL): the same rules as sqlite
(duplicates, owners, bounds, pushes), and what only a shared store needs: workers that never
get the same job, leases that hand a dead worker's job to another, a stale worker that cannot
overwrite the result, the queue's positions."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from lesionseg.errors import DuplicateJobError, JobStoreError
from lesionseg.pacs.job_bounds import JobBounds, JobQueueFullError
from lesionseg.pacs.job_db_postgres import safe_url, translate
from lesionseg.pacs.job_leases import MAX_RUNS, LeaseLostError
from lesionseg.pacs.job_store import JobStore
from lesionseg.settings import Settings


@pytest.fixture
def url(postgres):
    return postgres.database()


@pytest.fixture
def files():
    return [Path(get_testdata_file("CT_small.dcm"))]


def store(tmp_path, url, **kwargs) -> JobStore:
    return JobStore(tmp_path / "jobs", database_url=url, **kwargs)


def test_translate_and_safe_url():
    assert translate("a = ? AND owner IS ? AND window = '5%'") == (
        "a = %s AND owner IS NOT DISTINCT FROM %s AND \"window\" = '5%%'"
    )
    assert safe_url("postgresql://u:secret@db:5432/jobs") == "postgresql://u@db:5432/jobs"


def test_settings_pick_postgres_and_refuse_other_urls(tmp_path, url, files):
    settings = Settings(jobs_dir=tmp_path / "jobs", jobs_database_url=url)
    jobs = JobStore.from_settings(settings)
    assert jobs.db.shared and "secret" not in jobs.db.describe()
    job = jobs.submit(files, transaction_id="t1")
    assert JobStore.from_settings(settings).get(job.id).transaction_id == "t1"
    assert not (tmp_path / "jobs" / "jobs.sqlite3").exists()  # the table is in PostgreSQL
    with pytest.raises(ValueError, match="PostgreSQL URL"):
        Settings(jobs_database_url="mysql://u:p@db/jobs")


def test_an_unreachable_database_is_named_without_its_password(tmp_path):
    closed = "postgresql://u:hunter2@127.0.0.1:1/jobs"
    with pytest.raises(JobStoreError) as raised:
        store(tmp_path, closed)
    assert "postgresql://u@127.0.0.1:1/jobs cannot be reached" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_round_trip_duplicates_owners_and_bounds(tmp_path, url, files):
    jobs = store(tmp_path, url, bounds=JobBounds(max_queued=3, max_per_owner=1))
    a = jobs.submit(files, transaction_id="same", owner="k1", push=True)
    with pytest.raises(DuplicateJobError) as dup:
        jobs.submit(files, transaction_id="same", owner="k1")
    assert dup.value.job_id == a.id
    jobs.submit(files, transaction_id="same", owner="k2")  # another owner's id space
    with pytest.raises(JobQueueFullError) as full:
        jobs.submit(files, owner="k1")
    assert full.value.per_owner
    jobs.submit(files)  # no owner: 3 of 3
    with pytest.raises(JobQueueFullError):
        jobs.submit(files)
    assert jobs.find("same", "k2").owner == "k2" and jobs.find("same") is None

    claimed = jobs.claim_next()
    assert claimed.id == a.id and claimed.lease_owner == jobs.worker_id and claimed.runs == 1
    done = jobs.complete(a.id, b"SEG", {"frames": 1}, sr=b"SR")
    assert done.state == "done" and done.push_state == "pending"
    assert jobs.result_path(a.id).read_bytes() == b"SEG"
    assert jobs.sr_path(a.id).read_bytes() == b"SR"
    assert [j.id for j in jobs.due_pushes()] == [a.id]
    assert jobs.claim_push(done, lease_s=60) and not jobs.claim_push(done, lease_s=60)
    assert jobs.push_succeeded(a.id).push_state == "pushed"
    assert jobs.purge_expired() == []


def test_concurrent_submissions_with_one_id_accept_exactly_one(tmp_path, url, files):
    jobs = store(tmp_path, url)
    outcomes = []

    def submit():
        try:
            outcomes.append(jobs.submit(files, transaction_id="race").id)
        except DuplicateJobError as exc:
            outcomes.append(("dup", exc.job_id))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [o for o in outcomes if isinstance(o, str)]
    assert len(accepted) == 1
    assert all(o == ("dup", accepted[0]) for o in outcomes if o != accepted[0])


def test_workers_claiming_at_once_never_share_a_job(tmp_path, url, files):
    submitted = {store(tmp_path, url).submit(files).id for _ in range(30)}
    workers = [store(tmp_path, url, worker_id=f"w{i}") for i in range(4)]
    claimed: dict[str, list[str]] = {w.worker_id: [] for w in workers}

    def drain(worker):
        while (job := worker.claim_next()) is not None:
            claimed[worker.worker_id].append(job.id)

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [j for ids in claimed.values() for j in ids]
    assert sorted(every) == sorted(submitted)  # each once: SKIP LOCKED, no double claim
    assert sum(1 for ids in claimed.values() if ids) >= 2  # they really ran side by side


def test_a_dead_workers_job_goes_to_another_after_its_lease(tmp_path, url, files):
    job = store(tmp_path, url).submit(files, push=True)
    dead = store(tmp_path, url, lease_s=10, worker_id="dead")
    alive = store(tmp_path, url, lease_s=10, worker_id="alive")
    assert dead.claim_next(now=100.0).id == job.id
    assert alive.claim_next(now=105.0) is None  # still held
    assert not alive.renew(job.id, now=105.0)  # not its job
    taken = alive.claim_next(now=111.0)  # dead's lease ended at 110
    assert (taken.id, taken.lease_owner, taken.runs) == (job.id, "alive", 2)

    with pytest.raises(LeaseLostError):  # the stale worker comes back: nothing kept
        dead.complete(job.id, b"STALE", {"by": "dead"})
    assert not dead.renew(job.id)
    dead.fail(job.id, "stale failure")  # ignored: not its job
    assert alive.get(job.id).state == "running"
    assert alive.renew(job.id, now=112.0)
    alive.complete(job.id, b"SEG", {"by": "alive"})
    assert alive.result_path(job.id).read_bytes() == b"SEG"
    assert alive.summary(job.id) == {"by": "alive"}
    assert not list(alive.job_dir(job.id).glob(".result-*"))  # no leftovers of either
    with pytest.raises(LeaseLostError):
        dead.complete(job.id, b"STALE", {"by": "dead"})  # nor after it is done
    assert alive.result_path(job.id).read_bytes() == b"SEG"


def test_a_job_that_kills_its_workers_fails_after_max_runs(tmp_path, url, files):
    job = store(tmp_path, url).submit(files)
    now = 1000.0
    for run in range(MAX_RUNS):
        worker = store(tmp_path, url, lease_s=5, worker_id=f"w{run}")
        assert worker.claim_next(now=now).id == job.id
        now += 10  # the worker died: its lease ends
    assert store(tmp_path, url).claim_next(now=now) is None
    failed = store(tmp_path, url).get(job.id)
    assert failed.state == "failed" and f"stopped its worker {MAX_RUNS} times" in failed.reason


def test_requeue_and_shutdown_give_the_job_back_at_once(tmp_path, url, files):
    job = store(tmp_path, url).submit(files)
    first = store(tmp_path, url, worker_id="first")
    assert first.claim_next().id == job.id
    back = first.requeue(job.id)
    assert (back.state, back.lease_owner, back.runs) == ("queued", None, 0)
    assert store(tmp_path, url, worker_id="second").claim_next().id == job.id


def test_recovery_of_a_shared_store_leaves_other_workers_alone(tmp_path, url, files):
    jobs = store(tmp_path, url)
    running = jobs.submit(files)
    jobs.claim_next()
    fresh_staging = jobs.root / ".incoming-underway"
    fresh_staging.mkdir()  # another API pod's submission, a moment before its row
    assert store(tmp_path, url).recover() == 0
    assert jobs.get(running.id).state == "running"  # left to its lease
    assert fresh_staging.exists()


def test_queue_position_and_expected_wait(tmp_path, url, files):
    jobs = store(tmp_path, url, worker_id="w")
    first, _second, third = (jobs.submit(files, now=float(t)) for t in (1, 2, 3))
    assert jobs.queue_position(third) == (3, None)  # no job has run yet: no estimate
    now = time.time()
    jobs.claim_next(now=now - 30)
    jobs.complete(first.id, b"SEG", {}, now=now - 10)  # ran 20 s
    assert jobs.queue_position(jobs.get(third.id)) == (2, 20.0)  # one ahead, none running
    jobs.claim_next(now=now)  # the second runs
    assert jobs.queue_position(jobs.get(third.id)) == (1, 20.0)
    other = store(tmp_path, url, worker_id="v")
    fourth = other.submit(files, now=4.0)
    other.claim_next(now=now)  # the third runs on another worker: two workers, two running
    assert other.queue_position(fourth) == (1, 20.0)
    assert jobs.waiting() == 3


def test_a_store_holds_a_few_sessions_whatever_its_threads(tmp_path, url, files):
    import psycopg

    from lesionseg.pacs.job_db_postgres import MAX_CONNECTIONS

    jobs = store(tmp_path, url)
    job = jobs.submit(files)
    errors = []

    def poll():
        try:
            for _ in range(20):
                jobs.get(job.id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(url) as db:
        (sessions,) = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'lesionseg'",
            (database,),
        ).fetchone()
    assert 1 <= sessions <= MAX_CONNECTIONS
