"""The job store's database: the embedded SQLite file ``jobs.sqlite3`` (the default) or a
PostgreSQL database (``LESIONSEG_JOBS_DATABASE_URL``, lesionseg/pacs/job_db_postgres.py).

Here: the SQLite schema, the migration of older stores, one transaction per state change, the
check before serving that the file is usable, and :class:`SqliteJobDatabase`, the interface
both databases offer the store (:func:`open_job_database` picks one). The store writes its SQL
once, in SQLite's dialect with ``?`` parameters; the PostgreSQL database translates the few
differences (see ``job_db_postgres.translate``)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from lesionseg.errors import JobStoreError
from lesionseg.pacs.job_columns import COLUMNS

DB_FILE = "jobs.sqlite3"

_SCHEMA = "CREATE TABLE IF NOT EXISTS jobs ({})".format(
    ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
)
_OWNER_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_transaction_id "
    "ON jobs (ifnull(owner, ''), transaction_id)"
)


# Columns added after the first release, as ``ALTER TABLE ADD COLUMN`` clauses.
_ADDED = ("study", "series", "fetch_attempts", "fetch_next_at")  # jobs by reference
_ADDED += ("lease_owner", "lease_until", "runs")  # leases
_ADDED_COLUMNS = {name: f"{name} {kind}" for name, kind in COLUMNS if name in _ADDED}


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store written by an older version up to date, in one transaction: before jobs
    had owners, add ``owner`` and make the transaction id unique per owner (SQLite cannot drop
    a column's UNIQUE, so the table is rebuilt, rows and rowids kept); before jobs by
    reference or leases, add their columns (NULL / 0 for the jobs already there)."""
    db.execute("BEGIN IMMEDIATE")  # another process may be opening the same store
    columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    if "owner" not in columns:
        db.execute(_SCHEMA.replace("IF NOT EXISTS jobs", "jobs_owned"))
        names = ", ".join(columns)
        db.execute(f"INSERT INTO jobs_owned (rowid, {names}) SELECT rowid, {names} FROM jobs")
        db.execute("DROP TABLE jobs")
        db.execute("ALTER TABLE jobs_owned RENAME TO jobs")
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    for name, clause in _ADDED_COLUMNS.items():
        if name not in columns:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {clause}")
    db.execute(_OWNER_INDEX)
    db.execute("COMMIT")


def create_database(path: Path) -> None:
    """Create the database at ``path`` if missing (write-ahead log: readers do not block the
    writer) and bring an older one up to date."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_SCHEMA)
        _migrate(db)
    finally:
        db.close()


@contextlib.contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """A short-lived connection to ``path`` in one write transaction (``BEGIN IMMEDIATE``),
    committed on exit, rolled back on an exception; rows are :class:`sqlite3.Row`."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()


def check_database(root: Path, timeout_s: float = 5.0) -> None:
    """Fail loudly, before serving, if ``root``'s job database exists but cannot be used:
    garbage bytes (not sqlite) or a write lock held by another process for ``timeout_s``.
    Raises :class:`JobStoreError` naming the file and what to do; a missing file is fine."""
    path = Path(root) / DB_FILE
    if not path.exists():
        return
    try:
        db = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")  # waits for, then fails on, another writer's lock
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        raise JobStoreError(
            f"the job database {path} is locked by another process ({exc}): is another "
            "lesionseg (or a sqlite3 shell) using this LESIONSEG_JOBS_DIR? Stop it, then "
            "start again"
        ) from None
    except sqlite3.DatabaseError as exc:
        raise JobStoreError(
            f"the job database {path} is corrupt ({exc}): move it away and start again (an "
            "empty store is created; the jobs it held are lost unless you restore it from a "
            "backup)"
        ) from None


class JobDatabase(Protocol):
    """What the job store needs of its database.

    Attributes:
        shared: other processes, on other machines, may run jobs of the same store at any
            time (PostgreSQL): recovery relies on leases alone, never on "nobody else runs".
        seq: the column that orders jobs submitted in the same instant (insertion order).
        skip_locked: the clause that makes a claim's SELECT skip rows other workers hold.
        integrity_errors: the exceptions of a violated unique index (a duplicate id).
    """

    shared: bool
    seq: str
    skip_locked: str
    integrity_errors: tuple[type[Exception], ...]

    def transaction(self) -> contextlib.AbstractContextManager: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class SqliteJobDatabase:
    """The embedded database ``root``/jobs.sqlite3: one machine; one process runs the jobs."""

    shared = False
    seq = "rowid"
    skip_locked = ""
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / DB_FILE
        create_database(self.path)
        # Held open for the store's life: its WAL index (-shm) and WAL stay allocated, so
        # status reads keep working on a full volume (writes then fail with SQLITE_FULL).
        self._keeper = sqlite3.connect(self.path, check_same_thread=False)
        self._keeper.execute("SELECT count(*) FROM jobs").fetchone()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction (see :func:`transaction`); ``lock_queue`` is implied."""
        return transaction(self.path)

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def close(self) -> None:
        self._keeper.close()


def lock_queue(db) -> None:
    """Serialise the submissions that check the queue's bounds in this transaction: nothing to
    do in SQLite (``BEGIN IMMEDIATE`` holds the write lock), an advisory lock in PostgreSQL."""
    lock = getattr(db, "lock_queue", None)
    if lock is not None:
        lock()


def open_job_database(root: Path, url: str | None) -> JobDatabase:
    """The database of the job store in ``root``: PostgreSQL at ``url`` if given (created
    tables, migrated), else the SQLite file in ``root``. Raises :class:`JobStoreError` for a
    database that cannot be used, naming it (never its password) and what to do."""
    if url is None:
        return SqliteJobDatabase(root)
    from lesionseg.pacs.job_db_postgres import PostgresJobDatabase

    return PostgresJobDatabase(url)
