"""The job store's SQLite database ``jobs.sqlite3``: its schema, the migration of older
stores, one transaction per state change, and the check before serving that it is usable."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from lesionseg.errors import JobStoreError

DB_FILE = "jobs.sqlite3"

# ``owner``: the id of the API key that submitted the job (NULL without keys); a transaction
# id is unique per owner, so one key can neither see nor collide with another key's ids.
# ``study``, ``series``: the UIDs of a job by reference (NULL for uploaded files); its fetch
# from the archive is retried at ``fetch_next_at`` after ``fetch_attempts`` failed tries.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    transaction_id TEXT,
    owner TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    window TEXT,
    n_files INTEGER NOT NULL,
    push_state TEXT NOT NULL,
    push_attempts INTEGER NOT NULL DEFAULT 0,
    push_next_at REAL,
    push_error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pushed_at REAL,
    study TEXT,
    series TEXT,
    fetch_attempts INTEGER NOT NULL DEFAULT 0,
    fetch_next_at REAL
)
"""
_OWNER_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_transaction_id "
    "ON jobs (ifnull(owner, ''), transaction_id)"
)


# Columns added after the first release, as ``ALTER TABLE ADD COLUMN`` clauses.
_ADDED_COLUMNS = {
    "study": "study TEXT",
    "series": "series TEXT",
    "fetch_attempts": "fetch_attempts INTEGER NOT NULL DEFAULT 0",
    "fetch_next_at": "fetch_next_at REAL",
}


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store written by an older version up to date, in one transaction: before jobs
    had owners, add ``owner`` and make the transaction id unique per owner (SQLite cannot drop
    a column's UNIQUE, so the table is rebuilt, rows and rowids kept); before jobs by
    reference, add their columns (NULL / 0 for the jobs already there)."""
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
