"""Settings of files, the persistent job store and the DICOMweb archive.

Fields of :class:`lesionseg.settings.Settings`, grouped by concern; that class is the one
settings object (read from the environment with the ``LESIONSEG_`` prefix), not this one.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

from lesionseg.settings.callers import AllowedCallers
from lesionseg.settings.destinations import parse_destinations


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
    jobs_database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL database of the job table, e.g. "
        "postgresql://lesionseg:secret@postgres:5432/lesionseg: any number of workers on any "
        "number of machines claim jobs from it (FOR UPDATE SKIP LOCKED, with a lease); inputs "
        "and results stay files in jobs_dir, which every API and worker pod must then share "
        "(a ReadWriteMany volume). Unset = the embedded sqlite database in jobs_dir (one "
        "process runs the jobs).",
    )
    jobs_worker: bool = Field(
        True,
        description="This service process runs the queued jobs and their pushes. False on an API "
        "that only accepts jobs while workers run apart (python -m service.worker, the workers "
        "Deployment); more than one worker needs jobs_database_url.",
    )
    job_lease_s: float = Field(
        60.0,
        ge=1,
        description="A worker's hold on a job it runs, renewed every third of it while the job "
        "runs: the job of a worker that died is run by another worker once its lease has "
        "expired (PostgreSQL; with sqlite a restart re-queues it at once).",
    )
    dicomweb_url: str | None = Field(
        None,
        description="DICOMweb root of the archive to push SEGs to with STOW-RS (POST "
        "<url>/studies), e.g. http://pacs:8042/dicom-web, and to fetch the series of jobs by "
        "reference from (QIDO-RS + WADO-RS); unset = no push, no jobs by reference.",
    )
    dicomweb_authorization: SecretStr | None = Field(
        None,
        description="Value of the Authorization header sent to the DICOMweb server, e.g. "
        "'Basic dXNlcjpwYXNz' or 'Bearer <token>'.",
    )
    dicomweb_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Timeout (s) of each step of a DICOMweb request (connect, each read, each "
        "write; not the whole transfer): the push, and the fetch of a job by reference.",
    )
    push_initial_delay_s: float = Field(
        2.0,
        gt=0,
        description="Wait (s) before the first retry of a failed push, or of a job's fetch from "
        "an archive that was down; doubles per try.",
    )
    push_max_delay_s: float = Field(
        300.0,
        gt=0,
        description="Longest wait (s) between push retries, and between fetch retries of a job "
        "by reference (back-off cap).",
    )

    # --- DICOM listener ------------------------------------------------------------------------
    dicom_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="TCP port of the DICOM listener (a C-STORE / C-ECHO SCP; 11112 is the usual "
        "one: LESIONSEG_DICOM_PORT=11112); unset = no listener. Each series received becomes a "
        "job once quiet for series_quiet_s; its SEG (and SR, dicom_sr) is pushed to dicomweb_url.",
    )
    dicom_ae_title: str = Field(
        "LESIONSEG",
        min_length=1,
        max_length=16,
        pattern=r"^[ -~]*[!-~][ -~]*$",
        description="AE title of the DICOM listener (1-16 printable ASCII characters, not all "
        "spaces): the called AE title senders address.",
    )
    dicom_allowed_callers: str | None = Field(
        None,
        description="Who may send to the DICOM listener, comma-separated: an AE title (from any "
        "host), AE@host (that AE title from that IP address only) or *@host (any AE title from "
        "that IP address), e.g. 'ORTHANC@10.0.0.7,CT1'. Any other caller is rejected at "
        "association (calling AE title not recognised). Unset = closed: loopback peers only.",
    )
    series_quiet_s: float = Field(
        10.0,
        gt=0,
        description="Seconds without a new instance after which a series received by the DICOM "
        "listener is complete and becomes a job (the series' last arrival, from the spool "
        "files' times, so it survives a restart).",
    )
    dicom_sr: bool = Field(
        True,
        description="The jobs of the DICOM listener produce a DICOM SR measurement report (TID "
        "1500) beside the SEG, and push both.",
    )

    dicom_destinations: str | None = Field(
        None,
        description="Where a job's SEG (and SR) also go by C-STORE, comma-separated "
        "AE@host:port (host: IP address, [IPv6] or DNS name), e.g. "
        "'PACS@10.0.0.5:104,VIEWER@10.0.0.9:11112'; sent from the AE title dicom_ae_title, "
        "each step timed out after dicomweb_timeout_s, with the push's retries and back-off, "
        "like dicomweb_url. Unset = DICOMweb only.",
    )

    @field_validator("jobs_database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError(
                "must be a PostgreSQL URL, postgresql://user:password@host:5432/database"
            )
        return value

    @field_validator("dicom_allowed_callers")
    @classmethod
    def _check_allowed_callers(cls, value: str | None) -> str | None:
        AllowedCallers.parse(value)  # its SettingsError is a ValueError: pydantic reports it
        return value

    @field_validator("dicom_destinations")
    @classmethod
    def _check_destinations(cls, value: str | None) -> str | None:
        parse_destinations(value)  # its SettingsError is a ValueError: pydantic reports it
        return value
