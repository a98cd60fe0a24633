"""Jobs owned by API keys in the job store: isolation, transaction ids per owner, and the
migration of a store written before jobs had owners (no models, no servers)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from lesionseg.errors import DuplicateJobError, JobNotFoundError
from lesionseg.pacs.job_store import JobStore

# The table as every store before owners was created (lesionseg/pacs/job_store.py at f161162).
OLD_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    transaction_id TEXT UNIQUE,
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
    pushed_at REAL
)
"""


@pytest.fixture
def upload(tmp_path) -> Path:
    path = tmp_path / "upload.dcm"
    path.write_bytes(b"DICM" + b"\0" * 100)
    return path


def test_another_owner_gets_the_error_of_an_unknown_id(tmp_path, upload):
    store = JobStore(tmp_path / "jobs")
    job = store.submit([upload], owner="a" * 16)
    assert store.get(job.id, owner="a" * 16) == job
    assert store.get(job.id) == job  # the worker and the pusher see every job
    with pytest.raises(JobNotFoundError) as other:
        store.get(job.id, owner="b" * 16)
    with pytest.raises(JobNotFoundError) as unknown:
        store.get("0" * 32, owner="b" * 16)
    assert str(other.value).replace(job.id, "ID") == str(unknown.value).replace("0" * 32, "ID")
    unowned = store.submit([upload])  # submitted while the service had no keys
    with pytest.raises(JobNotFoundError):
        store.get(unowned.id, owner="a" * 16)
    assert "owner" not in job.to_dict()  # the status never shows whose key it was


def test_transaction_ids_are_scoped_per_owner(tmp_path, upload):
    store = JobStore(tmp_path)
    first = store.submit([upload], transaction_id="tx-1", owner="a" * 16)
    second = store.submit([upload], transaction_id="tx-1", owner="b" * 16)  # no collision
    unowned = store.submit([upload], transaction_id="tx-1")
    assert len({first.id, second.id, unowned.id}) == 3
    assert store.find("tx-1", "a" * 16) == first
    assert store.find("tx-1", "b" * 16) == second
    assert store.find("tx-1") == unowned
    assert store.find("tx-1", "c" * 16) is None
    for owner, job in (("a" * 16, first), (None, unowned)):
        with pytest.raises(DuplicateJobError) as caught:
            store.submit([upload], transaction_id="tx-1", owner=owner)
        assert caught.value.job_id == job.id


def test_concurrent_duplicates_of_one_owner_accept_exactly_one(tmp_path, upload):
    store = JobStore(tmp_path)
    outcomes: list[str] = []

    def submit(owner: str) -> None:
        try:
            outcomes.append(store.submit([upload], transaction_id="tx", owner=owner).id)
        except DuplicateJobError as exc:
            outcomes.append(f"duplicate of {exc.job_id}")

    threads = [threading.Thread(target=submit, args=(o,)) for o in ["a" * 16] * 4 + ["b" * 16]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [o for o in outcomes if not o.startswith("duplicate")]
    assert len(accepted) == 2, outcomes  # one per owner
    assert store.find("tx", "a" * 16).id in accepted
    assert outcomes.count(f"duplicate of {store.find('tx', 'a' * 16).id}") == 3, outcomes


def test_a_store_from_before_owners_is_migrated(tmp_path, upload):
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.execute(OLD_SCHEMA)
    rows = [(f"{i:032x}", f"tx-{i}", "queued", 1, "none", 100.0 - i) for i in range(3)]
    db.executemany(
        "INSERT INTO jobs (id, transaction_id, state, n_files, push_state, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.commit()
    db.close()
    store = JobStore(tmp_path)
    for job_id, tid, *_ in rows:
        job = store.get(job_id)
        assert (job.transaction_id, job.owner, job.state) == (tid, None, "queued")
        assert store.find(tid) == job
    # The old table's global UNIQUE is gone: another owner may reuse an old id; its owner
    # (no owner) may not.
    assert store.submit([upload], transaction_id="tx-0", owner="a" * 16).owner == "a" * 16
    with pytest.raises(DuplicateJobError):
        store.submit([upload], transaction_id="tx-0")
    assert store.claim_next().id == rows[2][0]  # the oldest first, as before
    JobStore(tmp_path)  # opening a migrated store again changes nothing
    assert store.get(rows[0][0]).transaction_id == "tx-0"
