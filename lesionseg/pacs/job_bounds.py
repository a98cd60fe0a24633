"""The bounds of a job store: how many jobs may wait, how many of them one owner may have, how
long a finished job is kept, and whether its inputs outlive its result.

:class:`JobBounds` is the policy (from the settings); the functions below keep to it on the
database (sqlite or PostgreSQL: lesionseg/pacs/job_db.py) and the files of
:class:`lesionseg.pacs.job_store.JobStore`, which calls them from its methods (``submit``,
``complete``, ``fail``, ``purge_expired``, ``recover``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from lesionseg.errors import LesionSegError
from lesionseg.pacs.job_db import JobDatabase
from lesionseg.settings import Settings

log = logging.getLogger("lesionseg.pacs.job_store")

ACTIVE = "state IN ('queued', 'running')"
FINISHED = "state IN ('done', 'failed')"


class JobQueueFullError(LesionSegError):
    """The job queue, or one owner's share of it, is full: the job was not accepted and
    nothing of it was kept (maps to HTTP 503, or 429 for one owner's share). ``limit`` is the
    bound that was reached; ``per_owner`` says which."""

    def __init__(self, message: str, *, limit: int, per_owner: bool) -> None:
        super().__init__(message)
        self.limit = limit
        self.per_owner = per_owner


@dataclasses.dataclass(frozen=True)
class JobBounds:
    """What a job store may hold. ``None``: no bound.

    Attributes:
        max_queued: jobs queued or running, of all owners together.
        max_per_owner: jobs queued or running of one owner (an API key's id); jobs without an
            owner are not counted by it.
        retention_s: seconds a finished (done or failed) job is kept after ``finished_at``;
            then its row and its files are deleted.
        keep_inputs: keep the accepted files until the job expires; False deletes them as soon
            as the job is done (its result written) or failed.
    """

    max_queued: int | None = None
    max_per_owner: int | None = None
    retention_s: float | None = None
    keep_inputs: bool = False

    def __post_init__(self) -> None:
        assert self.max_queued is None or self.max_queued >= 1, self
        assert self.max_per_owner is None or self.max_per_owner >= 1, self
        assert self.retention_s is None or self.retention_s > 0, self

    @classmethod
    def from_settings(cls, settings: Settings) -> JobBounds:
        """``max_queued_jobs``, ``max_requests_per_key`` (a key's share of the queue, as of its
        synchronous requests), ``job_retention_hours`` and ``keep_job_inputs``."""
        return cls(
            max_queued=settings.max_queued_jobs,
            max_per_owner=settings.max_requests_per_key,
            retention_s=settings.job_retention_hours * 3600.0,
            keep_inputs=settings.keep_job_inputs,
        )


def check_queue(db, bounds: JobBounds, owner: str | None) -> None:
    """Raise :class:`JobQueueFullError` if one more job of ``owner`` would pass ``bounds``.
    Run it in the transaction that inserts the job, so that concurrent submissions cannot
    pass the bound together."""
    if bounds.max_queued is not None:
        (active,) = db.execute(f"SELECT count(*) FROM jobs WHERE {ACTIVE}").fetchone()
        if active >= bounds.max_queued:
            raise JobQueueFullError(
                f"the job queue is full: {active} jobs queued or running, its limit "
                f"(LESIONSEG_MAX_QUEUED_JOBS={bounds.max_queued}); nothing was kept, submit "
                "again later",
                limit=bounds.max_queued,
                per_owner=False,
            )
    if bounds.max_per_owner is not None and owner is not None:
        (mine,) = db.execute(
            f"SELECT count(*) FROM jobs WHERE {ACTIVE} AND owner = ?", (owner,)
        ).fetchone()
        if mine >= bounds.max_per_owner:
            raise JobQueueFullError(
                f"this API key has {mine} jobs queued or running, its limit "
                f"(LESIONSEG_MAX_REQUESTS_PER_KEY={bounds.max_per_owner}); nothing was kept, "
                "submit again once one of them is done",
                limit=bounds.max_per_owner,
                per_owner=True,
            )


def remove_tree(path: Path) -> None:
    """Delete the directory ``path`` if it exists; a failure is logged, not raised: what it
    leaves is an orphan, removed at the next start (:func:`remove_orphans`)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass  # already gone: a purge or a recovery before this one
    except OSError as exc:
        log.warning("could not delete %s (%s); retried at the next start", path, exc)


def purge_finished(database: JobDatabase, root: Path, cutoff: float) -> list[str]:
    """Delete the jobs that finished (done or failed) at or before ``cutoff`` (Unix s): their
    rows in one transaction first, so that their ids answer "not found" from then on, then
    their directories. Returns the ids deleted."""
    with database.transaction() as db:
        expired = [
            row["id"]
            for row in db.execute(
                f"SELECT id FROM jobs WHERE {FINISHED} AND finished_at <= ?", (cutoff,)
            )
        ]
        db.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in expired])
    for job_id in expired:
        remove_tree(root / job_id)
    return expired


def remove_orphans(
    database: JobDatabase, root: Path, *, min_age_s: float = 0.0, now: float | None = None
) -> int:
    """Delete the job directories without a row (a purge cut short between its transaction
    and its deletions) that were last modified ``min_age_s`` or more before ``now``: a
    submitted job's directory exists a moment before its row, so with submissions under way
    (other processes of a shared store) only old ones may go. Returns how many were deleted."""
    now = time.time() if now is None else now
    with database.transaction() as db:
        known = {row["id"] for row in db.execute("SELECT id FROM jobs").fetchall()}
    orphans = [
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in known
    ]
    removed = 0
    for path in orphans:
        try:
            if now - path.stat().st_mtime < min_age_s:
                continue
        except FileNotFoundError:
            continue
        remove_tree(path)
        removed += 1
    return removed


def bytes_under(root: Path) -> int:
    """Bytes of the files under ``root`` (apparent sizes: the database, inputs, results)."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue  # deleted while walking (a purge, a finished staging)
    return total
