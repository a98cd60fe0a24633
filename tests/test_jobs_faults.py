"""The job store's start-up check of its database (lesionseg.pacs.job_store.check_database); the
full
volume and the running service are tested in tests/service/test_faults.py."""

from __future__ import annotations

import os
import sqlite3

import pytest

from lesionseg.errors import JobStoreError
from lesionseg.pacs.job_db import check_database
from lesionseg.pacs.job_store import JobStore


def test_a_missing_or_healthy_database_passes(tmp_path):
    check_database(tmp_path / "nothing-here")
    JobStore(tmp_path / "jobs")
    check_database(tmp_path / "jobs")


def test_garbage_bytes_name_the_file_and_what_to_do(tmp_path):
    (tmp_path / "jobs.sqlite3").write_bytes(os.urandom(4096))
    with pytest.raises(JobStoreError, match=r"is corrupt .*move it away") as raised:
        check_database(tmp_path)
    assert str(tmp_path / "jobs.sqlite3") in str(raised.value)


def test_a_write_lock_held_elsewhere_is_named_after_the_timeout(tmp_path):
    db = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE jobs (id TEXT)")
    db.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(JobStoreError, match="is locked by another process"):
            check_database(tmp_path, timeout_s=0.2)
    finally:
        db.close()
    check_database(tmp_path)  # free again
