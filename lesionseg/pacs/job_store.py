"""Persistent store of asynchronous segmentation jobs (sqlite3 + files).

Layout under ``root`` (``Settings.jobs_dir``)::

    jobs.sqlite3            one row per job: state, reason, push bookkeeping, timestamps
    <job id>/input/0000.dcm the accepted files, written and fsynced before the job is acknowledged;
                            for a job by reference, the series fetched from the archive
    <job id>/.fetching/     a fetch under way, renamed to input/ once complete (job_fetch.py)
    <job id>/options.json   segmentation options of the job (boxes, propagate, sr), if any
    <job id>/result.dcm     the DICOM SEG (Part-10) once the job is done
    <job id>/sr.dcm         the DICOM SR measurement report, when the job asked for one
    <job id>/summary.json   the JSON-ready per-frame summary of the result

Bounds (lesionseg/pacs/job_bounds.py): the jobs queued or running, the inputs deleted once a
job has ended, a finished job deleted (row and files) after the retention (``purge_expired``).

Job states: ``queued`` -> ``running`` -> ``done`` | ``failed`` (with a reason). A job left
``running`` by a process that died goes back to ``queued`` when the store is opened again. A
job by reference whose archive was unavailable goes back to ``queued`` until ``fetch_next_at``
(lesionseg/pacs/job_fetch.py); the job record itself is in lesionseg/pacs/job.py.
Push states: ``none`` (no push asked or no server configured), ``pending`` (due now),
``retrying`` (the last try failed with a retryable error; next try at ``push_next_at``),
``pushed``, ``failed`` (the server refused it for good). A result is never deleted by a push
outcome: it stays fetchable whatever happens to the push.

Every connection is short-lived and every state change one transaction, so threads can share a
store; claiming a job or a push is a conditional UPDATE, so only one claimant wins. ``recover``
assumes that no other process is running jobs of the same store at that moment.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from lesionseg.errors import DuplicateJobError, InputError, JobNotFoundError, StorageFullError
from lesionseg.pacs import job_bounds
from lesionseg.pacs.durable_files import disk_full, fsync_dir, write_durably
from lesionseg.pacs.job import MAX_TRANSACTION_ID, Job, SeriesReference
from lesionseg.pacs.job import backoff_delay as backoff_delay  # re-exported (tests)
from lesionseg.pacs.job_bounds import JobBounds
from lesionseg.pacs.job_db import DB_FILE, create_database, transaction


class JobStore:
    """The job store in directory ``root`` (created if missing), kept within ``bounds``
    (default: no bounds but the inputs' deletion once a job has ended)."""

    def __init__(self, root: Path, bounds: JobBounds | None = None) -> None:
        self.root = Path(root)
        self.bounds = JobBounds() if bounds is None else bounds
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / DB_FILE
        create_database(self.db_path)
        # Held open for the store's life: its WAL index (-shm) and WAL stay allocated, so
        # status reads keep working on a full volume (writes then fail with SQLITE_FULL).
        self._keeper = sqlite3.connect(self.db_path, check_same_thread=False)
        self._keeper.execute("SELECT count(*) FROM jobs").fetchone()

    # --- paths -----------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def inputs(self, job_id: str) -> list[Path]:
        """The accepted files of a job, in the order they were submitted (or fetched)."""
        return sorted((self.job_dir(job_id) / "input").iterdir())

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result.dcm"

    def sr_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "sr.dcm"

    def outputs(self, job_id: str) -> list[Path]:
        """What a push sends: the SEG, and the SR when there is one."""
        return [p for p in (self.result_path(job_id), self.sr_path(job_id)) if p.exists()]

    def options(self, job_id: str) -> dict:
        """The segmentation options the job was submitted with (empty: the defaults)."""
        path = self.job_dir(job_id) / "options.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def summary(self, job_id: str) -> dict | None:
        path = self.job_dir(job_id) / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    # --- submission and lookup ---------------------------------------------------------------

    def submit(
        self,
        files: Sequence[Path | BinaryIO],
        *,
        transaction_id: str | None = None,
        window: str | None = None,
        push: bool = False,
        options: dict | None = None,
        now: float | None = None,
        owner: str | None = None,
        reference: SeriesReference | None = None,
    ) -> Job:
        """Accept a job: copy ``files`` (paths or binary file objects) and the JSON-ready
        segmentation ``options`` into the store and fsync them, then record the job as
        ``queued``, owned by ``owner`` (an API key's id; None: no owner). A job by
        ``reference`` has no files: its worker fetches the series (lesionseg.pacs.job_fetch).

        Returns only once the job is durable. Raises :class:`DuplicateJobError` if the same
        owner used ``transaction_id`` before (whatever the queue holds),
        :class:`~lesionseg.pacs.job_bounds.JobQueueFullError` if the queue or the owner's
        share of it is full (checked before the files are copied and again as the job is
        recorded), :class:`InputError` for no files or a bad id.
        """
        if files and reference is not None:
            raise InputError("send either files or a study/series reference, not both")
        if not files and reference is None:
            raise InputError(
                "no files: submit one or more DICOM files of one study or series, or a "
                "study/series reference to fetch from the archive"
            )
        if transaction_id is not None and not (
            0 < len(transaction_id) <= MAX_TRANSACTION_ID and transaction_id.isprintable()
        ):
            raise InputError(f"transaction_id must be 1-{MAX_TRANSACTION_ID} printable characters")
        if transaction_id is not None and (existing := self.find(transaction_id, owner)):
            raise DuplicateJobError(transaction_id, existing.id)
        with transaction(self.db_path) as db:
            job_bounds.check_queue(db, self.bounds, owner)  # before copying a series for nothing
        job_id = uuid.uuid4().hex
        staging = self.root / f".incoming-{job_id}"
        try:
            staging.mkdir()
            if files:  # a job by reference gets its input/ when its series is fetched
                self._copy_inputs(files, staging / "input")
            if options:
                write_durably(staging / "options.json", json.dumps(options).encode())
            staging.rename(self.job_dir(job_id))
            fsync_dir(self.root)
            with transaction(self.db_path) as db:
                job_bounds.check_queue(db, self.bounds, owner)
                db.execute(
                    "INSERT INTO jobs (id, transaction_id, owner, state, window, n_files,"
                    " push_state, created_at, study, series)"
                    " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                    (job_id, transaction_id, owner, window, len(files),
                     "pending" if push else "none", time.time() if now is None else now,
                     reference and reference.study, reference and reference.series),
                )  # fmt: skip
        except sqlite3.IntegrityError:  # a concurrent submission with the same id won
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            raise DuplicateJobError(transaction_id, self.find(transaction_id, owner).id) from None
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            if disk_full(exc):
                raise StorageFullError(
                    "the job store's volume is full: nothing was kept; submit again once "
                    "space is freed in LESIONSEG_JOBS_DIR"
                ) from exc
            raise
        return self.get(job_id)

    @staticmethod
    def _copy_inputs(files: Sequence[Path | BinaryIO], target: Path) -> None:
        """``files`` as ``target``/0000.dcm, 0001.dcm ..., each and the directory fsynced."""
        target.mkdir()
        for i, source in enumerate(files):
            with (target / f"{i:04d}.dcm").open("wb") as copy:
                if isinstance(source, Path):
                    with source.open("rb") as f:
                        shutil.copyfileobj(f, copy)
                else:
                    shutil.copyfileobj(source, copy)
                copy.flush()
                os.fsync(copy.fileno())
        fsync_dir(target)

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job ``job_id``. With ``owner`` (an API key's id), a job of another owner, or of
        none, is not found either: the same error as an unknown id, so ids cannot be probed."""
        with transaction(self.db_path) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            raise JobNotFoundError(f"no job {job_id!r}")
        return Job(**dict(row))

    def find(self, transaction_id: str, owner: str | None = None) -> Job | None:
        """The job ``owner`` (None: no owner) submitted with this transaction id, if any."""
        with transaction(self.db_path) as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE transaction_id = ? AND owner IS ?",
                (transaction_id, owner),
            ).fetchone()
        return None if row is None else Job(**dict(row))

    # --- processing ------------------------------------------------------------------------

    def recover(self) -> int:
        """After a restart: put jobs left ``running`` back to ``queued``, drop half-written
        submissions (never acknowledged) and the directories of jobs whose purge was cut
        short. Returns the number of jobs re-queued."""
        for staging in self.root.glob(".incoming-*"):
            shutil.rmtree(staging, ignore_errors=True)
        job_bounds.remove_orphans(self.db_path, self.root)
        with transaction(self.db_path) as db:
            return db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'"
            ).rowcount

    def requeue(self, job_id: str) -> Job:
        """Put a ``running`` job back in the queue (it could not run now, e.g. overload)."""
        with transaction(self.db_path) as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL "
                "WHERE id = ? AND state = 'running'",
                (job_id,),
            )
        return self.get(job_id)

    def claim_next(self, now: float | None = None) -> Job | None:
        """Mark the oldest queued job ``running`` and return it (None if there is none);
        a job waiting for the archive is skipped until its ``fetch_next_at``."""
        now = time.time() if now is None else now
        with transaction(self.db_path) as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND ifnull(fetch_next_at, 0) <= ? "
                "ORDER BY created_at, rowid LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = ? WHERE id = ?", (now, row["id"])
            )
        return self.get(row["id"])

    def complete(
        self,
        job_id: str,
        seg: bytes,
        summary: dict,
        now: float | None = None,
        *,
        sr: bytes | None = None,
    ) -> Job:
        """Store the result (and the SR) durably, then mark the job ``done`` (a push, if
        asked, is due). On a full volume the files written so far are removed, the job is
        left as it was and :class:`StorageFullError` is raised: call again once there is
        space."""
        outputs = (self.job_dir(job_id) / "summary.json", self.sr_path(job_id))
        outputs += (self.result_path(job_id),)
        now = time.time() if now is None else now
        try:
            write_durably(outputs[0], json.dumps(summary).encode())
            if sr is not None:
                write_durably(outputs[1], sr)
            write_durably(outputs[2], seg)
            with transaction(self.db_path) as db:
                db.execute(
                    "UPDATE jobs SET state = 'done', reason = NULL, finished_at = ?, "
                    "push_next_at = CASE WHEN push_state = 'pending' THEN ? END WHERE id = ?",
                    (now, now, job_id),
                )
        except (OSError, sqlite3.OperationalError) as exc:
            if not disk_full(exc):
                raise
            for path in outputs:
                path.unlink(missing_ok=True)
            raise StorageFullError(
                "the job store's volume is full: the result could not be stored"
            ) from exc
        self._drop_inputs(job_id)
        return self.get(job_id)

    def note(self, job_id: str, reason: str) -> None:
        """Record why a ``running`` job is not done yet (cleared when it is)."""
        with transaction(self.db_path) as db:
            db.execute(
                "UPDATE jobs SET reason = ? WHERE id = ? AND state = 'running'", (reason, job_id)
            )

    def fail(self, job_id: str, reason: str, now: float | None = None) -> Job:
        """Mark the job ``failed`` with a reason a caller can act on (no patient data)."""
        with transaction(self.db_path) as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, finished_at = ?, "
                "push_state = CASE WHEN push_state = 'pending' THEN 'none' ELSE push_state END "
                "WHERE id = ?",
                (reason, time.time() if now is None else now, job_id),
            )
        self._drop_inputs(job_id)
        return self.get(job_id)

    def _drop_inputs(self, job_id: str) -> None:
        """The job has ended: its inputs (patient data) go, unless the bounds keep them."""
        if not self.bounds.keep_inputs:
            job_bounds.remove_tree(self.job_dir(job_id) / "input")

    # --- retention ---------------------------------------------------------------------------

    def purge_expired(self, now: float | None = None) -> list[str]:
        """Delete the jobs that finished ``bounds.retention_s`` or more before ``now`` (Unix
        s): rows, inputs and results; their ids are unknown from then on. Returns those ids
        (none without a retention)."""
        if self.bounds.retention_s is None:
            return []
        now = time.time() if now is None else now
        return job_bounds.purge_finished(self.db_path, self.root, now - self.bounds.retention_s)

    def bytes_held(self) -> int:
        """Bytes of the store's files: the database, inputs and results."""
        return job_bounds.bytes_under(self.root)

    # --- push bookkeeping --------------------------------------------------------------------

    def due_pushes(self, now: float | None = None) -> list[Job]:
        """Done jobs whose push is pending or retrying and due at ``now``, oldest due first."""
        with transaction(self.db_path) as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE state = 'done' AND push_state IN ('pending', "
                "'retrying') AND push_next_at <= ? ORDER BY push_next_at",
                (time.time() if now is None else now,),
            ).fetchall()
        return [Job(**dict(r)) for r in rows]

    def next_push_at(self) -> float | None:
        """When the earliest pending or retrying push is due (None if there is none)."""
        with transaction(self.db_path) as db:
            (value,) = db.execute(
                "SELECT MIN(push_next_at) FROM jobs WHERE state = 'done' "
                "AND push_state IN ('pending', 'retrying')"
            ).fetchone()
        return value

    def claim_push(self, job: Job, lease_s: float, now: float | None = None) -> bool:
        """Reserve a due push for ``lease_s`` seconds so that no other pusher sends it too;
        False if someone else claimed or finished it since ``job`` was read."""
        now = time.time() if now is None else now
        with transaction(self.db_path) as db:
            return (
                db.execute(
                    "UPDATE jobs SET push_next_at = ? WHERE id = ? AND push_next_at = ? "
                    "AND push_state IN ('pending', 'retrying')",
                    (now + lease_s, job.id, job.push_next_at),
                ).rowcount
                == 1
            )

    def push_succeeded(self, job_id: str, now: float | None = None) -> Job:
        with transaction(self.db_path) as db:
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
        with transaction(self.db_path) as db:
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
