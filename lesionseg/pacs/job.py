"""One job as the job store records it, the series reference a job may carry instead of files,
and the back-off of the store's retries (pushes, fetches)."""

from __future__ import annotations

import dataclasses
import re

from lesionseg.errors import InputError

JOB_STATES = ("queued", "running", "done", "failed")
PUSH_STATES = ("none", "pending", "retrying", "pushed", "failed")
MAX_TRANSACTION_ID = 128
# PS3.5 9.1: components of digits separated by dots, at most 64 characters. Leading zeros,
# which the standard forbids, are let through: archives hold such UIDs and must be reachable.
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
MAX_UID = 64


@dataclasses.dataclass(frozen=True)
class Job:
    """One job as stored. Times are Unix seconds (float); ``None`` until they happen.

    A job by reference carries ``study`` and ``series`` (UIDs) and no files until its worker
    fetched the series from the archive (``n_files`` is 0 until then); ``fetch_attempts``
    counts the fetches that found the archive unavailable, ``fetch_next_at`` is when a
    queued job waiting for the archive may be tried again.
    """

    id: str
    transaction_id: str | None
    state: str
    reason: str | None
    window: str | None
    n_files: int
    push_state: str
    push_attempts: int
    push_next_at: float | None
    push_error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    pushed_at: float | None
    owner: str | None = None  # the submitting API key's id (service.auth); None without keys
    study: str | None = None
    series: str | None = None
    fetch_attempts: int = 0
    fetch_next_at: float | None = None
    runs: int = 0  # how many times a worker started it (a worker that died started it too)
    lease_owner: str | None = None  # the worker running it (lesionseg.pacs.job_store)
    lease_until: float | None = None  # its hold ends then unless renewed

    @classmethod
    def from_row(cls, row) -> Job:
        """The job of a database row (a mapping of columns; columns of no field are ignored,
        e.g. PostgreSQL's ``seq``)."""
        return cls(**{name: row[name] for name in _FIELDS})

    def to_dict(self) -> dict:
        """JSON-ready status (no file paths, no owner, no lease)."""
        body = dataclasses.asdict(self)
        for private in PRIVATE_FIELDS:
            del body[private]
        return body


PRIVATE_FIELDS = ("owner", "lease_owner", "lease_until")
_FIELDS = tuple(f.name for f in dataclasses.fields(Job))


def check_uid(value: object, name: str) -> str:
    """``value`` if it is a DICOM UID (digits and dots, at most 64 characters), else
    :class:`InputError` naming the field ``name``."""
    if not (isinstance(value, str) and len(value) <= MAX_UID and re.fullmatch(UID_PATTERN, value)):
        raise InputError(
            f"{name} must be a DICOM UID: digits and dots, at most {MAX_UID} characters (e.g. "
            f"1.2.840.113619.2.55.3.604688119), got {str(value)[:80]!r}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class SeriesReference:
    """Series ``series`` of study ``study`` in the DICOMweb archive (UIDs, checked)."""

    study: str
    series: str

    def __post_init__(self) -> None:
        check_uid(self.study, "study")
        check_uid(self.series, "series")


def backoff_delay(attempts: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait after ``attempts`` failed tries (>= 1): initial, 2x, 4x ... capped."""
    assert attempts >= 1
    return min(max_s, initial_s * 2.0 ** min(attempts - 1, 60))
