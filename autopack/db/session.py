"""Engines and sessions, one engine per URL per process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker


_URLS: set[str] = set()


def known_urls() -> set[str]:
    """URLs an engine was created for in this process."""
    return set(_URLS)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    _URLS.add(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # let the "begin" hook below open transactions
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            # Take the write lock at BEGIN so read-then-write transactions never deadlock on upgrade;
            # a read-only session's (session_scope(read_only=True)) reads beside a writer (WAL).
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    engine = create_engine(url, pool_size=5, max_overflow=10)
    _ping_after_idle(engine)
    return engine


# A pooled connection idle for longer than this is pinged before use; one reused sooner is not.
PING_AFTER_IDLE_S = 1.0


def _ping_after_idle(engine: Engine) -> None:
    """Like ``pool_pre_ping``, but only for connections that sat in the pool for a while.

    A step opens several short transactions back to back, and a ping on every checkout doubled
    each one's cost (about 1 ms to 2 ms here). A server restart or an idle connection dropped by
    the network is found by the ping on the next use after a pause; a connection that dies within
    the second after it was last used fails that transaction, the pool is then invalidated as a
    whole (SQLAlchemy does that on a disconnect error), and the step is retried through its lease.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure: the pool replaces the connection
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


# The connection option a read-only session's transactions carry (see the SQLite "begin" hook).
READ_ONLY = "autopack_read_only"


@lru_cache(maxsize=16)
def _factory(url: str, read_only: bool = False) -> sessionmaker[Session]:
    engine = get_engine(url)
    return sessionmaker(bind=engine.execution_options(**{READ_ONLY: True}) if read_only else engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str, *, read_only: bool = False) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on error. ``read_only``: one that only reads
    (the API's GETs, event streams), which on SQLite then does not take the database's write lock,
    so it neither waits for another process's write transaction nor holds up one; it must not write."""
    session = _factory(url, read_only)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
