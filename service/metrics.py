"""Per-stage latency histograms, the per-image cache, admission control and the bounded
resources (bytes in flight, the job queue and store), exported at /metrics beside BentoML's own."""

from __future__ import annotations

from contextlib import AbstractContextManager

from prometheus_client import Counter, Gauge, Histogram

from lesionseg.pipeline.timing import timed as library_timed

STAGE_SECONDS = Histogram(
    "lesionseg_stage_duration_seconds",
    "Wall time of one pipeline stage for one request",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# kind: "embedding" (SAM encoder) or "detections" (detector); per API worker, summed.
CACHE_HITS = Counter(
    "lesionseg_embedding_cache_hits", "Per-image cache lookups that skipped a model", ["kind"]
)
CACHE_MISSES = Counter(
    "lesionseg_embedding_cache_misses", "Per-image cache lookups that ran the model", ["kind"]
)
CACHE_BYTES = Gauge(
    "lesionseg_embedding_cache_bytes",
    "Bytes held by the per-image cache",
    multiprocess_mode="livesum",
)
CACHE_ENTRIES = Gauge(
    "lesionseg_embedding_cache_entries",
    "Entries in the per-image cache",
    multiprocess_mode="livesum",
)
ADMISSION_REJECTED = Counter(
    "lesionseg_admission_rejected",
    "Requests answered 503 at once: expected queue wait over LESIONSEG_MAX_QUEUE_WAIT_S",
)
# Bounded resources (service/inflight.py, service/jobs.py).
INFLIGHT_BYTES = Gauge(
    "lesionseg_inflight_bytes",
    "Request-body bytes reserved by the requests in flight (LESIONSEG_MAX_INFLIGHT_BYTES)",
    multiprocess_mode="livesum",
)
INFLIGHT_REJECTED = Counter(
    "lesionseg_inflight_rejected",
    "Requests refused before their body was read: over LESIONSEG_MAX_INFLIGHT_BYTES",
    ["status"],  # 503: the bound is full now; 413: larger than the bound itself
)
JOBS_REFUSED = Counter(
    "lesionseg_jobs_refused",
    "POST /jobs refused: the queue full (503) or the API key's share of it (429)",
    ["status"],
)
JOB_STORE_BYTES = Gauge(
    "lesionseg_job_store_bytes",
    "Bytes held by the job store: database, inputs and results",
    multiprocess_mode="livemax",
)
JOBS_WAITING = Gauge(
    "lesionseg_jobs_waiting",
    "Jobs queued or running in the job store (all workers): the queue depth workers scale on",
    multiprocess_mode="livemax",
)
JOBS_PURGED = Counter(
    "lesionseg_jobs_purged", "Finished jobs deleted after LESIONSEG_JOB_RETENTION_HOURS"
)


def observe_stage(stage: str, seconds: float) -> None:
    """The engine's timing hook (:mod:`lesionseg.pipeline.timing`): one histogram sample."""
    STAGE_SECONDS.labels(stage).observe(seconds)


def timed(stage: str, timings: dict[str, float]) -> AbstractContextManager[None]:
    """Time the block: add its ms to ``timings[stage]`` and observe the histogram."""
    return library_timed(stage, timings, observe_stage)


MODEL_PRECISION = Gauge(
    "lesionseg_model_precision",
    "1 per served model with its backend and the compute precision it runs in",
    ["model", "backend", "precision"],
    multiprocess_mode="max",
)


def report_models(models: dict) -> None:
    """Publish the precisions of a models block (``service.app.model_info``)."""
    for model in ("sam", "detector"):
        MODEL_PRECISION.labels(model, models["backend"], models[model]["precision"]).set(1)


# The DICOM listener (service/listener.py, lesionseg/pacs/listener.py).
DICOM_ASSOCIATIONS = Counter(
    "lesionseg_dicom_associations",
    "DICOM associations asked of the listener: accepted, or rejected (caller not allowed)",
    ["outcome"],
)
DICOM_INSTANCES = Counter(
    "lesionseg_dicom_instances",
    "Instances sent to the DICOM listener: stored, or refused (undecodable, not-matching, "
    "write-failed)",
    ["outcome"],
)
DICOM_SERIES_QUEUED = Counter(
    "lesionseg_dicom_series_queued", "Series received by the DICOM listener queued as jobs"
)
