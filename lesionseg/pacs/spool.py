"""The DICOM listener's spool: instances received by C-STORE, kept by series until the series
has been quiet for a while and becomes a job of the :class:`~lesionseg.pacs.job_store.JobStore`.

Layout under ``root`` (``<jobs_dir>/.dicom-in``; a dot name, so that the job store's sweep of
directories without a job leaves it alone)::

    <series uid>/<sop instance uid>.dcm          one instance as received (Part-10), written
                                                 and fsynced before C-STORE answers success
    .claimed/<series uid>.<claim id>/<...>.dcm   a quiet series being submitted as a job

The state is the files alone: a series' last arrival is its newest file's mtime, so a process
killed at any moment (SIGKILL) starts again where it was. A quiet series is first renamed into
``.claimed`` (under the lock that C-STORE writes take, so no instance lands in a directory being
submitted); then it is submitted with the transaction id ``dicom-<series uid>.<claim id>`` and
only then removed. A claim interrupted by a crash is submitted again at the next start; if its
job was recorded already, the duplicate transaction id says so and the claim is just removed.
A job refused because the queue is full (``LESIONSEG_MAX_QUEUED_JOBS``) stays claimed and is
tried again at every tick: never lost. Instances arriving after a series was claimed start a
new spool directory, hence a second job once quiet.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from lesionseg.errors import DuplicateJobError, StorageFullError
from lesionseg.pacs.durable_files import fsync_dir, write_durably
from lesionseg.pacs.job_bounds import JobQueueFullError
from lesionseg.pacs.job_store import Job, JobStore

log = logging.getLogger("lesionseg.pacs.listener")

SPOOL_DIR = ".dicom-in"
CLAIMED_DIR = ".claimed"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: object) -> bool:
    """A DICOM UID usable as a file name: digits and dots, at most 64 characters."""
    return isinstance(value, str) and len(value) <= 64 and _UID.match(value) is not None


def _instances(directory: Path) -> list[Path]:
    """The instances of a series directory (not write_durably's temporary files)."""
    return sorted(p for p in directory.iterdir() if p.suffix == ".dcm" and p.name[0] != ".")


def _position(path: Path) -> tuple[float, float, str]:
    """Sort key of one instance: its position along the slice normal (mm), then its instance
    number, then its name; what is missing counts as 0."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        position = [float(v) for v in ds.get("ImagePositionPatient") or ()]
        orientation = [float(v) for v in ds.get("ImageOrientationPatient") or ()]
        number = float(ds.get("InstanceNumber") or 0)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, TypeError):
        return (0.0, 0.0, path.name)
    along = 0.0
    if len(position) == 3 and len(orientation) == 6:
        normal = np.cross(orientation[:3], orientation[3:])  # (3,) slice normal
        along = float(np.dot(normal, position))
    return (along, number, path.name)


def series_order(paths: list[Path]) -> list[Path]:
    """The files of one series in slice order (a job's frame k is its k-th file)."""
    return sorted(paths, key=_position)


class SeriesSpool:
    """The spool in ``root`` feeding ``store``. A series quiet for ``quiet_s`` seconds becomes a
    job with ``options`` (JSON-ready, as ``JobStore.submit``), pushed if ``push``;
    ``on_job(job)`` is called for each job recorded. Thread-safe."""

    def __init__(
        self,
        root: Path,
        store: JobStore,
        *,
        quiet_s: float,
        options: dict | None = None,
        push: bool = False,
        on_job: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.root = Path(root)
        self.claimed = self.root / CLAIMED_DIR
        self.claimed.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.root)
        fsync_dir(self.root.parent)
        self.store = store
        self.quiet_s = quiet_s
        self.options = options or {}
        self.push = push
        self.on_job = on_job
        self._lock = threading.Lock()
        self._queue_full = False  # logged once per spell of refusals

    def put(self, series_uid: str, sop_instance_uid: str, data: bytes) -> None:
        """Store one instance (Part-10 ``data``) durably; the same instance again replaces it.
        Raises OSError (e.g. a full volume): then nothing was kept."""
        assert is_uid(series_uid) and is_uid(sop_instance_uid)
        with self._lock:
            directory = self.root / series_uid
            if not directory.is_dir():
                directory.mkdir()
                fsync_dir(self.root)
            write_durably(directory / f"{sop_instance_uid}.dcm", data)

    def pending(self) -> dict[str, int]:
        """Instances waiting per series uid (spooled, not yet claimed)."""
        return {
            d.name: len(_instances(d))
            for d in self.root.iterdir()
            if d.name[0] != "." and d.is_dir()
        }

    def tick(self, now: float | None = None) -> list[Job]:
        """Claim the series quiet since ``now - quiet_s`` (Unix s), submit every claim; the
        jobs recorded by this call."""
        now = time.time() if now is None else now
        for directory in sorted(self.root.iterdir()):
            if directory.name[0] != "." and directory.is_dir():
                self._claim_if_quiet(directory, now)
        jobs = []
        for claim in sorted(self.claimed.iterdir()):
            if (job := self._submit(claim)) is not None:
                jobs.append(job)
            if self._queue_full:
                break  # the rest wait for a place too
        return jobs

    def _claim_if_quiet(self, directory: Path, now: float) -> None:
        with self._lock:  # no C-STORE writes into it meanwhile
            entries = list(directory.iterdir())
            last = max((p.stat().st_mtime for p in entries), default=directory.stat().st_mtime)
            if now - last < self.quiet_s:
                return
            if not _instances(directory):  # a crash between mkdir and the first write
                shutil.rmtree(directory)
                return
            directory.rename(self.claimed / f"{directory.name}.{uuid.uuid4().hex}")
            fsync_dir(self.root)
            fsync_dir(self.claimed)

    def _submit(self, claim: Path) -> Job | None:
        """Submit one claimed series; remove the claim once its job is recorded."""
        files = series_order(_instances(claim))
        if not files:
            shutil.rmtree(claim)
            return None
        transaction_id = f"dicom-{claim.name}"
        try:
            job = self.store.submit(
                files, transaction_id=transaction_id, push=self.push, options=self.options
            )
        except DuplicateJobError as exc:  # recorded before a crash: only the removal was left
            log.info("series claim %s was job %s already", claim.name, exc.job_id)
            shutil.rmtree(claim, ignore_errors=True)
            return None
        except FileNotFoundError:  # another process of a shared spool submitted and removed it
            if claim.exists():
                raise
            log.info("series claim %s was submitted by another process", claim.name)
            return None
        except JobQueueFullError as exc:
            if not self._queue_full:
                log.warning("received series wait in the spool: %s", exc)
            self._queue_full = True
            return None
        except StorageFullError as exc:
            log.error("received series %s waits in the spool: %s", claim.name, exc)
            return None
        self._queue_full = False
        shutil.rmtree(claim, ignore_errors=True)  # another process may have removed it
        series_uid = claim.name.rsplit(".", 1)[0]
        log.info("series %s (%d instances) is job %s", series_uid, len(files), job.id)
        self.on_job(job)
        return job


def spool_root(jobs_dir: Path) -> Path:
    """Where the listener of the job store in ``jobs_dir`` spools what it receives."""
    return Path(jobs_dir) / SPOOL_DIR
