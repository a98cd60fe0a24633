"""What the deployment check says about resource bounds: the bytes of uploads in flight
(service/inflight.py), the job queue and the jobs' retention (lesionseg/pacs/job_bounds.py).

The manifests' volume sizes are derived from the same numbers (docs/deployment.md, "Sizes of
the volumes"; tests/test_bounds_manifests.py checks that they agree).
"""

from __future__ import annotations

from pydantic import ByteSize

from lesionseg.settings import Settings
from service.findings import Finding
from service.limits import FORM_OVERHEAD_BYTES, max_request_bytes

TOPIC = "resources"

# The assumptions of the volume sizes (docs/deployment.md, "Sizes of the volumes"):
# a job's results, at most: a DICOM SEG whose segments cover every pixel of the largest series
# (LESIONSEG_MAX_TOTAL_PIXELS, 100 M) once at 1 bit is 12 MiB, plus the SR and the summary;
RESULT_BYTES = 16 * 2**20
# the jobs finished per day, whose results are kept over the retention: set it to your load;
JOBS_PER_DAY = 200
# room for the rest of a volume: the job database, BentoML's Prometheus files, logs.
HEADROOM_BYTES = 2**30


def _size(n: int) -> str:
    return ByteSize(n).human_readable(decimal=False)


def _inflight(settings: Settings) -> Finding:
    bound, largest = int(settings.max_inflight_bytes), max_request_bytes(settings)
    if bound < largest:
        return Finding(
            "unsafe",
            TOPIC,
            f"LESIONSEG_MAX_INFLIGHT_BYTES={_size(bound)} is less than the largest request "
            f"body, LESIONSEG_MAX_UPLOAD_BYTES={_size(int(settings.max_upload_bytes))} + "
            f"{_size(FORM_OVERHEAD_BYTES)} of form fields: an upload of the allowed size is "
            f"always refused (413); raise it to at least {_size(largest)} or lower the upload "
            "limit",
        )
    return Finding(
        "ok",
        TOPIC,
        f"uploads in flight: at most {_size(bound)} per API process "
        f"(LESIONSEG_MAX_INFLIGHT_BYTES), {bound // largest} of the largest size at once "
        f"(LESIONSEG_MAX_UPLOAD_BYTES={_size(int(settings.max_upload_bytes))}); more gets 503 "
        f"with Retry-After; the API pod's temporary volume needs "
        f"{_size(volume_sizes(settings)['api'])} (docs/deployment.md)",
    )


def _queue(settings: Settings) -> Finding:
    inputs = settings.max_queued_jobs * int(settings.max_upload_bytes)
    text = (
        f"job queue: at most {settings.max_queued_jobs} jobs queued or running "
        f"(LESIONSEG_MAX_QUEUED_JOBS), their inputs up to {_size(inputs)}; the job volume "
        f"needs {_size(volume_sizes(settings)['jobs'])} at {JOBS_PER_DAY} jobs a day"
    )
    keys = settings.api_keys is not None or settings.api_keys_file is not None
    if settings.max_requests_per_key is not None:
        return Finding("ok", TOPIC, f"{text}; {settings.max_requests_per_key} of them per API key")
    if keys:
        return Finding(
            "warn",
            TOPIC,
            f"{text}; one API key may fill the whole queue: set LESIONSEG_MAX_REQUESTS_PER_KEY "
            "to bound each key's share",
        )
    return Finding("ok", TOPIC, text)


def _retention(settings: Settings) -> Finding:
    hours = settings.job_retention_hours
    if settings.keep_job_inputs:
        return Finding(
            "warn",
            TOPIC,
            f"job inputs (patient data) are kept until the jobs expire, {hours:g} h after they "
            "end (LESIONSEG_KEEP_JOB_INPUTS=true); unset it to delete them once the result is "
            "written",
        )
    return Finding(
        "ok",
        TOPIC,
        f"finished jobs are deleted {hours:g} h after they end (LESIONSEG_JOB_RETENTION_HOURS); "
        "their inputs as soon as the result is written",
    )


def volume_sizes(settings: Settings) -> dict[str, int]:
    """Bytes each pod's volume needs for the bounds of ``settings``:

    - ``api``, the API pod's emptyDir (``TMPDIR``): twice the uploads in flight (the multipart
      parser's spooled file and BentoML's copy of it, service/inflight.py) + headroom;
    - ``jobs``, the jobs pod's claim: the inputs of the queue (``max_queued_jobs`` x
      ``max_upload_bytes``), its own uploads in flight twice (spooled, then copied into the
      store) and the results of :data:`JOBS_PER_DAY` over the retention + headroom.
    """
    inflight = 2 * int(settings.max_inflight_bytes)
    queue = settings.max_queued_jobs * int(settings.max_upload_bytes)
    results = round(JOBS_PER_DAY * settings.job_retention_hours / 24) * RESULT_BYTES
    return {
        "api": inflight + HEADROOM_BYTES,
        "jobs": queue + inflight + results + HEADROOM_BYTES,
    }


def findings(settings: Settings, host: str | None = None) -> list[Finding]:
    """What is bounded and by how much: bytes in flight, the job queue, the jobs' retention.
    ``unsafe`` where the bounds contradict each other. ``host`` (where the service binds) does
    not change them."""
    return [_inflight(settings), _queue(settings), _retention(settings)]
