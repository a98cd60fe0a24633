"""Settings of files, the persistent job store and the DICOMweb archive.

Fields of :class:`lesionseg.settings.Settings`, grouped by concern; that class is the one
settings object (read from the environment with the ``LESIONSEG_`` prefix), not this one.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


class PacsFields(BaseModel):
    """Files, jobs and the DICOMweb archive."""

    # --- files --------------------------------------------------------------------------------
    cache_dir: Path = Field(
        default_factory=lambda: Path.cwd() / ".cache",
        description="Where fetched data (the LiTS case), exports and training runs are kept. "
        "Default: .cache in the current directory (the repository's under `make`).",
    )

    # --- async jobs and DICOMweb push ----------------------------------------------------------
    jobs_dir: Path = Field(
        default_factory=lambda data: data["cache_dir"] / "jobs",
        description="Persistent job store: sqlite database, accepted inputs and results "
        "(default: cache_dir/jobs).",
    )
    max_queued_jobs: int = Field(
        100,
        ge=1,
        description="Most jobs queued or running in the job store; a POST /jobs beyond it gets "
        "503 with Retry-After and nothing of it is kept (the accepted ones are never dropped). "
        "With API keys, max_requests_per_key bounds one key's share of them (429).",
    )
    job_retention_hours: float = Field(
        72.0,
        gt=0,
        description="Hours a finished job, done or failed (its row and its result files), is "
        "kept after it ended; then the job worker deletes it (within a minute) and its id "
        "answers 404.",
    )
    keep_job_inputs: bool = Field(
        False,
        description="Keep a job's uploaded inputs (patient data) until the retention ends; by "
        "default they are deleted as soon as the job's result is written.",
    )
    dicomweb_url: str | None = Field(
        None,
        description="DICOMweb root of the archive to push SEGs to with STOW-RS (POST "
        "<url>/studies), e.g. http://pacs:8042/dicom-web; unset = no push.",
    )
    dicomweb_authorization: SecretStr | None = Field(
        None,
        description="Value of the Authorization header sent to the DICOMweb server, e.g. "
        "'Basic dXNlcjpwYXNz' or 'Bearer <token>'.",
    )
    dicomweb_timeout_s: float = Field(
        30.0, gt=0, description="Timeout (s) of one STOW-RS request (connect, read, write)."
    )
    push_initial_delay_s: float = Field(
        2.0, gt=0, description="Wait (s) before the first retry of a failed push; doubles per try."
    )
    push_max_delay_s: float = Field(
        300.0, gt=0, description="Longest wait (s) between push retries (back-off cap)."
    )
