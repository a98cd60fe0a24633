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
