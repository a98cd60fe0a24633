"""Typed errors raised at the library's boundaries.

Each message says what is wrong and how to fix it. The service maps :class:`InputError` to
HTTP 400 and everything else to a server-side error.
"""

from __future__ import annotations


class LesionSegError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(LesionSegError, ValueError):
    """The caller's input is unusable (maps to HTTP 400)."""


class InvalidImageError(InputError):
    """The image bytes are empty, unreadable, truncated or of an unsupported kind."""


class ImageTooLargeError(InvalidImageError):
    """The upload or its decoded pixel count is over the configured limit."""


class InvalidBoxesError(InputError):
    """Box prompts are malformed: wrong shape, not finite, empty or outside the image."""


class ModelLoadError(LesionSegError):
    """Weights are missing, fail their checksum or do not fit the model."""


class DataFetchError(LesionSegError):
    """A data package could not be fetched or failed its checksum."""


class DatasetError(LesionSegError):
    """A training dataset is unreadable or inconsistent; the message names the file."""


class JobNotFoundError(LesionSegError, KeyError):
    """No job with this id in the job store (maps to HTTP 404)."""


class DuplicateJobError(LesionSegError):
    """A job with this caller-supplied transaction id exists already (maps to HTTP 409)."""

    def __init__(self, transaction_id: str, job_id: str) -> None:
        super().__init__(f"transaction id {transaction_id!r} was already submitted as job {job_id}")
        self.transaction_id = transaction_id
        self.job_id = job_id


class PushError(LesionSegError):
    """A DICOMweb STOW-RS push failed. ``retryable``: the server was unreachable, timed out,
    overloaded (429) or failed (5xx), so the same push may succeed later; otherwise the server
    refused it (other 4xx, or it reported the instance as failed) and retrying will not help."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class StorageFullError(LesionSegError):
    """The volume of the job store has no space (or quota) left for a write (maps to HTTP
    507 on submission; a result that cannot be stored is retried, never dropped)."""


class JobStoreError(LesionSegError):
    """The job database cannot be used: not a sqlite database, or locked by another process.
    The message names the file and what to do."""


class SettingsError(LesionSegError, ValueError):
    """A setting is unusable, e.g. a mistyped ``LESIONSEG_*`` variable (reported at start)."""
