"""What a database error means to someone who can act on it: the database is away (try again), or
its schema is older than this code (run ``autopack migrate``)."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

Problem = Literal["unavailable", "schema"]

# PostgreSQL's SQLSTATEs for a table or a column that does not exist.
_PG_SCHEMA_STATES = frozenset({"42P01", "42703"})
# PostgreSQL's SQLSTATEs for a server that cannot take the statement for now: read-only (a standby, or
# the old primary during a failover), shutting down, crashed, cannot connect now.
_PG_AWAY_STATES = frozenset({"25006", "57P01", "57P02", "57P03"})
# SQLite's messages for the same (it has no SQLSTATE).
_SQLITE_SCHEMA_MESSAGES = ("no such table", "no such column", "has no column named")
# What SQLite says when the file cannot be used for now (the machine's state, not the statement):
# not openable, locked by another process, a full disk, read-only.
_SQLITE_AWAY_MESSAGES = ("unable to open database", "database is locked", "database table is locked", "disk i/o error",
                         "database or disk is full", "readonly database")


def database_problem(exc: BaseException) -> Problem | None:
    """``"schema"`` for a missing table or column, ``"unavailable"`` for a connection that failed,
    closed or timed out (or SQLite's database being locked, unopenable, full or read-only; a
    PostgreSQL that is read-only or shutting down; every connection of this process's pool busy);
    ``None`` for anything else (a bug, not the database's state)."""
    if isinstance(exc, PoolTimeout):  # the pool's own, not a driver error: no connection came free in time
        return "unavailable"
    if not isinstance(exc, DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _PG_SCHEMA_STATES:
        return "schema"
    if sqlstate in _PG_AWAY_STATES:
        return "unavailable"
    if exc.connection_invalidated:  # the connection was lost or closed under the statement
        return "unavailable"
    message = str(exc.orig).lower()
    if type(exc.orig).__module__.startswith("sqlite3"):  # SQLite says OperationalError for a syntax error too
        if any(m in message for m in _SQLITE_SCHEMA_MESSAGES):
            return "schema"
        return "unavailable" if any(m in message for m in _SQLITE_AWAY_MESSAGES) else None
    if isinstance(exc, (OperationalError, InterfaceError)):
        return "unavailable"
    return None
