"""The push bookkeeping of the job store: which results are due to be sent to the archive and
destinations, who is sending one now (a push's claim is a lease on ``push_next_at``), and what
came of each try. A mixin of :class:`lesionseg.pacs.job_store.JobStore`, whose database
(``self.db``) and ``get`` it uses; the sender is lesionseg/pacs/dicomweb.py ``push_due``."""

from __future__ import annotations

import time

from lesionseg.pacs.job import Job


class PushLedger:
    """Push states: ``none``, ``pending``, ``retrying``, ``pushed``, ``failed`` (job_store.py)."""

    db: object

    def get(self, job_id: str, *, owner: str | None = None) -> Job:  # JobStore's
        raise NotImplementedError

    def due_pushes(self, now: float | None = None) -> list[Job]:
        """Done jobs whose push is pending or retrying and due at ``now``, oldest due first."""
        with self.db.transaction() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE state = 'done' AND push_state IN ('pending', "
                "'retrying') AND push_next_at <= ? ORDER BY push_next_at",
                (time.time() if now is None else now,),
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    def next_push_at(self) -> float | None:
        """When the earliest pending or retrying push is due (None if there is none)."""
        with self.db.transaction() as db:
            (value,) = db.execute(
                "SELECT MIN(push_next_at) FROM jobs WHERE state = 'done' "
                "AND push_state IN ('pending', 'retrying')"
            ).fetchone()
        return value

    def claim_push(self, job: Job, lease_s: float, now: float | None = None) -> bool:
        """Reserve a due push for ``lease_s`` seconds so that no other pusher sends it too;
        False if someone else claimed or finished it since ``job`` was read."""
        now = time.time() if now is None else now
        with self.db.transaction() as db:
            return (
                db.execute(
                    "UPDATE jobs SET push_next_at = ? WHERE id = ? AND push_next_at = ? "
                    "AND push_state IN ('pending', 'retrying')",
                    (now + lease_s, job.id, job.push_next_at),
                ).rowcount
                == 1
            )

    def push_succeeded(self, job_id: str, now: float | None = None) -> Job:
        with self.db.transaction() as db:
            db.execute(
                "UPDATE jobs SET push_state = 'pushed', push_attempts = push_attempts + 1, "
                "push_error = NULL, push_next_at = NULL, pushed_at = ? WHERE id = ?",
                (time.time() if now is None else now, job_id),
            )
        return self.get(job_id)

    def push_failed(
        self,
        job_id: str,
        error: str,
        *,
        retry_in_s: float | None,
        now: float | None = None,
    ) -> Job:
        """Record a failed try: retry after ``retry_in_s`` seconds, or never (None)."""
        now = time.time() if now is None else now
        with self.db.transaction() as db:
            db.execute(
                "UPDATE jobs SET push_attempts = push_attempts + 1, push_error = ?, "
                "push_state = ?, push_next_at = ? WHERE id = ?",
                (
                    error,
                    "failed" if retry_in_s is None else "retrying",
                    None if retry_in_s is None else now + retry_in_s,
                    job_id,
                ),
            )
        return self.get(job_id)
