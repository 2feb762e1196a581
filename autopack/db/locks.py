"""Named locks across worker processes, for work that must not run twice at once but cannot hold a
database transaction while it runs (a model call).

PostgreSQL: a session advisory lock on a connection of its own, released when the block ends, or by
the server when the holder's connection dies (a killed worker holds nothing). SQLite (the local
profile, one machine): an exclusive ``flock`` on a file beside the database, released the same way
by the kernel; one file serves every name there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from autopack.db.session import get_engine

POLL_S = 0.1


def lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (stable across processes and machines)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def named_lock(db_url: str, name: str, wait_s: float) -> Iterator[bool]:
    """Hold the lock ``name`` for the block; yields False (and holds nothing) if another process
    held it for all of ``wait_s`` seconds."""
    engine = get_engine(db_url)
    if engine.dialect.name == "postgresql":
        key = lock_key(name)
        with engine.connect() as conn:
            deadline = time.monotonic() + wait_s
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one():
                conn.rollback()
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(POLL_S)
            conn.commit()
            try:
                yield True
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield True  # one process holds the whole database: nothing to serialize against
        return
    fd = os.open(f"{database}.locks", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(POLL_S)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the flock
