"""Persistent store of asynchronous segmentation jobs: a job table (the embedded sqlite file, or
PostgreSQL shared by many workers) and files.

Layout under ``root`` (``Settings.jobs_dir``; shared by every API and worker process of a
PostgreSQL store, e.g. a ReadWriteMany volume)::

    jobs.sqlite3            the job table (sqlite only): state, reason, push bookkeeping, times
    <job id>/input/0000.dcm the accepted files, written and fsynced before the job is acknowledged;
                            for a job by reference, the series fetched from the archive
    <job id>/.fetching/     a fetch under way, renamed to input/ once complete (job_fetch.py)
    <job id>/options.json   segmentation options of the job (boxes, propagate, sr), if any
    <job id>/.result-<w>/   the results of worker w, moved into place as it marks the job done
    <job id>/result.dcm     the DICOM SEG (Part-10) once the job is done
    <job id>/sr.dcm         the DICOM SR measurement report, when the job asked for one
    <job id>/summary.json   the JSON-ready per-frame summary of the result

Bounds (lesionseg/pacs/job_bounds.py): the jobs queued or running, the inputs deleted once a
job has ended, a finished job deleted (row and files) after the retention (``purge_expired``).

Job states: ``queued`` -> ``running`` -> ``done`` | ``failed`` (with a reason). A worker that
claims a job holds a lease on it (``lease_owner``, ``lease_until``) that it renews while the job
runs; a job whose lease expired (its worker died) is claimed again by the next worker, at most
MAX_RUNS times, then it fails with the reason. Only the lease's holder can end a running job, so
a job is done once and its result written once (lesionseg/pacs/job_leases.py). An sqlite store
(one worker process) also puts the jobs left ``running`` back to ``queued`` when it is opened.
A job by reference whose archive was unavailable goes back to ``queued`` until
``fetch_next_at`` (lesionseg/pacs/job_fetch.py); the job record is in lesionseg/pacs/job.py.
Push states: ``none`` (no push asked or no server configured), ``pending`` (due now),
``retrying`` (the last try failed with a retryable error; next try at ``push_next_at``),
``pushed``, ``failed`` (the server refused it for good). A result is never deleted by a push
outcome: it stays fetchable whatever happens to the push.

Every state change is one transaction, so threads and processes can share a store; claiming a
job (``FOR UPDATE SKIP LOCKED`` in PostgreSQL) or a push is conditional, so only one claimant
wins. The push bookkeeping is in lesionseg/pacs/job_pushes.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from lesionseg.errors import (
    DuplicateJobError,
    InputError,
    JobNotFoundError,
    StorageFullError,
)
from lesionseg.pacs import job_bounds
from lesionseg.pacs.durable_files import disk_full, fsync_dir, write_durably
from lesionseg.pacs.job import MAX_TRANSACTION_ID, Job, SeriesReference
from lesionseg.pacs.job import backoff_delay as backoff_delay  # re-exported (tests)
from lesionseg.pacs.job_bounds import JobBounds
from lesionseg.pacs.job_db import lock_queue, open_job_database
from lesionseg.pacs.job_leases import DEFAULT_LEASE_S, LeaseHolder, LeaseLostError
from lesionseg.pacs.job_pushes import PushLedger
from lesionseg.settings import Settings

# A running job may be ended by the holder of its lease; a queued one (nobody holds it) by anyone.
ENDABLE = "state IN ('queued', 'running') AND coalesce(lease_owner, ?) = ?"


class JobStore(LeaseHolder, PushLedger):
    """The job store in directory ``root`` (created if missing), its table in the PostgreSQL
    database at ``database_url`` or in ``root``'s sqlite file, kept within ``bounds``
    (default: no bounds but the inputs' deletion once a job has ended). ``lease_s``: how long
    a claim holds a job unless renewed (:meth:`renew`). ``worker_id`` names this store's
    claims (default: host, process and a random part)."""

    def __init__(
        self,
        root: Path,
        bounds: JobBounds | None = None,
        *,
        database_url: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        worker_id: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.bounds = JobBounds() if bounds is None else bounds
        self.lease_s = lease_s
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = open_job_database(self.root, database_url)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs) -> JobStore:
        """The store of ``settings``: ``jobs_dir``, ``jobs_database_url``, ``job_lease_s`` and
        the bounds (:meth:`JobBounds.from_settings`); ``kwargs`` as the constructor's."""
        url = settings.jobs_database_url
        return cls(
            settings.jobs_dir,
            JobBounds.from_settings(settings),
            database_url=None if url is None else url.get_secret_value(),
            lease_s=settings.job_lease_s,
            **kwargs,
        )

    def close(self) -> None:
        self.db.close()

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
        with self.db.transaction() as db:
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
            with self.db.transaction() as db:
                lock_queue(db)
                job_bounds.check_queue(db, self.bounds, owner)
                db.execute(
                    "INSERT INTO jobs (id, transaction_id, owner, state, window, n_files,"
                    " push_state, created_at, study, series)"
                    " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                    (job_id, transaction_id, owner, window, len(files),
                     "pending" if push else "none", time.time() if now is None else now,
                     reference and reference.study, reference and reference.series),
                )  # fmt: skip
        except self.db.integrity_errors:  # a concurrent submission with the same id won
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
        with self.db.transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            raise JobNotFoundError(f"no job {job_id!r}")
        return Job.from_row(row)

    def find(self, transaction_id: str, owner: str | None = None) -> Job | None:
        """The job ``owner`` (None: no owner) submitted with this transaction id, if any."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE transaction_id = ? AND owner IS ?",
                (transaction_id, owner),
            ).fetchone()
        return None if row is None else Job.from_row(row)

    # --- processing ------------------------------------------------------------------------

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
        asked, is due). The files are written apart first and moved into place in the
        transaction that ends the job, which only the lease's holder (or anyone, for a job
        nobody holds) can end: else :class:`LeaseLostError`, and nothing is kept. On a full
        volume the files written so far are removed, the job is left as it was and
        :class:`StorageFullError` is raised: call again once there is space."""
        now = time.time() if now is None else now
        staging = self.job_dir(job_id) / f".result-{self.worker_id}"
        names = {"summary.json": json.dumps(summary).encode(), "result.dcm": seg}
        if sr is not None:
            names["sr.dcm"] = sr
        try:
            staging.mkdir(exist_ok=True)
            for name in ("summary.json", "sr.dcm", "result.dcm"):  # the SEG last: it says done
                if name in names:
                    write_durably(staging / name, names[name])
            with self.db.transaction() as db:
                ended = db.execute(
                    "UPDATE jobs SET state = 'done', reason = NULL, finished_at = ?, "
                    "lease_owner = NULL, lease_until = NULL, push_next_at = CASE WHEN "
                    f"push_state = 'pending' THEN ? END WHERE id = ? AND {ENDABLE}",
                    (now, now, job_id, self.worker_id, self.worker_id),
                ).rowcount
                if ended:  # moved while the row is held: no other worker can end it meanwhile
                    for name in ("summary.json", "sr.dcm", "result.dcm"):
                        if name in names:
                            (staging / name).rename(self.job_dir(job_id) / name)
                    fsync_dir(self.job_dir(job_id))
        except (OSError, sqlite3.OperationalError) as exc:
            if not disk_full(exc):
                raise
            raise StorageFullError(
                "the job store's volume is full: the result could not be stored"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not ended:
            raise LeaseLostError(f"job {job_id} is no longer this worker's: result discarded")
        self._drop_inputs(job_id)
        return self.get(job_id)

    def note(self, job_id: str, reason: str) -> None:
        """Record why a ``running`` job is not done yet (cleared when it is)."""
        with self.db.transaction() as db:
            db.execute(
                "UPDATE jobs SET reason = ? WHERE id = ? AND state = 'running' "
                "AND coalesce(lease_owner, ?) = ?",
                (reason, job_id, self.worker_id, self.worker_id),
            )

    def fail(self, job_id: str, reason: str, now: float | None = None) -> Job:
        """Mark the job ``failed`` with a reason a caller can act on (no patient data); a job
        that another worker holds (this one's lease expired) or that ended is left as it is."""
        with self.db.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, finished_at = ?, "
                "lease_owner = NULL, lease_until = NULL, "
                "push_state = CASE WHEN push_state = 'pending' THEN 'none' ELSE push_state END "
                f"WHERE id = ? AND {ENDABLE}",
                (reason, time.time() if now is None else now, job_id, self.worker_id,
                 self.worker_id),
            )  # fmt: skip
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
        return job_bounds.purge_finished(self.db, self.root, now - self.bounds.retention_s)

    def bytes_held(self) -> int:
        """Bytes of the store's files: the database, inputs and results."""
        return job_bounds.bytes_under(self.root)
