"""Who runs a job: a worker claims the oldest job it may run under a lease that it renews
while the job runs; a job whose lease expired (its worker died) is claimed again by the next
worker, at most MAX_RUNS times. A mixin of :class:`lesionseg.pacs.job_store.JobStore`, whose
database (``self.db``), ``lease_s``, ``worker_id`` and files it uses; the conditions under
which a running job may be ended (``ENDABLE``) are the store's."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from lesionseg.errors import LesionSegError
from lesionseg.pacs import job_bounds
from lesionseg.pacs.job import Job

DEFAULT_LEASE_S = 60.0
MAX_RUNS = 3  # a job that stopped its worker this many times fails instead of stopping more
# In a shared store, a staging directory or an orphan younger than this may be another
# process's submission or purge under way: left alone.
SHARED_STALE_S = 3600.0
RECENT_JOBS = 20  # the run times that estimate a queued job's wait


class LeaseLostError(LesionSegError):
    """This worker's lease on a job expired and another worker holds the job now: what this
    worker computed is discarded (the other one's result is the job's)."""


class LeaseHolder:
    """The claims, leases and queue of a job store."""

    db: object
    root: Path
    lease_s: float
    worker_id: str

    def get(self, job_id: str, *, owner: str | None = None) -> Job:  # JobStore's
        raise NotImplementedError

    def _drop_inputs(self, job_id: str) -> None:  # JobStore's
        raise NotImplementedError

    def recover(self, now: float | None = None) -> int:
        """After a restart: drop half-written submissions (never acknowledged) and the
        directories of jobs whose purge was cut short; with sqlite (one worker process) put
        the jobs left ``running`` back to ``queued``. In a shared store other processes may be
        submitting, purging and running jobs right now: only leftovers older than
        SHARED_STALE_S go, and running jobs are left to their leases. Returns the number of
        jobs re-queued."""
        now = time.time() if now is None else now
        min_age = SHARED_STALE_S if self.db.shared else 0.0
        for staging in self.root.glob(".incoming-*"):
            if _age(staging, now) >= min_age:
                shutil.rmtree(staging, ignore_errors=True)
        job_bounds.remove_orphans(self.db, self.root, min_age_s=min_age, now=now)
        if self.db.shared:
            return 0
        with self.db.transaction() as db:
            return db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, lease_owner = NULL, "
                "lease_until = NULL WHERE state = 'running'"
            ).rowcount

    def requeue(self, job_id: str) -> Job:
        """Put a ``running`` job of this worker back in the queue (it could not run now, e.g.
        overload); this run is not counted."""
        with self.db.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, lease_owner = NULL, "
                "lease_until = NULL, runs = CASE WHEN runs > 0 THEN runs - 1 ELSE 0 END "
                "WHERE id = ? AND state = 'running' AND lease_owner IS ?",
                (job_id, self.worker_id),
            )
        return self.get(job_id)

    def claim_next(self, now: float | None = None) -> Job | None:
        """Take the oldest job that is queued (and not waiting for the archive until
        ``fetch_next_at``) or running on an expired lease (its worker died): mark it
        ``running`` under this worker's lease and return it; None if there is none. A job
        whose worker died MAX_RUNS times is failed with the reason instead."""
        now = time.time() if now is None else now
        while True:
            with self.db.transaction() as db:
                row = db.execute(
                    "SELECT id, runs FROM jobs WHERE (state = 'queued' AND "
                    "coalesce(fetch_next_at, 0) <= ?) OR (state = 'running' AND lease_until < ?) "
                    f"ORDER BY created_at, {self.db.seq} LIMIT 1{self.db.skip_locked}",
                    (now, now),
                ).fetchone()
                if row is None:
                    return None
                if row["runs"] < MAX_RUNS:
                    db.execute(
                        "UPDATE jobs SET state = 'running', started_at = ?, lease_owner = ?, "
                        "lease_until = ?, runs = runs + 1 WHERE id = ?",
                        (now, self.worker_id, now + self.lease_s, row["id"]),
                    )
                    break
                db.execute(  # then look for the next one
                    "UPDATE jobs SET state = 'failed', finished_at = ?, lease_owner = NULL, "
                    "reason = ?, push_state = CASE WHEN push_state = 'pending' THEN 'none' "
                    "ELSE push_state END WHERE id = ?",
                    (now, _stopped_reason(row["runs"]), row["id"]),
                )
            self._drop_inputs(row["id"])
        return self.get(row["id"])

    def renew(self, job_id: str, now: float | None = None) -> bool:
        """Extend this worker's lease on a running job by ``lease_s`` from ``now``; False if
        it has lost the job (the lease expired and another worker claimed it, or it ended)."""
        now = time.time() if now is None else now
        with self.db.transaction() as db:
            return (
                db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running' "
                    "AND lease_owner IS ?",
                    (now + self.lease_s, job_id, self.worker_id),
                ).rowcount
                == 1
            )

    def waiting(self) -> int:
        """How many jobs are queued or running (of all workers): the queue's depth."""
        with self.db.transaction() as db:
            ((count,),) = db.execute(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchall()
        return count

    def queue_position(self, job: Job, now: float | None = None) -> tuple[int, float | None]:
        """For a queued job: its place in the queue (1 = next) and the estimated seconds until
        a worker starts it: the jobs ahead of it and those running, times the mean run time of
        the last RECENT_JOBS done jobs, divided among the workers holding jobs now (at least
        one). The estimate is None until a job has been done."""
        now = time.time() if now is None else now
        with self.db.transaction() as db:
            ((ahead,),) = db.execute(
                "SELECT count(*) FROM jobs WHERE state = 'queued' AND (created_at < ? OR "
                f"(created_at = ? AND {self.db.seq} < (SELECT {self.db.seq} FROM jobs "
                "WHERE id = ?)))",
                (job.created_at, job.created_at, job.id),
            ).fetchall()
            ((running, workers),) = db.execute(
                "SELECT count(*), count(DISTINCT lease_owner) FROM jobs "
                "WHERE state = 'running' AND lease_until >= ?",
                (now,),
            ).fetchall()
            ((mean_run_s,),) = db.execute(
                "SELECT avg(finished_at - started_at) FROM (SELECT finished_at, started_at "
                "FROM jobs WHERE state = 'done' AND started_at IS NOT NULL "
                f"ORDER BY finished_at DESC LIMIT {RECENT_JOBS}) AS recent"
            ).fetchall()
        if mean_run_s is None:
            return ahead + 1, None
        return ahead + 1, (ahead + running) * float(mean_run_s) / max(1, workers)


def _age(path: Path, now: float) -> float:
    """Seconds since ``path`` was last modified (0 if it is gone)."""
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _stopped_reason(runs: int) -> str:
    return (
        f"the job stopped its worker {runs} times (the worker died or was killed while running "
        "it: out of memory?); not tried again. Check the workers' logs and memory limit, then "
        "submit it again"
    )
