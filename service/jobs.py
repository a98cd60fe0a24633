"""Asynchronous study jobs: the ``/jobs`` HTTP routes, the worker and the DICOMweb pusher.

A small Starlette app that ``service.app`` mounts on ``LesionSeg``; its lifespan starts two
background tasks in the service's event loop:

- the worker runs queued jobs one at a time through ``service.segment_to_reports`` (once the
  service is ready) and stores the SEG (and the SR when asked), or the reason the job failed;
  a job by reference (``{"study": UID, "series": UID}``) first fetches its series from
  ``LESIONSEG_DICOMWEB_URL`` (QIDO-RS + WADO-RS, ``lesionseg.pacs.job_fetch``), waiting with
  back-off while the archive is down;
  every PURGE_INTERVAL_S it deletes the jobs past ``LESIONSEG_JOB_RETENTION_HOURS``;
- the pusher sends finished SEGs to ``LESIONSEG_DICOMWEB_URL`` with STOW-RS, retrying with
  exponential back-off while the server is down (``lesionseg.pacs.dicomweb.push_due``).

Everything a job needs is in the persistent ``JobStore``, so both pick up where they were after
a restart. The store keeps to ``JobBounds`` (lesionseg/pacs/job_bounds.py): a POST beyond
``LESIONSEG_MAX_QUEUED_JOBS`` jobs queued or running gets 503, beyond one API key's share
(``LESIONSEG_MAX_REQUESTS_PER_KEY`` of them) 429, both with Retry-After; the upload is read
first, so that a retried submission (same transaction id) still gets its 409 and job id.
Nothing here knows about tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from lesionseg.errors import DuplicateJobError, InputError, JobNotFoundError, StorageFullError
from lesionseg.io.images import check_upload_size
from lesionseg.pacs.dicomweb import StowClient, push_due
from lesionseg.pacs.job import Job, SeriesReference
from lesionseg.pacs.job_bounds import JobBounds, JobQueueFullError
from lesionseg.pacs.job_db import check_database
from lesionseg.pacs.job_fetch import fetch_job, next_fetch_at
from lesionseg.pacs.job_store import JobStore
from lesionseg.pacs.wado import WadoClient
from lesionseg.settings import Settings
from service.auth import key_id
from service.forms import check_transaction_id, check_window
from service.job_requests import flag, job_options, read_job_form, reference, text
from service.metrics import JOB_STORE_BYTES, JOBS_PURGED, JOBS_REFUSED
from service.retry import RunnerConnectionError

log = logging.getLogger("lesionseg.pacs.job_store")

IDLE_POLL_S = 5.0  # also notices jobs and pushes written by another process
DISK_FULL_RETRY_S = 10.0  # a result that found the volume full is retried this often
MAX_FILES = 5000
PURGE_INTERVAL_S = 60.0  # expired jobs are gone within this of their expiry
# A full queue frees a place when a job ends: minutes for a series on CPU.
QUEUE_FULL_RETRY_S = 60


def _error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class Jobs:
    """The job API and its background tasks. ``get_service()`` returns the running service:
    an object with ``async segment_to_reports(files, *, window, **options) -> (seg_bytes,
    summary, sr_bytes | None)`` and ``__is_ready__() -> bool``."""

    def __init__(self, settings: Settings, get_service: Callable[[], Any]) -> None:
        self.settings = settings
        # A corrupt or locked database stops `bentoml serve` here, before any worker starts,
        # with the file and what to do (lesionseg.pacs.job_store.check_database).
        check_database(settings.jobs_dir)
        self._get_service = get_service
        self.stow = StowClient.from_settings(settings)
        self.wado = WadoClient.from_settings(settings)
        self.store: JobStore | None = None
        self._tasks: list[asyncio.Task] = []
        self._work_wake: asyncio.Event | None = None
        self._push_wake: asyncio.Event | None = None
        self._purged_at = float("-inf")  # monotonic s of the last purge
        self.app = Starlette(
            routes=[
                Route("/jobs", self.submit, methods=["POST"]),
                Route("/jobs/{job_id}", self.status, methods=["GET"]),
                Route("/jobs/{job_id}/result", self.result, methods=["GET"]),
                Route("/jobs/{job_id}/sr", self.result, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette):
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        bounds = JobBounds.from_settings(self.settings)
        self.store = await asyncio.to_thread(JobStore, self.settings.jobs_dir, bounds)
        requeued = await asyncio.to_thread(self.store.recover)
        if requeued:
            log.info("re-queued %d job(s) interrupted by the last shutdown", requeued)
        self._work_wake, self._push_wake = asyncio.Event(), asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._loop(self._work_once, self._work_wake), name="job-worker"),
            asyncio.create_task(self._loop(self._push_once, self._push_wake), name="job-pusher"),
        ]

    @property
    def started(self) -> bool:
        """True once :meth:`start` has opened and recovered the store and runs the loops."""
        return self._work_wake is not None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

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
        service = self._get_service()
        if not service.__is_ready__():
            return 1.0
        job = await asyncio.to_thread(self.store.claim_next)
        if job is None:  # sleep until a job waiting for the archive is due, at the latest
            due = await asyncio.to_thread(next_fetch_at, self.store)
            return IDLE_POLL_S if due is None else min(IDLE_POLL_S, max(0.05, due - time.time()))
        await self._run(service, job)
        return 0.0

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
            await self._complete(job, seg, summary, sr)
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
        if self.stow is not None:
            await asyncio.to_thread(push_due, self.store, self.stow, self.settings)
        due = await asyncio.to_thread(self.store.next_push_at)
        if due is None or self.stow is None:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, max(0.05, due - time.time()))

    # --- HTTP --------------------------------------------------------------------------------

    def _status(self, job: Job) -> dict:
        body = {**job.to_dict(), "location": f"/jobs/{job.id}"}
        if job.state == "queued" and job.fetch_next_at is not None and job.reason:
            wait = max(0, math.ceil(job.fetch_next_at - time.time()))
            body["reason"] = f"{job.reason}, next try in {wait} s"
        if job.state == "done":
            body["result"] = f"/jobs/{job.id}/result"
            if self.store.sr_path(job.id).exists():
                body["sr"] = f"/jobs/{job.id}/sr"
            body["summary"] = self.store.summary(job.id)
        return body

    async def submit(self, request: Request) -> Response:
        """POST /jobs: ``files`` (multipart: one or more DICOM files of one study or series) or
        ``study`` and ``series`` (UIDs of a series in the archive; form fields or a JSON
        object), optional ``transaction_id``, ``window``, ``push``, ``boxes``, ``propagate``,
        ``sr``. 202 + Location once stored."""
        if self.store is None:
            return _error(503, "the job store is starting; retry shortly", {"Retry-After": "2"})
        try:
            form = await read_job_form(request, max_files=MAX_FILES)
        except InputError as exc:
            return _error(400, str(exc))
        try:
            uploads = [v for k, v in form.multi_items() if k == "files"]
            if not all(isinstance(u, UploadFile) for u in uploads):
                raise InputError("'files' must be file uploads (multipart/form-data)")
            check_upload_size(sum(u.size or 0 for u in uploads), self.settings.max_upload_bytes)
            if any(not u.size for u in uploads):
                raise InputError("an uploaded file is empty")
            series = self._reference(form, uploads)
            push = flag(text(form, "push"), "push")
            if push and self.stow is None:
                raise InputError("push requested but no DICOMweb server is configured "
                                 "(LESIONSEG_DICOMWEB_URL)")  # fmt: skip
            job = await asyncio.to_thread(
                self.store.submit,
                [u.file for u in uploads],
                transaction_id=check_transaction_id(text(form, "transaction_id")),
                window=check_window(text(form, "window"), self.settings),
                push=self.stow is not None if push is None else push,
                options=job_options(form),
                owner=key_id(request.scope),
                reference=series,
            )
        except DuplicateJobError as exc:
            return _error(409, str(exc), job_id=exc.job_id, location=f"/jobs/{exc.job_id}")
        except JobQueueFullError as exc:  # nothing kept; the jobs accepted stay queued
            status = 429 if exc.per_owner else 503
            JOBS_REFUSED.labels(str(status)).inc()
            log.warning("job refused (%d): %s", status, exc)
            return _error(status, str(exc), {"Retry-After": str(QUEUE_FULL_RETRY_S)})
        except StorageFullError as exc:  # nothing kept, so never a 202 for a lost job
            log.error("job refused (507): %s (%s)", exc, exc.__cause__)
            return _error(507, str(exc))
        except InputError as exc:
            return _error(400, str(exc))
        finally:
            await form.close()
        self._work_wake.set()
        return JSONResponse(
            self._status(job), status_code=202, headers={"Location": f"/jobs/{job.id}"}
        )

    def _reference(self, form, uploads: list) -> SeriesReference | None:
        """The request's study/series reference, if any: not with files, and only with an
        archive to fetch it from."""
        series = reference(form)
        if series is not None and uploads:
            raise InputError("send either files or a study/series reference, not both")
        if series is not None and self.wado is None:
            raise InputError(
                "a job by reference fetches its series from LESIONSEG_DICOMWEB_URL, which is "
                "not set: set it to the archive's DICOMweb root (e.g. "
                "http://pacs:8042/dicom-web), or upload the files"
            )
        return series

    async def _job(self, request: Request) -> Job:
        """The job of the request's path; another API key's job is not found (404)."""
        job_id, owner = request.path_params["job_id"], key_id(request.scope)
        return await asyncio.to_thread(self.store.get, job_id, owner=owner)

    async def status(self, request: Request) -> Response:
        """GET /jobs/{id}: state, failure reason, push state, timestamps (404 if unknown)."""
        try:
            return JSONResponse(self._status(await self._job(request)))
        except JobNotFoundError as exc:
            return _error(404, str(exc.args[0]))

    async def result(self, request: Request) -> Response:
        """GET /jobs/{id}/result: the SEG (application/dicom) once done; /jobs/{id}/sr: the
        SR, when the job asked for one; 409 before or on failure (with the state and reason),
        404 if the job (or its SR) is unknown."""
        try:
            job = await self._job(request)
        except JobNotFoundError as exc:
            return _error(404, str(exc.args[0]))
        if job.state != "done":
            return _error(
                409,
                f"job {job.id} is {job.state}"
                + (f": {job.reason}" if job.reason else "")
                + ("" if job.state == "failed" else f"; poll /jobs/{job.id} until it is done"),
                headers=None if job.state == "failed" else {"Retry-After": "5"},
                state=job.state,
            )
        sr = request.url.path.endswith("/sr")
        path = self.store.sr_path(job.id) if sr else self.store.result_path(job.id)
        if not path.exists():
            if not self.store.job_dir(job.id).exists():  # purged since it was read
                return _error(404, f"no job {job.id!r}")
            return _error(404, f"job {job.id} has no SR: submit it with sr=true")
        return FileResponse(
            path, media_type="application/dicom", filename=f"{job.id}-{'sr' if sr else 'seg'}.dcm"
        )
