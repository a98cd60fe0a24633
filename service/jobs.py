"""Asynchronous study jobs: the ``/jobs`` HTTP routes, and the job worker and pusher in the
service's event loop (service/job_worker.py) unless ``LESIONSEG_JOBS_WORKER=false`` (workers run
apart: ``python -m service.worker``).

A small Starlette app that ``service.app`` mounts on ``LesionSeg``; its lifespan opens the
persistent ``JobStore`` (sqlite in ``LESIONSEG_JOBS_DIR``, or PostgreSQL at
``LESIONSEG_JOBS_DATABASE_URL``: while that is unreachable /jobs answers 503 and the store is
opened again every STORE_RETRY_S) and starts the worker. The store keeps to ``JobBounds``
(lesionseg/pacs/job_bounds.py): a POST beyond ``LESIONSEG_MAX_QUEUED_JOBS`` jobs queued or
running gets 503, beyond one API key's share (``LESIONSEG_MAX_REQUESTS_PER_KEY`` of them) 429,
both with Retry-After; the upload is read first, so that a retried submission (same transaction
id) still gets its 409 and job id. A queued job's status says its place in the queue and the
expected wait. Nothing here knows about tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from lesionseg.errors import (
    DuplicateJobError,
    InputError,
    JobNotFoundError,
    JobStoreError,
    StorageFullError,
)
from lesionseg.io.images import check_upload_size
from lesionseg.pacs.destinations import Destinations
from lesionseg.pacs.job import Job, SeriesReference
from lesionseg.pacs.job_bounds import JobQueueFullError
from lesionseg.pacs.job_db import check_database
from lesionseg.pacs.job_db_postgres import safe_url
from lesionseg.pacs.job_store import JobStore
from lesionseg.pacs.wado import WadoClient
from lesionseg.settings import Settings
from service.auth import key_id
from service.findings import Finding
from service.forms import check_transaction_id, check_window
from service.job_requests import flag, job_options, read_job_form, reference, text
from service.job_worker import JobWorker
from service.metrics import JOBS_REFUSED

log = logging.getLogger("lesionseg.pacs.job_store")

STORE_RETRY_S = 5.0  # an unreachable job database is tried again this often
MAX_FILES = 5000
# A full queue frees a place when a job ends: minutes for a series on CPU.
QUEUE_FULL_RETRY_S = 60


def findings(settings: Settings, host: str | None) -> list[Finding]:
    """Where jobs are kept and who runs them (the doctor's "jobs" topic): a process that runs
    none with the sqlite store needs exactly one worker beside it (a warning, as nothing here
    can see whether it runs)."""
    url = settings.jobs_database_url
    if url is not None:
        where = f"job table in PostgreSQL {safe_url(url.get_secret_value())}"
        runs = "this process and any worker" if settings.jobs_worker else "worker processes"
        return [Finding("ok", "jobs", f"{where}; files in {settings.jobs_dir}; run by {runs}")]
    where = f"job table in sqlite under {settings.jobs_dir}"
    if settings.jobs_worker:
        return [Finding("ok", "jobs", f"{where}; run by this process")]
    return [
        Finding(
            "warn",
            "jobs",
            f"{where}; LESIONSEG_JOBS_WORKER=false: this process runs none, so one "
            "`python -m service.worker` (make worker) must run beside it on the same "
            "LESIONSEG_JOBS_DIR (more than one takes LESIONSEG_JOBS_DATABASE_URL)",
        )
    ]


def _error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _unavailable(exc: JobStoreError) -> JSONResponse:
    """503 for a job store that is starting or whose database went away: retry shortly."""
    log.warning("job store unavailable: %s", exc)
    return _error(503, f"{exc}; retry shortly", {"Retry-After": str(int(STORE_RETRY_S))})


class Jobs:
    """The job API and its background tasks. ``get_service()`` returns the running service:
    an object with ``async segment_to_reports(files, *, window, **options) -> (seg_bytes,
    summary, sr_bytes | None)`` and ``__is_ready__() -> bool``."""

    def __init__(self, settings: Settings, get_service: Callable[[], Any]) -> None:
        self.settings = settings
        # A corrupt or locked sqlite database stops `bentoml serve` here, before any worker
        # starts, with the file and what to do (lesionseg.pacs.job_db.check_database).
        if settings.jobs_database_url is None:
            check_database(settings.jobs_dir)
        self._get_service = get_service
        self.destinations = Destinations.from_settings(settings)  # STOW-RS and C-STORE
        self.wado = WadoClient.from_settings(settings)
        self.store: JobStore | None = None
        self.worker: JobWorker | None = None
        self._opening: asyncio.Task | None = None
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
        """Open the store, recover it and start the worker and the pusher when this process
        runs jobs. A database that cannot be reached now is tried again in the background
        every STORE_RETRY_S (/jobs answers 503 meanwhile)."""
        try:
            await self._open()
        except JobStoreError as exc:
            log.error("%s; retrying every %.0f s", exc, STORE_RETRY_S)
            self._opening = asyncio.create_task(self._open_retrying(), name="job-store-open")

    async def _open_retrying(self) -> None:
        while True:
            await asyncio.sleep(STORE_RETRY_S)
            try:
                return await self._open()
            except JobStoreError as exc:
                log.warning("%s; retrying in %.0f s", exc, STORE_RETRY_S)

    async def _open(self) -> None:
        store = await asyncio.to_thread(JobStore.from_settings, self.settings)
        if self.settings.jobs_worker:
            requeued = await asyncio.to_thread(store.recover)
            if requeued:
                log.info("re-queued %d job(s) interrupted by the last shutdown", requeued)
            self.worker = JobWorker(
                self.settings, store, self._get_service, self.destinations, self.wado
            )
            self.worker.start()
        log.info("job store: %s (%s)", store.db.describe(), store.root)
        self.store = store

    @property
    def started(self) -> bool:
        """True once :meth:`start` has opened (and, with a worker, recovered) the store."""
        return self.store is not None

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop opening the store and stop the worker (a job under way may finish within
        ``grace_s`` seconds: :meth:`JobWorker.stop`)."""
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
        if self.worker is not None:
            await self.worker.stop(grace_s=grace_s)
            self.worker = None

    # --- HTTP --------------------------------------------------------------------------------

    def _status(self, job: Job) -> dict:
        """The JSON status of ``job`` (reads the store: call it in a thread)."""
        body = {**job.to_dict(), "location": f"/jobs/{job.id}"}
        if job.state == "queued" and job.fetch_next_at is not None and job.reason:
            wait = max(0, math.ceil(job.fetch_next_at - time.time()))
            body["reason"] = f"{job.reason}, next try in {wait} s"
        if job.state == "queued":
            position, wait_s = self.store.queue_position(job)
            body["queue_position"] = position
            body["expected_wait_s"] = None if wait_s is None else math.ceil(wait_s)
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
            if push and self.destinations is None:
                raise InputError(
                    "push requested but nowhere to push to: set LESIONSEG_DICOMWEB_URL or "
                    "LESIONSEG_DICOM_DESTINATIONS"
                )
            job = await asyncio.to_thread(
                self.store.submit,
                [u.file for u in uploads],
                transaction_id=check_transaction_id(text(form, "transaction_id")),
                window=check_window(text(form, "window"), self.settings),
                push=self.destinations is not None if push is None else push,
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
        except JobStoreError as exc:  # the database went away: nothing was recorded
            return _unavailable(exc)
        except StorageFullError as exc:  # nothing kept, so never a 202 for a lost job
            log.error("job refused (507): %s (%s)", exc, exc.__cause__)
            return _error(507, str(exc))
        except InputError as exc:
            return _error(400, str(exc))
        finally:
            await form.close()
        if self.worker is not None:
            self.worker.wake()
        return JSONResponse(
            await asyncio.to_thread(self._status, job),
            status_code=202,
            headers={"Location": f"/jobs/{job.id}"},
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
        if self.store is None:
            raise JobStoreError("the job store is starting (or its database is unreachable)")
        job_id, owner = request.path_params["job_id"], key_id(request.scope)
        return await asyncio.to_thread(self.store.get, job_id, owner=owner)

    async def status(self, request: Request) -> Response:
        """GET /jobs/{id}: state, failure reason, push state, timestamps (404 if unknown)."""
        try:
            job = await self._job(request)
            return JSONResponse(await asyncio.to_thread(self._status, job))
        except JobNotFoundError as exc:
            return _error(404, str(exc.args[0]))
        except JobStoreError as exc:
            return _unavailable(exc)

    async def result(self, request: Request) -> Response:
        """GET /jobs/{id}/result: the SEG (application/dicom) once done; /jobs/{id}/sr: the
        SR, when the job asked for one; 409 before or on failure (with the state and reason),
        404 if the job (or its SR) is unknown."""
        try:
            job = await self._job(request)
        except JobNotFoundError as exc:
            return _error(404, str(exc.args[0]))
        except JobStoreError as exc:
            return _unavailable(exc)
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
