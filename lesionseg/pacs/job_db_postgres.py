"""The job table in PostgreSQL (``LESIONSEG_JOBS_DATABASE_URL``), shared by any number of API
and worker processes on any number of machines.

The store's SQL is written once in SQLite's dialect; :func:`translate` turns it into
PostgreSQL's: ``?`` parameters become ``%s``, and SQLite's ``IS ?`` (NULL-safe equality)
becomes ``IS NOT DISTINCT FROM``. Nothing else differs: the store uses ``coalesce``, ``min``,
``count`` and ``RETURNING``-free statements that both understand.

Concurrency: every state change is one transaction (READ COMMITTED). A worker claims a job with
``SELECT ... FOR UPDATE SKIP LOCKED`` (``skip_locked``), so two workers never get the same job
and neither waits for the other; conditional UPDATEs (a push's claim, a lease's guard) are
re-checked by PostgreSQL against the committed row, so exactly one of two racing writers wins.
Submissions that check the queue's bounds take a transaction-scoped advisory lock
(:meth:`_Transaction.lock_queue`), as SQLite's ``BEGIN IMMEDIATE`` serialises them.

Connections: a small pool per store, at most MAX_CONNECTIONS open (the service runs store calls
in threads; each transaction borrows one), opened on first use and dropped after an error that
broke them; so a process holds a few database sessions, whatever its thread count.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from lesionseg.errors import JobStoreError
from lesionseg.pacs.job_columns import COLUMNS

log = logging.getLogger("lesionseg.pacs.job_store")

CONNECT_TIMEOUT_S = 10
MAX_CONNECTIONS = 4  # per store (process): API routes, the worker, the pusher, the listener
# The key of the advisory lock that serialises queue-bound checks ("lesionseg jobs queue").
QUEUE_LOCK = 0x1E5105E6

# SQLite's columns (lesionseg/pacs/job_db.py), REAL as double precision (a Unix time in
# PostgreSQL's REAL would lose its seconds), and ``seq``: the insertion order.
_TYPES = {"REAL": "DOUBLE PRECISION"}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (seq BIGSERIAL, {})".format(
        ", ".join(
            f"{name} {' '.join(_TYPES.get(word, word) for word in kind.split())}"
            for name, kind in COLUMNS
        )
    ),
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_transaction_id "
    "ON jobs ((coalesce(owner, '')), transaction_id)",
    # The claim's scan and the queue's counts: the jobs that are not finished.
    "CREATE INDEX IF NOT EXISTS jobs_active ON jobs (created_at, seq) "
    "WHERE state IN ('queued', 'running')",
    "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) "
    "WHERE state IN ('done', 'failed')",
)


def translate(sql: str) -> str:
    """The store's SQLite SQL in PostgreSQL's dialect (see the module's docstring)."""
    sql = sql.replace("%", "%%")
    sql = re.sub(r"\bIS \?", "IS NOT DISTINCT FROM ?", sql)
    sql = re.sub(r"\bwindow\b", '"window"', sql)  # a reserved word in PostgreSQL
    return sql.replace("?", "%s")


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{host}{port}{parts.path}"


class Row(tuple):
    """A row: by position (``(n,) = row``) and by column name (``row["id"]``, ``dict(row)``),
    as :class:`sqlite3.Row`."""

    _names: tuple[str, ...] = ()

    def __new__(cls, names: tuple[str, ...], values: Sequence) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(self._names.index(key))
        return super().__getitem__(key)


def _row_factory(cursor):
    names = tuple(c.name for c in cursor.description or ())
    return lambda values: Row(names, values)


class _Transaction:
    """The store's view of one PostgreSQL transaction: ``execute`` / ``executemany`` with
    SQLite-dialect SQL; the cursor it returns has ``fetchone``, ``fetchall``, ``rowcount``."""

    def __init__(self, connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence = ()):
        return self._connection.execute(translate(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        with self._connection.cursor() as cursor:
            cursor.executemany(translate(sql), [tuple(r) for r in rows])

    def lock_queue(self) -> None:
        """Hold the queue's advisory lock until this transaction ends."""
        self._connection.execute("SELECT pg_advisory_xact_lock(%s)", (QUEUE_LOCK,))


class PostgresJobDatabase:
    """The job table in the PostgreSQL database at ``url``; created if missing."""

    shared = True
    seq = "seq"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise JobStoreError(
                "LESIONSEG_JOBS_DATABASE_URL needs the PostgreSQL driver psycopg 3: "
                "pip install 'psycopg[binary]'"
            ) from exc
        self._psycopg = psycopg
        self.integrity_errors = (psycopg.errors.UniqueViolation,)
        self.url = url
        self._idle: list = []  # open connections nobody uses now
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        with self.transaction() as db:
            db.lock_queue()  # two processes starting together create the table once
            for statement in _SCHEMA:
                db.execute(statement)

    def describe(self) -> str:
        return safe_url(self.url)

    def _connect(self):
        try:
            return self._psycopg.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT_S,
                row_factory=_row_factory,
                application_name="lesionseg",
                autocommit=True,  # transaction() says where each transaction begins and ends
            )
        except self._psycopg.OperationalError as exc:
            raise JobStoreError(
                f"the job database {self.describe()} cannot be reached ({_first_line(exc)}): "
                "check LESIONSEG_JOBS_DATABASE_URL, that PostgreSQL is up and that this pod "
                "may connect to it"
            ) from None

    @contextlib.contextmanager
    def _connection(self) -> Iterator:
        """Borrow a connection of the pool (waiting while MAX_CONNECTIONS are lent); it goes
        back unless broken or closed."""
        with self._slots:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None or connection.closed or connection.broken:
                connection = self._connect()
            try:
                yield connection
            finally:
                if not (connection.closed or connection.broken):
                    with self._lock:
                        self._idle.append(connection)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """One transaction on a pooled connection: committed on exit, rolled back on an
        exception; a connection an error broke is dropped (the next call opens another)."""
        with self._connection() as connection:
            try:
                with connection.transaction():
                    yield _Transaction(connection)
            except self._psycopg.OperationalError as exc:
                if connection.broken or connection.closed:
                    raise JobStoreError(
                        f"the job database {self.describe()} went away ({_first_line(exc)}); "
                        "the next call reconnects"
                    ) from exc
                raise

    def close(self) -> None:
        with self._lock:
            connections, self._idle = self._idle, []
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
