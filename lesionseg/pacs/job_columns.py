"""The columns of the job table, shared by its two databases: SQLite's schema and migration
(lesionseg/pacs/job_db.py) and PostgreSQL's (lesionseg/pacs/job_db_postgres.py)."""

# The job table's columns in SQLite's types (times are Unix s, REAL); PostgreSQL's schema is
# made from the same list.
# ``owner``: the id of the API key that submitted the job (NULL without keys); a transaction
# id is unique per owner, so one key can neither see nor collide with another key's ids.
# ``study``, ``series``: the UIDs of a job by reference (NULL for uploaded files); its fetch
# from the archive is retried at ``fetch_next_at`` after ``fetch_attempts`` failed tries.
# ``lease_owner``, ``lease_until``: the worker running the job and until when (Unix s) its hold
# lasts unless renewed; ``runs``: how many times a worker started it.
COLUMNS = (
    ("id", "TEXT PRIMARY KEY"),
    ("transaction_id", "TEXT"),
    ("owner", "TEXT"),
    ("state", "TEXT NOT NULL"),
    ("reason", "TEXT"),
    ("window", "TEXT"),
    ("n_files", "INTEGER NOT NULL"),
    ("push_state", "TEXT NOT NULL"),
    ("push_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("push_next_at", "REAL"),
    ("push_error", "TEXT"),
    ("created_at", "REAL NOT NULL"),
    ("started_at", "REAL"),
    ("finished_at", "REAL"),
    ("pushed_at", "REAL"),
    ("study", "TEXT"),
    ("series", "TEXT"),
    ("fetch_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("fetch_next_at", "REAL"),
    ("lease_owner", "TEXT"),
    ("lease_until", "REAL"),
    ("runs", "INTEGER NOT NULL DEFAULT 0"),
)
