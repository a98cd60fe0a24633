"""The job worker and the pusher: the background tasks that run queued jobs and send their
results, in the service's event loop (``service.jobs``, unless ``LESIONSEG_JOBS_WORKER=false``)
or in a worker process of its own (``python -m service.worker``).

- the worker claims the oldest job it may run (lesionseg/pacs/job_leases.py), renews its lease
  every third of ``LESIONSEG_JOB_LEASE_S`` while the job runs, runs it through
  ``service.segment_to_reports`` (once the service is ready) and stores the SEG (and the SR
  when asked) or the reason the job failed; a job by reference first fetches its series from
  ``LESIONSEG_DICOMWEB_URL`` (QIDO-RS + WADO-RS, ``lesionseg.pacs.job_fetch``), waiting with
  back-off while the archive is down; a job whose lease it lost (it stalled past the lease and
  another worker took the job over) is abandoned, its result discarded; every
  PURGE_INTERVAL_S it deletes the jobs past ``LESIONSEG_JOB_RETENTION_HOURS``;
- the pusher sends finished results to their destinations (STOW-RS to
  ``LESIONSEG_DICOMWEB_URL``, C-STORE to ``LESIONSEG_DICOM_DESTINATIONS``), retrying with
  exponential back-off while one is down (``lesionseg.pacs.dicomweb.push_due``).

Everything a job needs is in the persistent ``JobStore``, so both pick up where they were after
a restart, in this process or in another one. Nothing here knows about tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from lesionseg.errors import InputError, StorageFullError
from lesionseg.pacs.dicomweb import push_due
from lesionseg.pacs.job import Job
from lesionseg.pacs.job_fetch import fetch_job, next_fetch_at
from lesionseg.pacs.job_leases import LeaseLostError
from lesionseg.pacs.job_store import JobStore
from lesionseg.pacs.wado import WadoClient
from lesionseg.settings import Settings
from service.metrics import JOB_STORE_BYTES, JOBS_PURGED, JOBS_WAITING
from service.retry import RunnerConnectionError

log = logging.getLogger("lesionseg.pacs.job_store")

IDLE_POLL_S = 5.0  # also notices jobs and pushes written by another process
DISK_FULL_RETRY_S = 10.0  # a result that found the volume full is retried this often
PURGE_INTERVAL_S = 60.0  # expired jobs are gone within this of their expiry
COUNT_INTERVAL_S = 10.0  # the queue's depth (lesionseg_jobs_waiting) is counted this often


class JobWorker:
    """Runs the jobs of ``store`` and pushes their results to ``destinations`` (an object with
    ``store(instances)`` and ``url``, or None: no push). ``get_service()`` returns the service
    that segments: an object with ``async segment_to_reports(files, *, window, **options) ->
    (seg_bytes, summary, sr_bytes | None)`` and ``__is_ready__() -> bool``."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        get_service: Callable[[], Any],
        destinations: Any | None,
        wado: WadoClient | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._get_service = get_service
        self.destinations = destinations
        self.wado = wado
        self._tasks: list[asyncio.Task] = []
        self._work_wake = asyncio.Event()
        self._push_wake = asyncio.Event()
        self._purged_at = float("-inf")  # monotonic s of the last purge
        self._counted_at = float("-inf")  # monotonic s of the last count of the queue
        self.running: Job | None = None  # the job it runs now
        self._stopping = False

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self._work_once, self._work_wake), name="job-worker"),
            asyncio.create_task(self._loop(self._push_once, self._push_wake), name="job-pusher"),
        ]

    def wake(self) -> None:
        """A job was submitted: look for it now rather than at the next poll."""
        self._work_wake.set()

    async def stop(self, grace_s: float = 0.0) -> None:
        """Claim no more jobs; let the job under way finish within ``grace_s`` seconds, then
        stop both tasks. A job cut short goes back to the queue at once (not after its
        lease), so that another worker, or this one after a restart, runs it."""
        self._stopping = True
        if self.running is not None and grace_s > 0 and self._tasks:
            log.info("stopping: job %s may finish within %.0f s", self.running.id, grace_s)
            deadline = asyncio.get_running_loop().time() + grace_s
            while self.running is not None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
        running = self.running
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if running is not None:
            try:
                await asyncio.to_thread(self.store.requeue, running.id)
                log.info("job %s cut short by the shutdown: back in the queue", running.id)
            except Exception as exc:  # its lease expires by itself then
                log.warning("job %s not re-queued (%s): its lease expires", running.id, exc)

    async def _loop(self, step: Callable, wake: asyncio.Event) -> None:
        """Run ``step`` until cancelled; it returns how long to sleep (a wake cuts it short)."""
        while True:
            wake.clear()  # a wake-up during the step below cuts the next sleep
            try:
                delay = await step()
            except Exception:  # a background task has no caller: log and keep serving
                log.exception("%s failed; retrying in %.0f s", step.__name__, IDLE_POLL_S)
                delay = IDLE_POLL_S
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)

    async def _work_once(self) -> float:
        if time.monotonic() - self._purged_at >= PURGE_INTERVAL_S:
            await self._purge()
        if time.monotonic() - self._counted_at >= COUNT_INTERVAL_S:
            self._counted_at = time.monotonic()
            JOBS_WAITING.set(await asyncio.to_thread(self.store.waiting))
        service = self._get_service()
        if self._stopping or not service.__is_ready__():
            return 1.0
        job = await asyncio.to_thread(self.store.claim_next)
        if job is None:  # sleep until a job waiting for the archive is due, at the latest
            due = await asyncio.to_thread(next_fetch_at, self.store)
            return IDLE_POLL_S if due is None else min(IDLE_POLL_S, max(0.05, due - time.time()))
        self.running = job
        run = asyncio.create_task(self._run(service, job), name=f"job-{job.id}")
        try:
            await self._hold(job, run)
        except asyncio.CancelledError:  # stop(): the job's task goes with this one
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            raise
        finally:
            self.running = None
        return 0.0

    async def _hold(self, job: Job, run: asyncio.Task) -> None:
        """Renew the lease on ``job`` while ``run`` runs; cancel ``run`` if the lease is lost."""
        interval = self.store.lease_s / 3
        while not run.done():
            await asyncio.wait({run}, timeout=interval)
            if run.done():
                break
            try:
                held = await asyncio.to_thread(self.store.renew, job.id)
            except Exception as exc:  # the database is away: the lease runs on meanwhile
                log.warning("job %s: the lease could not be renewed: %s", job.id, exc)
                continue
            if not held:
                log.error("job %s: lease lost (another worker runs it now); abandoned", job.id)
                run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run

    async def _purge(self) -> None:
        """Delete the jobs past the retention; publish the bytes the store holds."""
        self._purged_at = time.monotonic()
        purged = await asyncio.to_thread(self.store.purge_expired)
        if purged:
            JOBS_PURGED.inc(len(purged))
            hours = self.settings.job_retention_hours
            log.info("deleted %d job(s) past the retention of %g h", len(purged), hours)
        JOB_STORE_BYTES.set(await asyncio.to_thread(self.store.bytes_held))

    async def _run(self, service: Any, job: Job) -> None:
        from bentoml.exceptions import ServiceUnavailable

        started = time.monotonic()
        try:
            if job.series is not None:  # by reference: its inputs come from the archive
                args = (self.store, self.wado, job, self.settings)
                if (job := await asyncio.to_thread(fetch_job, *args)).state != "running":
                    return  # waits for the archive, or failed: fetch_job logged why
            files = self.store.inputs(job.id)
            options = await asyncio.to_thread(self.store.options, job.id)
            seg, summary, sr = await service.segment_to_reports(files, window=job.window, **options)
        except InputError as exc:  # the caller's data: say why (messages carry no identifiers)
            await asyncio.to_thread(self.store.fail, job.id, str(exc))
            log.info("job %s failed: %s", job.id, exc)
        except (ServiceUnavailable, RunnerConnectionError) as exc:
            # Overloaded, or the model runner restarting: try again later, nothing lost.
            log.warning("job %s re-queued: %s", job.id, exc)
            await asyncio.to_thread(self.store.requeue, job.id)
            await asyncio.sleep(IDLE_POLL_S)
        except Exception:
            log.exception("job %s failed with an internal error", job.id)
            reason = "internal error while segmenting (see the service log)"
            await asyncio.to_thread(self.store.fail, job.id, reason)
        else:
            try:
                await self._complete(job, seg, summary, sr)
            except LeaseLostError as exc:
                log.error("job %s: %s", job.id, exc)
                return
            log.info("job %s done in %.1f s", job.id, time.monotonic() - started)
            self._push_wake.set()

    async def _complete(self, job: Job, seg: bytes, summary: dict, sr: bytes | None) -> None:
        """Store the result. While the volume is full the result waits in memory and is stored
        again every DISK_FULL_RETRY_S; the job stays ``running`` with the reason (a restart
        meanwhile re-runs it), so it is never lost and no other job overtakes the space."""
        while True:
            try:
                await asyncio.to_thread(self.store.complete, job.id, seg, summary, sr=sr)
                return
            except StorageFullError as exc:
                reason = f"{exc}; retried every {DISK_FULL_RETRY_S:.0f} s until space is freed"
                log.error("job %s: %s (%s)", job.id, reason, exc.__cause__)
                try:
                    await asyncio.to_thread(self.store.note, job.id, reason)
                except sqlite3.OperationalError as note_exc:  # full too: the log says it
                    log.warning("job %s: the reason could not be recorded: %s", job.id, note_exc)
            await asyncio.sleep(DISK_FULL_RETRY_S)

    async def _push_once(self) -> float:
        if self.destinations is not None:
            await asyncio.to_thread(push_due, self.store, self.destinations, self.settings)
        due = await asyncio.to_thread(self.store.next_push_at)
        if due is None or self.destinations is None:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, max(0.05, due - time.time()))
