"""What a database error means to someone who can act on it: the database is away (try again), or
its schema is older than this code (run ``autopack migrate``)."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

Problem = Literal["unavailable", "schema"]

# PostgreSQL's SQLSTATEs for a table or a column that does not exist.
_PG_SCHEMA_STATES = frozenset({"42P01", "42703"})
# SQLite's messages for the same (it has no SQLSTATE).
_SQLITE_SCHEMA_MESSAGES = ("no such table", "no such column", "has no column named")
# What SQLite says when the file cannot be used for now (the machine's state, not the statement):
# not openable, locked by another process, a full disk, read-only.
_SQLITE_AWAY_MESSAGES = ("unable to open database", "database is locked", "database table is locked", "disk i/o error",
                         "database or disk is full", "readonly database")


def database_problem(exc: BaseException) -> Problem | None:
    """``"schema"`` for a missing table or column, ``"unavailable"`` for a connection that failed,
    closed or timed out (or SQLite's database being locked, unopenable, full or read-only);
    ``None`` for anything else (a bug, not the database's state)."""
    if not isinstance(exc, DBAPIError):
        return None
    if getattr(exc.orig, "sqlstate", None) in _PG_SCHEMA_STATES:
        return "schema"
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
