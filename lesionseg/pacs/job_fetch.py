"""Jobs by reference in the job store: the worker's fetch step and its bookkeeping.

A job submitted with a study/series reference (``JobStore.submit(reference=...)``) has no
inputs. Before it runs, :func:`fetch_job` lists the series (QIDO-RS) and retrieves it (WADO-RS)
into ``<job id>/.fetching/``; once every file is fsynced the directory becomes the job's
``input/`` (one rename), so a crash at any point leaves either no inputs (the fetch starts
again) or all of them. An archive that cannot be read now puts the job back in the queue with
the reason and a next try after an exponential back-off (the push's settings,
``push_initial_delay_s`` .. ``push_max_delay_s``); an archive without the series, a refusal or
a series over the limits fails the job with the reason.
"""

from __future__ import annotations

import logging
import shutil
import time

from lesionseg.pacs.durable_files import disk_full, fsync_dir
from lesionseg.pacs.job import Job, SeriesReference, backoff_delay
from lesionseg.pacs.job_store import JobStore
from lesionseg.pacs.wado import FetchError, WadoClient
from lesionseg.settings import Settings

log = logging.getLogger("lesionseg.pacs.job_store")

WAITING = "waiting for the archive"


def fetch_job(store: JobStore, client: WadoClient | None, job: Job, settings: Settings) -> Job:
    """Give the ``running`` job by reference ``job`` its inputs: fetch its series unless it
    has them. Returns the job as recorded after: ``running`` with its inputs, ``queued``
    waiting for the archive (``reason``, ``fetch_next_at``), or ``failed`` (``reason``).
    ``client`` None (no ``dicomweb_url``) fails the job. ``settings``: ``max_upload_bytes``
    and ``max_frames`` bound the series, the push's back-off paces the retries."""
    assert job.series is not None and job.study is not None, job
    if (store.job_dir(job.id) / "input").is_dir():
        return job  # fetched before a restart or a re-queue
    if client is None:
        return store.fail(
            job.id,
            f"job by reference (series {job.series}) but no archive is configured: set "
            "LESIONSEG_DICOMWEB_URL and submit it again",
        )
    try:
        n_files = _fetch(store, client, job, settings)
    except FetchError as exc:
        return _fetch_failed(store, job, exc, settings)
    log.info("job %s: fetched %d instance(s) of series %s", job.id, n_files, job.series)
    return _accept_fetched(store, job.id, n_files)


def _fetch(store: JobStore, client: WadoClient, job: Job, settings: Settings) -> int:
    """List and retrieve the series into the job's fetch directory; the number of files."""
    reference = SeriesReference(job.study, job.series)
    target = store.job_dir(job.id) / ".fetching"
    shutil.rmtree(target, ignore_errors=True)  # a fetch cut short by a crash
    try:
        target.mkdir()
        listed = client.list_instances(reference)
        if len(listed) > settings.max_frames:
            raise FetchError(
                f"series {job.series} has {len(listed)} instances, over the limit of "
                f"{settings.max_frames} frames (LESIONSEG_MAX_FRAMES): raise the limit, or "
                "upload a part of the series",
                retryable=False,
            )
        return len(client.retrieve(reference, target, max_bytes=settings.max_upload_bytes))
    except BaseException as exc:
        shutil.rmtree(target, ignore_errors=True)
        if disk_full(exc):
            raise FetchError(
                "the job store's volume is full: the series is fetched again once space is "
                "freed in LESIONSEG_JOBS_DIR",
                retryable=True,
            ) from exc
        raise


def _accept_fetched(store: JobStore, job_id: str, n_files: int) -> Job:
    """The series is in the fetch directory (files fsynced): make it the job's inputs, durably,
    and clear the reason it waited for."""
    store.job_dir(job_id).joinpath(".fetching").rename(store.job_dir(job_id) / "input")
    fsync_dir(store.job_dir(job_id))
    with store.db.transaction() as db:
        db.execute(
            "UPDATE jobs SET n_files = ?, reason = NULL, fetch_next_at = NULL WHERE id = ?",
            (n_files, job_id),
        )
    return store.get(job_id)


def _fetch_failed(store: JobStore, job: Job, exc: FetchError, settings: Settings) -> Job:
    """Fail the job, or put it back in the queue until the back-off's next try."""
    if not exc.retryable:
        log.info("job %s failed: %s", job.id, exc)
        return store.fail(job.id, str(exc))
    attempts = job.fetch_attempts + 1
    delay = backoff_delay(attempts, settings.push_initial_delay_s, settings.push_max_delay_s)
    delay = max(delay, exc.retry_after_s or 0.0)
    log.warning("job %s: %s (try %d); next try in %.1f s", job.id, exc, attempts, delay)
    return wait_for_archive(store, job.id, f"{WAITING}: {exc}", retry_in_s=delay)


def wait_for_archive(
    store: JobStore, job_id: str, reason: str, *, retry_in_s: float, now: float | None = None
) -> Job:
    """Put a ``running`` job back in the queue with ``reason``; ``JobStore.claim_next`` skips
    it for ``retry_in_s`` seconds (``fetch_next_at``)."""
    now = time.time() if now is None else now
    with store.db.transaction() as db:
        db.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL, reason = ?, "
            "fetch_attempts = fetch_attempts + 1, fetch_next_at = ?, lease_owner = NULL, "
            "lease_until = NULL, runs = CASE WHEN runs > 0 THEN runs - 1 ELSE 0 END "
            "WHERE id = ? AND state = 'running' AND coalesce(lease_owner, ?) = ?",
            (reason, now + retry_in_s, job_id, store.worker_id, store.worker_id),
        )
    return store.get(job_id)


def next_fetch_at(store: JobStore) -> float | None:
    """When the earliest queued job waiting for the archive may be tried (None: none waits)."""
    with store.db.transaction() as db:
        (value,) = db.execute(
            "SELECT MIN(fetch_next_at) FROM jobs WHERE state = 'queued'"
        ).fetchone()
    return value
