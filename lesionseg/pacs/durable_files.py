"""Files that survive a crash once written (fsync, atomic rename), and a full volume told apart
from other write errors: what the job store needs of the file system."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (new, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync the directory);
    on failure (a full volume) the temp file is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def disk_full(exc: BaseException) -> bool:
    """No space or quota left: the OS's ENOSPC / EDQUOT, or sqlite's SQLITE_FULL."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)
